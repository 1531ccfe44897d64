"""forward's TLS, next, failover and failfast options: what they parse to,
and the forwarder rules they switch on (real sockets on loopback; the
real-server tests are tests/scenario/test_tls_upstreams.py)."""
from __future__ import annotations

import asyncio
import time

import pytest

from nodecache.config.parse import parse_config
from nodecache.dns import key as K
from nodecache.dns.wire import encode_name
from nodecache.emulated.client import free_port
from nodecache.emulated.upstream import FakeUpstream
from nodecache.upstream.forwarder import Forwarder, ForwardFailure
from nodecache.upstream.options import ForwardConfig, TlsFiles, Upstream
from nodecache_lab.fakes import reply_to, run


def _forward(body: str):
    return parse_config(". {\n  forward " + body + "\n}").blocks[0].option("forward")


def test_tls_and_https_upstreams_parse_as_coredns_writes_them():
    (f,) = _forward(". tls://127.0.0.1 tls://[fd00::1]:8853 tls://127.0.0.2%dns.example:10853 "
                    "https://127.0.0.3 https://127.0.0.4:8443/resolve dns://127.0.0.5")
    assert f.to == (Upstream("127.0.0.1", 853, "tls"), Upstream("fd00::1", 8853, "tls"),
                    Upstream("127.0.0.2", 10853, "tls", "dns.example"), Upstream("127.0.0.3", 443, "https"),
                    Upstream("127.0.0.4", 8443, "https", path="/resolve"), Upstream("127.0.0.5", 53))
    assert [f.server_name(u) for u in f.to[:3]] == ["127.0.0.1", "fd00::1", "dns.example"]
    assert str(f.to[1]) == "tls://[fd00::1]:8853"


def test_tls_next_failover_failfast_options():
    (f,) = _forward(". tls://127.0.0.1 {\n    tls_servername dns.example\n    next NXDOMAIN servfail\n"
                    "    failover SERVFAIL REFUSED\n    failfast_all_unhealthy_upstreams\n    doh_method get\n  }")
    assert f.tls_servername == "dns.example" and f.server_name(f.to[0]) == "dns.example"
    assert f.next_rcodes == (3, 2) and f.failover_rcodes == (2, 5)
    assert f.failfast_all_unhealthy_upstreams and f.doh_method == "GET"
    assert f.tls == TlsFiles()


@pytest.mark.parametrize("args,files", [("", TlsFiles()), ("/ca.pem", TlsFiles(ca="/ca.pem")),
                                        ("/c.pem /k.pem", TlsFiles("/c.pem", "/k.pem")),
                                        ("/c.pem /k.pem /ca.pem", TlsFiles("/c.pem", "/k.pem", "/ca.pem"))])
def test_tls_arguments_mean_what_coredns_says(args, files):
    (f,) = _forward(". 127.0.0.1 {\n    tls " + args + "\n  }")  # plain upstream: files not loaded
    assert f.tls == files


def test_forward_may_repeat_in_a_block():
    fs = parse_config(". {\n  forward example.org 127.0.0.1\n  forward . 127.0.0.2\n}").blocks[0].option("forward")
    assert [f.from_zone for f in fs] == ["example.org.", "."]


def _dead_upstream_forwarder(failfast: bool) -> Forwarder:
    cfg = ForwardConfig(".", (Upstream("127.0.0.1", free_port()),), force_tcp=True, max_fails=1,
                        health_check=10.0, deadline=1.0, attempt_timeout=0.5,
                        failfast_all_unhealthy_upstreams=failfast)
    return Forwarder(cfg)


@pytest.mark.parametrize("failfast", [True, False])
def test_failfast_answers_at_once_when_every_upstream_is_down(failfast):
    """Once the only upstream is down: SERVFAIL at once with the option;
    without it (the control) every query still tries until its deadline."""
    async def scenario():
        fwd = _dead_upstream_forwarder(failfast)
        try:
            with pytest.raises(ForwardFailure):  # refused connects: marked down
                await fwd.resolve(K.make(encode_name("a.example."), 1))
            assert not fwd.upstreams[0].healthy
            t0 = time.monotonic()
            with pytest.raises(ForwardFailure) as err:
                await fwd.resolve(K.make(encode_name("b.example."), 1))
            return time.monotonic() - t0, str(err.value), fwd.ready_channel()
        finally:
            fwd.close()
    elapsed, why, ready = run(scenario())
    assert ready is None
    if failfast:
        assert elapsed < 0.1 and "failfast" in why
    else:
        assert elapsed > 0.5


