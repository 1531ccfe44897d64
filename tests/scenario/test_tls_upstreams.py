"""DNS over TLS and HTTPS upstreams, against real servers: Debian's unbound
and dnsdist (nodecache_bench.tlsup), certificates made by openssl.

Each guarantee with its control: a wrong name or an expired certificate
must fail verification (the good one answers); a restart of the server
under load loses nothing with the forwarder's re-send on (and does with it
off); ``next`` and ``failover`` change the answer (and without them the
first upstream's rcode stands)."""
import asyncio
import subprocess
import time

import pytest
from dnslib import QTYPE, DNSRecord

from nodecache.emulated.client import build
from nodecache.upstream.options import ForwardConfig, TlsFiles, Upstream
from nodecache.upstream.forwarder import Forwarder, ForwardFailure
from nodecache.dns import key as K
from nodecache.dns.wire import encode_name
from nodecache_bench import tlsup
from nodecache_lab.fakes import run
from nodecache_lab.harness import node

pytestmark = pytest.mark.skipif(bool(tlsup.missing()), reason=tlsup.missing() or "-")
UNBOUND_A, DNSDIST_A = "169.254.1.1", "169.254.2.2"
PROTOS = ("tls", "https")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return tlsup.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def servers(tmp_path_factory, pki):
    with tlsup.tls_servers(tmp_path_factory.mktemp("servers"), pki) as s:
        yield s


def _to(server, proto: str) -> str:
    return f"{proto}://127.0.0.1:{server.ports[proto]}"


def _corefile(to: str, ca, extra: str = "", name: str = tlsup.SERVER_NAME) -> str:
    """A Corefile for harness.node ({port}: the agent's; literal braces doubled)."""
    return (".:{port} {{\n    cache\n    forward . " + to + " {{\n        tls " + str(ca) + "\n"
            f"        tls_servername {name}\n{extra}    }}}}\n}}}}\n")


def _answer(reply: bytes) -> tuple[int, list[str]]:
    rec = DNSRecord.parse(reply)
    return rec.header.rcode, [str(rr.rdata) for rr in rec.rr]


