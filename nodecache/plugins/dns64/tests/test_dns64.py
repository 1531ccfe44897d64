"""dns64: RFC 6052 embedding, and the behaviour table over real sockets
(an IPv4 client needs allow_ipv4; AAAA answers stand unless translate_all)."""
import ipaddress

import dns.message
import pytest
from dnslib import AAAA, QTYPE, RR, A, DNSRecord

from nodecache.config.corefile import CorefileError
from nodecache.config.parse import parse_config
from nodecache.plugins.dns64.stage import synthesize
from nodecache.emulated.client import build
from nodecache_lab.fakes import reply_to
from nodecache_lab.harness import node


@pytest.mark.parametrize("prefix, want", [  # RFC 6052 §2.4's table, for 192.0.2.33
    ("2001:db8::/32", "2001:db8:c000:221::"), ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"), ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"), ("2001:db8:122:344::/96", "2001:db8:122:344::c000:221"),
])
def test_rfc6052_embedding(prefix, want):
    assert synthesize(ipaddress.IPv6Network(prefix), "192.0.2.33") == want


def test_setup():
    cfg = parse_config(". {\n    dns64 {\n        prefix 2001:db8::/32\n        translate_all\n    }\n}\n").blocks[0]
    assert str(cfg.option("dns64").prefix) == "2001:db8::/32" and cfg.option("dns64").translate_all
    with pytest.raises(CorefileError, match="prefix length"):
        parse_config(". {\n    dns64 2001:db8::/33\n}\n")
    with pytest.raises(CorefileError, match="unknown option"):
        parse_config(". {\n    dns64 {\n        bogus\n    }\n}\n")


def answer(query: bytes):
    rec = DNSRecord.parse(query)
    name = str(rec.q.qname)
    if rec.q.qtype == QTYPE.A:
        return reply_to(query, RR(name, QTYPE.A, ttl=120, rdata=A("192.0.2.33")))
    if rec.q.qtype == QTYPE.AAAA and name.startswith("dual."):
        return reply_to(query, RR(name, QTYPE.AAAA, ttl=120, rdata=AAAA("2001:db8::1")))
    return reply_to(query)  # NODATA


def _corefile(options=""):
    return (".:{port} {{\n    bind 127.0.0.1\n    dns64 {{\n" + options + "    }}\n    cache 30\n"
            "    forward . 127.0.0.1:{up0}\n}}\n")


async def _aaaa(n, name):
    wire = await n.udp(build(name, QTYPE.AAAA))
    dns.message.from_wire(wire)
    return DNSRecord.parse(wire)


async def test_an_ipv4_client_is_not_translated_without_allow_ipv4():
    async with node(_corefile(), answer=answer) as n:
        assert not (await _aaaa(n, "v4only.example")).rr


async def test_translates_nodata_and_keeps_real_aaaa():
    async with node(_corefile("        allow_ipv4\n"), answer=answer) as n:
        for _ in range(2):  # the second time from the cache: still translated
            rec = await _aaaa(n, "v4only.example")
            assert [str(r.rdata) for r in rec.rr] == ["64:ff9b::c000:221"] and rec.rr[0].ttl <= 120
        assert [str(r.rdata) for r in (await _aaaa(n, "dual.example")).rr] == ["2001:db8::1"]


async def test_translate_all_replaces_real_aaaa():
    async with node(_corefile("        allow_ipv4\n        translate_all\n"), answer=answer) as n:
        assert [str(r.rdata) for r in (await _aaaa(n, "dual.example")).rr] == ["64:ff9b::c000:221"]
