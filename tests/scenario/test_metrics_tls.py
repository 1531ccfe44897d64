"""node-cache's metrics flags: HTTPS on -metrics-listen-address (-tls-*),
client certificates, the minimum version, a bad certificate stopping the
start with one line; -prometheus-listen-address serving CoreDNS's metrics."""
import asyncio
import shutil
import ssl
import subprocess
import sys
import urllib.request

import pytest

from nodecache.node.reconcile import NodeParams, NodeSetup
from nodecache.observe.tls import MetricsTls, TlsError, min_version
from nodecache.run.status import Runtime
from nodecache.emulated import client
from nodecache_lab.harness import CLUSTER, node

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make test certificates")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=nodecache test CA", cwd=d)
    for who in ("server", "client"):
        (d / f"{who}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN={who}", cwd=d)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.crt", "-days", "1", "-extfile", f"{who}.ext", cwd=d)
    return d


async def _serve(n, tls: MetricsTls | None, prometheus_listen: str = ""):
    port = client.free_port()
    rt = Runtime(n.agent, NodeSetup(NodeParams((), setup_interface=False, setup_iptables=False), {}))
    rt.metrics_tls = tls.context() if tls else None
    rt.prometheus_listen = prometheus_listen
    rt.configure_http(n.agent.config, f"127.0.0.1:{port}")
    await rt.http.start()
    return rt, port


def _fetch(url: str, ctx=None) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
        return r.status, r.read().decode()


def _client_ctx(pki, cert: bool):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    return ctx


async def test_metrics_over_https_and_not_over_http(pki):
    tls = MetricsTls(str(pki / "server.crt"), str(pki / "server.key"))
    async with node(CLUSTER) as n:
        rt, port = await _serve(n, tls)
        status, body = await asyncio.to_thread(_fetch, f"https://127.0.0.1:{port}/metrics", _client_ctx(pki, False))
        assert status == 200 and "coredns_nodecache_setup_errors_total" in body
        with pytest.raises(Exception):  # plain HTTP to a TLS listener: no answer it could read
            await asyncio.to_thread(_fetch, f"http://127.0.0.1:{port}/metrics")
        rt.close()


async def test_required_client_certificates(pki):
    tls = MetricsTls(str(pki / "server.crt"), str(pki / "server.key"), "RequireAndVerifyClientCert",
                     str(pki / "ca.crt"), "VersionTLS12")
    async with node(CLUSTER) as n:
        rt, port = await _serve(n, tls)
        url = f"https://127.0.0.1:{port}/metrics"
        assert (await asyncio.to_thread(_fetch, url, _client_ctx(pki, True)))[0] == 200
        with pytest.raises(Exception):  # no client certificate: the handshake fails
            await asyncio.to_thread(_fetch, url, _client_ctx(pki, False))
        rt.close()


async def test_prometheus_listen_address_serves_coredns_metrics():
    async with node(CLUSTER) as n:
        extra = client.free_port()
        rt, _ = await _serve(n, None, f"127.0.0.1:{extra}")
        status, body = await asyncio.to_thread(_fetch, f"http://127.0.0.1:{extra}/metrics")
        assert status == 200 and "coredns_dns_requests_total" in body
        rt.close()


def test_bad_tls_settings_are_named(pki, tmp_path):
    with pytest.raises(TlsError, match="-tls-cert-file"):
        MetricsTls(str(tmp_path / "absent.crt"), str(tmp_path / "absent.key")).context()
    with pytest.raises(TlsError, match="needs -tls-client-ca-file"):
        MetricsTls(str(pki / "server.crt"), str(pki / "server.key"), "RequireAnyClientCert").context()
    with pytest.raises(TlsError, match="-tls-min-version"):
        min_version("VersionTLS14")
    assert min_version("1.2") == ssl.TLSVersion.TLSv1_2 and min_version("TLS13") == ssl.TLSVersion.TLSv1_3