def _established(port: int) -> int:
    """TCP connections the server on ``port`` has open now (its side, ss)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, timeout=10).stdout
    return len([line for line in out.splitlines() if line.strip()])


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("peer,address", [("unbound", UNBOUND_A), ("dnsdist", DNSDIST_A)])
def test_answers_over_tls_pipelined_on_few_connections(servers, pki, peer, address, proto):
    server = servers[peer]

    async def scenario():
        async with node(_corefile(_to(server, proto), pki.ca), upstreams=0) as n:
            first = _answer(await n.udp(build("a.test", QTYPE.A)))
            names = [f"n{i}.pipelined.example" for i in range(300)]
            replies = await asyncio.gather(*(n.udp(build(name, QTYPE.A)) for name in names))
            pool = n.agent.blocks[0].forward_stage.forwarder.upstreams[0].pool
            return first, [_answer(r)[0] for r in replies], pool.opened, _established(server.ports[proto])
    first, rcodes, opened, at_server = run(scenario())
    assert first == (0, [address])
    assert all(rc in (0, 3) for rc in rcodes) and len(rcodes) == 300  # unbound: NXDOMAIN, dnsdist: A
    # 300 queries at once: one connection for DoT (512 in flight each), one per
    # 100 streams for DoH (both servers' SETTINGS_MAX_CONCURRENT_STREAMS)
    assert opened <= (1 if proto == "tls" else 3)
    assert at_server <= opened


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("bad", ["wrong_name", "expired", "unknown_ca"])
def test_a_certificate_that_does_not_verify_is_a_failed_attempt(tmp_path, pki, proto, bad):
    cert = {"wrong_name": pki.wrong_cert, "expired": pki.expired_cert, "unknown_ca": pki.cert}[bad]
    key = {"wrong_name": pki.wrong_cert.with_suffix(".key"), "expired": pki.expired_cert.with_suffix(".key"),
           "unknown_ca": pki.key}[bad]
    ca = pki.ca if bad != "unknown_ca" else None  # the system's roots do not know our CA

    async def scenario(server):
        cfg = ForwardConfig(".", (Upstream("127.0.0.1", server.ports[proto], proto),),
                            tls=TlsFiles(ca=str(ca) if ca else ""), tls_servername=tlsup.SERVER_NAME,
                            deadline=1.0, attempt_timeout=0.5)
        fwd = Forwarder(cfg)
        try:
            with pytest.raises(ForwardFailure, match="verify"):
                await fwd.resolve(K.make(encode_name("a.test."), 1))
            return dict(fwd.upstreams[0].pool.failures)
        finally:
            fwd.close()
    with tlsup.tls_servers(tmp_path, pki, cert=cert, key=key) as s:
        failures = run(scenario(s["unbound"]))
    assert failures.get("verify", 0) >= 1


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("retry", [True, False])
def test_a_server_restarted_under_load_costs_no_answer(tmp_path, pki, proto, retry):
    """unbound restarted while 40 queries/s are in flight: each query on
    the dead connection is re-sent on a fresh one (a new handshake), so
    none fails. Control: -forward-retry=false loses some."""
    async def scenario(server):
        async with node(_corefile(_to(server, proto), pki.ca), upstreams=0) as n:
            n.agent.blocks[0].forward_stage.forwarder.retry = retry
            await n.udp(build("a.test", QTYPE.A))
            loop = asyncio.get_running_loop()
            tasks = []
            for i in range(120):  # 3 s at 40/s, the restart at 1 s
                tasks.append(loop.create_task(n.udp(build(f"r{i}.restart.example", QTYPE.A), timeout=8)))
                if i == 40:
                    await loop.run_in_executor(None, server.restart)
                await asyncio.sleep(0.025)
            return [_answer(r)[0] for r in await asyncio.gather(*tasks)]
    with tlsup.tls_servers(tmp_path, pki) as s:
        rcodes = run(scenario(s["unbound"]))
    servfails = rcodes.count(2)
    if retry:
        assert servfails == 0, rcodes
    else:
        assert servfails > 0  # the control: without the re-send, a restart is an outage


def test_failover_tries_the_next_upstream_for_the_rcodes_named(servers, pki):
    """dnsdist answers fail.test SERVFAIL, unbound answers it: with
    ``failover SERVFAIL`` (sequential: dnsdist first) the answer is unbound's;
    without, dnsdist's SERVFAIL stands (the control)."""
    to = f"{_to(servers['dnsdist'], 'tls')} {_to(servers['unbound'], 'tls')}"

    async def scenario(extra):
        async with node(_corefile(to, pki.ca, "        policy sequential\n" + extra), upstreams=0) as n:
            return _answer(await n.udp(build("fail.test", QTYPE.A))), _answer(await n.udp(build("a.test", QTYPE.A)))
    with_failover, plain = run(scenario("        failover SERVFAIL REFUSED\n")), run(scenario(""))
    assert with_failover == ((0, [UNBOUND_A]), (0, [DNSDIST_A]))
    assert plain == ((2, []), (0, [DNSDIST_A]))


def test_next_asks_the_following_forward_for_the_rcodes_named(servers, pki):
    """Two forwards in one block: dnsdist says NXDOMAIN for nx.test, unbound
    has it. ``next NXDOMAIN`` on the first: unbound's answer; without it
    (the control) the NXDOMAIN stands; a name dnsdist answers never reaches
    the second."""
    ca = pki.ca

    def corefile(extra):
        return (".:{port} {{\n    cache\n"
                f"    forward . {_to(servers['dnsdist'], 'https')} {{{{\n        tls {ca}\n"
                f"        tls_servername {tlsup.SERVER_NAME}\n{extra}    }}}}\n"
                f"    forward . {_to(servers['unbound'], 'tls')} {{{{\n        tls {ca}\n"
                f"        tls_servername {tlsup.SERVER_NAME}\n    }}}}\n}}}}\n")

    async def scenario(extra):
        async with node(corefile(extra), upstreams=0) as n:
            fwd2 = n.agent.blocks[0].forward_stage.forwarders[1]
            answers = (_answer(await n.udp(build("nx.test", QTYPE.A))), _answer(await n.udp(build("a.test", QTYPE.A))))
            return answers, fwd2.upstreams[0].pool.opened
    (nx, a), second_used = run(scenario("        next NXDOMAIN\n"))
    assert nx == (0, [UNBOUND_A]) and a == (0, [DNSDIST_A]) and second_used == 1
    (nx, a), second_used = run(scenario(""))
    assert nx == (3, []) and a == (0, [DNSDIST_A]) and second_used == 0


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("peer", ["unbound", "dnsdist"])
def test_a_recycled_connection_resumes_the_session(servers, pki, proto, peer):
    """``expire`` 200ms, queries over a second: each new connection resumes
    the last session (an abbreviated handshake), after the first full one."""
    async def scenario():
        cfg = ForwardConfig(".", (Upstream("127.0.0.1", servers[peer].ports[proto], proto),),
                            tls=TlsFiles(ca=str(pki.ca)), tls_servername=tlsup.SERVER_NAME, expire=0.2)
        fwd = Forwarder(cfg)
        try:
            for i in range(5):
                await fwd.resolve(K.make(encode_name(f"s{i}.resume.example."), 1))
                await asyncio.sleep(0.3)
            pool = fwd.upstreams[0].pool
            return pool.opened, pool.handshakes, pool.resumed
        finally:
            fwd.close()
    opened, full, resumed = run(scenario())
    assert opened == 5 and full == 1 and resumed == 4


