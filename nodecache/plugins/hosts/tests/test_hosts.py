"""hosts as CoreDNS's setup and handler tests describe it: the grammar,
then a behaviour table (query in, reply out) over a file and inline
entries, fallthrough, PTR synthesis and reload on change (injected clock)."""
import dns.message
import pytest
from dnslib import QTYPE, DNSRecord

from nodecache.config.corefile import CorefileError
from nodecache.config.parse import parse_config
from nodecache.emulated.client import build
from nodecache_lab.fakes import FakeClock, eventually
from nodecache_lab.harness import node

HOSTS = "127.0.0.1 localhost\n10.0.0.1   example.org  www.Example.org # comment\n::1 localhost\n" \
        "fd00::1 v6only.example.org\nnot-an-ip bad.example.org\n"


@pytest.mark.parametrize("text, want", [
    ("hosts", ("/etc/hosts", (), 3600, True, None)),
    ("hosts /etc/hosts miek.nl.", ("/etc/hosts", ("miek.nl.",), 3600, True, None)),
    ("hosts /etc/hosts {\n        fallthrough\n    }", ("/etc/hosts", (), 3600, True, ())),
    ("hosts /etc/hosts {\n        fallthrough a.example.\n        ttl 60\n        no_reverse\n    }",
     ("/etc/hosts", (), 60, False, ("a.example.",))),
])
def test_setup_accepts(text, want):
    cfg = parse_config(f". {{\n    {text}\n}}\n").blocks[0].option("hosts")
    assert (cfg.file, cfg.zones, cfg.ttl, cfg.reverse, cfg.fallthrough) == want


@pytest.mark.parametrize("text, error", [
    ("hosts /etc/hosts {\n        ttl\n    }", "ttl SECONDS"),
    ("hosts /etc/hosts {\n        ttl 0\n    }", "outside"),
    ("hosts /etc/hosts {\n        no-reverse\n    }", "neither an option"),
    ("hosts /etc/hosts {\n        10.0.0.1\n    }", "has no name"),
    ("hosts /etc/hosts {\n        reload 5 s\n    }", "reload DURATION"),
])
def test_setup_rejects(text, error):
    with pytest.raises(CorefileError, match=error):
        parse_config(f". {{\n    {text}\n}}\n")


def _corefile(path, fall=True, extra=""):
    return ("example.org:{port} in-addr.arpa:{port} ip6.arpa:{port} {{\n    bind 127.0.0.1\n"
            f"    hosts {path} example.org {{{{\n        10.9.9.9 inline.example.org\n{extra}"
            + ("        fallthrough\n" if fall else "") + "    }}\n"
            "    forward . 127.0.0.1:{up0}\n}}\n")


async def _ask(n, name, qtype):
    wire = await n.udp(build(name, qtype))
    dns.message.from_wire(wire)
    return DNSRecord.parse(wire)


async def test_answers_from_file_and_inline(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(HOSTS)
    async with node(_corefile(path)) as n:
        rec = await _ask(n, "WWW.example.org", QTYPE.A)
        assert rec.header.aa and [str(r.rdata) for r in rec.rr] == ["10.0.0.1"] and rec.rr[0].ttl == 3600
        assert str(rec.q.qname) == "WWW.example.org."
        assert [str(r.rdata) for r in (await _ask(n, "inline.example.org", QTYPE.A)).rr] == ["10.9.9.9"]
        nodata = await _ask(n, "example.org", QTYPE.AAAA)  # known, no IPv6 address: NODATA, not fallthrough
        assert nodata.header.rcode == 0 and not nodata.rr
        v6 = await _ask(n, "v6only.example.org", QTYPE.AAAA)
        assert [str(r.rdata) for r in v6.rr] == ["fd00::1"]
        assert len(n.up.seen) == 0
        ptr = await _ask(n, "1.0.0.10.in-addr.arpa", QTYPE.PTR)
        assert sorted(str(r.rdata) for r in ptr.rr) == ["example.org.", "www.example.org."]
        await _ask(n, "bad.example.org", QTYPE.A)        # unknown (its line did not parse): fallthrough
        await _ask(n, "2.0.0.10.in-addr.arpa", QTYPE.PTR)  # an unknown PTR always goes on
        assert len(n.up.seen) == 2


async def test_without_fallthrough_an_unknown_name_is_servfail(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(HOSTS)
    async with node(_corefile(path, fall=False)) as n:
        assert (await _ask(n, "nope.example.org", QTYPE.A)).header.rcode == 2
        assert len(n.up.seen) == 0


async def test_no_reverse_and_a_missing_file_leave_the_inline_entries(tmp_path):
    async with node(_corefile(tmp_path / "absent", extra="        no_reverse\n")) as n:
        assert [str(r.rdata) for r in (await _ask(n, "inline.example.org", QTYPE.A)).rr] == ["10.9.9.9"]
        await _ask(n, "9.9.9.10.in-addr.arpa", QTYPE.PTR)
        assert len(n.up.seen) == 1  # no synthesised PTR: down the chain


async def test_the_file_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(HOSTS)
    clock = FakeClock()
    async with node(_corefile(path, extra="        reload 5s\n"), clock=clock) as n:
        assert [str(r.rdata) for r in (await _ask(n, "example.org", QTYPE.A)).rr] == ["10.0.0.1"]
        path.write_text(HOSTS.replace("10.0.0.1 ", "10.0.0.2 ") + "10.0.0.3 new.example.org\n")
        assert [str(r.rdata) for r in (await _ask(n, "example.org", QTYPE.A)).rr] == ["10.0.0.1"]  # not yet
        clock.advance(5.0)
        await _ask(n, "example.org", QTYPE.A)  # the look: the changed file is read in a worker
        stage = _hosts_stage(n)
        await eventually(lambda: stage.loading is None, what="the new table")
        assert [str(r.rdata) for r in (await _ask(n, "example.org", QTYPE.A)).rr] == ["10.0.0.2"]
        assert [str(r.rdata) for r in (await _ask(n, "new.example.org", QTYPE.A)).rr] == ["10.0.0.3"]


def _hosts_stage(n):
    return next(s for s in n.agent.blocks[0].stages if s.name == "hosts")