def test_a_missing_certificate_stops_the_start_with_one_line(tmp_path):
    conf = tmp_path / "Corefile"
    conf.write_text(".:0 {\n    bind 127.0.0.1\n    forward . 127.0.0.1:9\n}\n")
    out = subprocess.run([sys.executable, "-m", "nodecache", "run", "-conf", str(conf), "-tls-enabled",
                          "-tls-cert-file", str(tmp_path / "none.crt"), "-handoff=false", "-reloadwithsignal"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "-tls-cert-file" in out.stderr


def _silent(port: int, count: int) -> list:
    import socket
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def _closed_by_peer(sock) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True  # reset: closed too


async def test_a_client_that_never_says_hello_is_closed_at_the_deadline(pki, monkeypatch):
    """The deadline counts from accept, the handshake included (the loop's
    TLS server waited 60 s for a ClientHello and set no timer of ours)."""
    from nodecache.observe import http
    monkeypatch.setattr(http, "DEADLINE", 0.5)
    tls = MetricsTls(str(pki / "server.crt"), str(pki / "server.key"))
    async with node(CLUSTER) as n:
        rt, port = await _serve(n, tls)
        socks = await asyncio.to_thread(_silent, port, 5)
        await asyncio.sleep(1.0)
        assert all(await asyncio.to_thread(lambda: [_closed_by_peer(s) for s in socks]))
        for s in socks:
            s.close()
        rt.close()


async def test_negative_control_the_loops_tls_server_keeps_a_silent_client(pki):
    ctx = MetricsTls(str(pki / "server.crt"), str(pki / "server.key")).context()
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    socks = await asyncio.to_thread(_silent, port, 2)
    await asyncio.sleep(1.0)
    assert not any(await asyncio.to_thread(lambda: [_closed_by_peer(s) for s in socks]))
    for s in socks:
        s.close()
    server.close()


async def test_at_most_max_tls_conns_are_held_the_rest_aborted_at_accept(pki):
    from nodecache.observe import http
    tls = MetricsTls(str(pki / "server.crt"), str(pki / "server.key"))
    async with node(CLUSTER) as n:
        rt, port = await _serve(n, tls)
        socks = await asyncio.to_thread(_silent, port, http.MAX_TLS_CONNS + 20)
        await asyncio.sleep(0.3)
        closed = await asyncio.to_thread(lambda: [_closed_by_peer(s) for s in socks])
        assert closed.count(True) == 20 and not any(closed[:http.MAX_TLS_CONNS])
        for s in socks:
            s.close()
        # a real scrape still gets in once the silent ones are gone
        await asyncio.sleep(0.2)
        status, _ = await asyncio.to_thread(_fetch, f"https://127.0.0.1:{port}/metrics", _client_ctx(pki, False))
        assert status == 200
        rt.close()


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_four_thousand_silent_tls_connections_keep_the_agents_memory(pki, tmp_path):
    """The review's reproduction: 4,000 silent connections took the agent
    from 33 to 229 MiB. Now at most MAX_TLS_CONNS are held, each at most
    the deadline: RSS within 10 MiB of idle."""
    import resource
    import socket
    import time
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4200:
        pytest.skip(f"needs 4,200 file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4200), hard))
    conf = tmp_path / "Corefile"
    conf.write_text(f".:{client.free_port()} {{\n    bind 127.0.0.1\n    forward . 127.0.0.1:9\n}}\n")
    port = client.free_port()
    agent = subprocess.Popen([sys.executable, "-m", "nodecache", "run", "-conf", str(conf), "-handoff=false",
                              "-metrics-listen-address", f"127.0.0.1:{port}", "-tls-enabled",
                              "-tls-cert-file", str(pki / "server.crt"), "-tls-private-key-file",
                              str(pki / "server.key"), "-status-socket", str(tmp_path / "status")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socks = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        assert agent.poll() is None, "the agent did not start"
        idle = _rss_kib(agent.pid)
        peak = idle
        for _ in range(4000):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                pass  # the kernel's backlog overflowed: a refused connection costs the agent nothing
            if len(socks) % 500 == 0:
                peak = max(peak, _rss_kib(agent.pid))
        time.sleep(0.5)
        peak = max(peak, _rss_kib(agent.pid))
        print(f"\nidle {idle / 1024:.1f} MiB, with 4,000 silent TLS connections {peak / 1024:.1f} MiB")
        assert peak - idle < 10 * 1024
    finally:
        for s in socks:
            s.close()
        agent.terminate()
        agent.wait(15)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