def test_health_checks_go_over_tls(servers, pki):
    """A TLS upstream marked down is probed over TLS (it has no UDP): the
    probe's handshake brings it back, before any client query does."""
    async def scenario():
        cfg = ForwardConfig(".", (Upstream("127.0.0.1", servers["unbound"].ports["tls"], "tls"),),
                            tls=TlsFiles(ca=str(pki.ca)), tls_servername=tlsup.SERVER_NAME,
                            max_fails=1, health_check=0.05)
        fwd = Forwarder(cfg)
        try:
            up = fwd.upstreams[0]
            assert up.udp is None
            up.failed()  # as a timed-out attempt would
            assert not up.healthy
            t0 = time.monotonic()
            while not up.healthy and time.monotonic() - t0 < 3:
                await asyncio.sleep(0.02)
            return up.healthy, up.pool.handshakes + up.pool.resumed
        finally:
            fwd.close()
    healthy, handshakes = run(scenario())
    assert healthy and handshakes == 1


@pytest.mark.parametrize("proto", PROTOS)
def test_coalescing_polls_read_tls_connections(servers, pki, proto):
    """With -udp-coalesce the polls read paused upstream connections'
    sockets themselves (upstream.cork): for TLS what they read is
    ciphertext, which must go through the TLS layer like any other read."""
    async def scenario():
        async with node(_corefile(_to(servers["dnsdist"], proto), pki.ca), upstreams=0, udp_coalesce=0.002) as n:
            names = [f"c{i}.coalesce.example" for i in range(200)]
            replies = await asyncio.gather(*(n.udp(build(name, QTYPE.A)) for name in names))
            return [_answer(r) for r in replies]
    assert run(scenario()) == [(0, [DNSDIST_A])] * 200


def test_client_certificate_is_presented_when_configured(tmp_path, pki):
    """``tls CERT KEY CA``: a server that demands a client certificate (a
    stand-in: neither peer here asks for one) answers with it; without it
    (the control) the handshake fails."""
    import ssl
    from nodecache.dns.framing import FrameReader, frame
    from nodecache_lab.fakes import reply_to, a_record

    async def scenario(files: TlsFiles):
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        server_ctx.load_cert_chain(str(pki.cert), str(pki.key))
        server_ctx.verify_mode = ssl.CERT_REQUIRED

        async def serve(reader, writer):
            frames = FrameReader()
            try:
                while data := await reader.read(4096):
                    for msg in frames.feed(data):
                        writer.write(frame(reply_to(msg, a_record("a.test.", "169.254.3.3"))))
            except (ssl.SSLError, ConnectionError):
                pass
        srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        fwd = Forwarder(ForwardConfig(".", (Upstream("127.0.0.1", port, "tls"),), tls=files,
                                      tls_servername=tlsup.SERVER_NAME, deadline=1.0, attempt_timeout=0.5))
        try:
            reply = await fwd.resolve(K.make(encode_name("a.test."), 1))
            return reply.rcode, fwd.upstreams[0].pool.failures
        except ForwardFailure:
            return None, fwd.upstreams[0].pool.failures
        finally:
            fwd.close()
            srv.close()
    assert run(scenario(TlsFiles(str(pki.client_cert), str(pki.client_key), str(pki.ca)))) == (0, {})
    rcode, _ = run(scenario(TlsFiles(ca=str(pki.ca))))
    # (TLS 1.3: the server rejects us after our side of the handshake; this
    # stand-in closes without an alert, so no reason is counted, only the failure)
    assert rcode is None