def test_failover_counts_each_upstream_once_and_keeps_the_last_reply():
    """Every upstream answers SERVFAIL: with ``failover SERVFAIL`` each is
    asked once, then the last SERVFAIL stands (no loop until the deadline)."""
    async def scenario():
        ups = []
        for _ in range(3):
            up = FakeUpstream(answer=lambda q: reply_to(q, rcode=2))
            await up.start("127.0.0.1", 0)
            ups.append(up)
        cfg = ForwardConfig(".", tuple(Upstream("127.0.0.1", u.port) for u in ups), force_tcp=True,
                            policy="sequential", failover_rcodes=(2,))
        fwd = Forwarder(cfg)
        try:
            t0 = time.monotonic()
            reply = await fwd.resolve(K.make(encode_name("a.example."), 1))
            return reply.rcode, [len(u.seen) for u in ups], time.monotonic() - t0
        finally:
            fwd.close()
            for up in ups:
                await up.stop()
    rcode, seen, elapsed = run(scenario())
    assert rcode == 2 and seen == [1, 1, 1] and elapsed < 1.0


def test_a_bad_tls_file_is_a_corefile_error(tmp_path):
    from nodecache.config.corefile import CorefileError
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(CorefileError, match="forward: tls:"):
        _forward(f". tls://127.0.0.1 {{\n    tls {bad}\n  }}")


def test_https_authority_and_path(tmp_path):
    from nodecache.upstream.doh import DohPool
    fwd = Forwarder(ForwardConfig(".", (Upstream("127.0.0.1", 8443, "https", path="/q"),), tls_servername="d.example"))
    pool = fwd.upstreams[0].pool
    assert isinstance(pool, DohPool) and pool.authority == "d.example:8443" and pool.path == "/q"
    assert fwd.upstreams[0].udp is None and fwd.upstreams[0].tcp
    fwd.close()


def test_check_accepts_a_node_cache_corefile_with_tls_next_failover(tmp_path, capsys):
    """A node-cache template whose `.` block forwards over DoT and DoH with
    the options this plugin takes: `nodecache check` renders and accepts it."""
    from nodecache.cli import main
    ca = tmp_path / "ca.pem"
    from nodecache_bench import tlsup
    if tlsup.missing():
        pytest.skip(tlsup.missing())
    ca.write_bytes(tlsup.make_pki(tmp_path / "pki").ca.read_bytes())
    base = tmp_path / "Corefile.base"
    base.write_text(f"""cluster.local:53 {{
    cache 30
    bind __PILLAR__LOCAL__DNS__
    forward . __PILLAR__CLUSTER__DNS__ {{
        force_tcp
        failfast_all_unhealthy_upstreams
    }}
}}
.:53 {{
    cache 30
    bind __PILLAR__LOCAL__DNS__
    forward corp.example tls://10.1.0.53 {{
        tls {ca}
        tls_servername dns.corp.example
        next NXDOMAIN
    }}
    forward . tls://10.1.0.54%dns.example https://10.1.0.55:8443 {{
        tls {ca}
        failover SERVFAIL REFUSED
    }}
}}
""")
    code = main(["check", "-basecorefile", str(base), "-conf", str(tmp_path / "Corefile"),
                 "-localip", "169.254.20.10", "--clusterdns", "10.96.0.11"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tls://10.1.0.53:853 verified as dns.corp.example" in out and "next NXDOMAIN" in out
    assert "https://10.1.0.55:8443 verified as 10.1.0.55" in out and "failover SERVFAIL REFUSED" in out
    assert "failfast_all_unhealthy_upstreams" in out


def test_health_check_read_timeout_next_on_nodata_options():
    (f,) = _forward(". 127.0.0.1 {\n    health_check 1s no_rec domain Example.ORG\n    read_timeout 500ms\n"
                    "    next_on_nodata\n  }")
    assert (f.health_check, f.health_rd, f.health_domain) == (1.0, False, "example.org.")
    assert f.attempt_timeout == 0.5 and f.next_on_nodata
    (f,) = _forward(". 127.0.0.1")
    assert (f.health_rd, f.health_domain, f.attempt_timeout, f.next_on_nodata) == (True, ".", 2.0, False)


@pytest.mark.parametrize("options,qname,rd", [({}, ".", True),
                                              ({"health_rd": False, "health_domain": "example.org."},
                                               "example.org.", False)])
def test_the_health_probe_asks_what_health_check_says(options, qname, rd):
    """A down upstream is probed with DOMAIN IN NS, RD set unless no_rec (CoreDNS's probe)."""
    from dnslib import DNSRecord
    seen = []

    def answer(query):
        seen.append(DNSRecord.parse(query))
        return reply_to(query)

    async def scenario():
        up = FakeUpstream(answer=answer)
        await up.start("127.0.0.1", 0)
        fwd = Forwarder(ForwardConfig(".", (Upstream("127.0.0.1", up.port),), max_fails=1, health_check=0.02,
                                      **options))
        try:
            fwd.upstreams[0].failed()
            for _ in range(100):
                if fwd.upstreams[0].healthy:
                    break
                await asyncio.sleep(0.02)
            return fwd.upstreams[0].healthy
        finally:
            fwd.close()
            await up.stop()
    assert run(scenario())
    probe = seen[0]
    assert (str(probe.q.qname), probe.q.qtype, bool(probe.header.rd)) == (qname, 2, rd)