@pytest.mark.parametrize("proto", PROTOS)
def test_hot_handoff_with_a_tls_upstream_loses_nothing(tmp_path, proto):
    """Three handoffs between `nodecache run` processes under 1,000 q/s, a
    tenth of them misses in flight over TLS to a real unbound: the heir
    opens its own TLS connections (TLS state does not move), the donor
    answers what it has in flight. (The harness's control, a stop and a
    start instead of a handoff, is test_handoff.py's negative control.)"""
    from nodecache_bench.handoff import handoffs_under_load
    r = run(handoffs_under_load(3, 1000, tmp_path, proto), timeout=120)
    load = r["load"]
    summary = f"sent {load.sent}, answered {load.answered}, unanswered {load.unanswered}, errors {load.errors}"
    assert load.sent >= 1000 * 5 and load.unanswered == 0 and load.errors == 0, summary
    assert len(r["durations"]) == 3


@pytest.mark.parametrize("case", ["garbage", "doh_to_a_dot_port"])
def test_an_upstream_that_speaks_no_tls_or_no_http2_fails_attempts_and_logs_once(servers, pki, case, caplog):
    """tls:// to a server that answers garbage (an HTTP/1 error, not a TLS
    record), https:// to dnsdist's DoT port (no ALPN h2): each attempt
    fails with its reason counted, the log says it once per upstream and
    reason however many attempts failed, nothing crashes."""
    async def garbage(reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario():
        srv = await asyncio.start_server(garbage, "127.0.0.1", 0)
        proto, port = (("tls", srv.sockets[0].getsockname()[1]) if case == "garbage"
                       else ("https", servers["dnsdist"].ports["tls"]))
        cfg = ForwardConfig(".", (Upstream("127.0.0.1", port, proto),), tls=TlsFiles(ca=str(pki.ca)),
                            tls_servername=tlsup.SERVER_NAME, deadline=1.0, attempt_timeout=0.5)
        fwd = Forwarder(cfg)
        try:
            for i in range(3):
                with pytest.raises(ForwardFailure):
                    await fwd.resolve(K.make(encode_name(f"g{i}.test."), 1))
            return dict(fwd.upstreams[0].pool.failures)
        finally:
            fwd.close()
            srv.close()
    failures = run(scenario())
    assert sum(failures.values()) >= 3, failures
    assert ("alpn" if case == "doh_to_a_dot_port" else "wrong_version_number") in failures, failures
    logged = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(logged) == len(failures)  # once per reason, not per attempt


@pytest.mark.parametrize("on", [True, False])
def test_next_on_nodata_asks_the_following_forward(servers, pki, on):
    """unbound answers AAAA a.test with no record (NODATA: it has only an
    A), dnsdist has one: with ``next_on_nodata`` the second forward's
    answer; without it (the control) the NODATA stands."""
    ca = pki.ca
    extra = "        next_on_nodata\n" if on else ""
    corefile = (".:{port} {{\n    cache\n"
                f"    forward . {_to(servers['unbound'], 'tls')} {{{{\n        tls {ca}\n"
                f"        tls_servername {tlsup.SERVER_NAME}\n{extra}    }}}}\n"
                f"    forward . {_to(servers['dnsdist'], 'tls')} {{{{\n        tls {ca}\n"
                f"        tls_servername {tlsup.SERVER_NAME}\n    }}}}\n}}}}\n")

    async def scenario():
        async with node(corefile, upstreams=0) as n:
            return _answer(await n.udp(build("a.test", QTYPE.AAAA))), _answer(await n.udp(build("a.test", QTYPE.A)))
    aaaa, a = run(scenario())
    assert aaaa == ((0, ["fd00::2:2"]) if on else (0, []))
    assert a == (0, [UNBOUND_A])  # an answer with records never goes on
