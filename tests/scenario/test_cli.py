"""The real `nodecache run` process: serves, shuts down cleanly on SIGTERM,
exits 2 on a broken Corefile."""
import signal
import subprocess
import sys
import time

from dnslib import QTYPE, DNSRecord

from nodecache.emulated import client
from nodecache.emulated.client import build
from nodecache_lab.fakes import run

CLI = [sys.executable, "-m", "nodecache"]


def test_broken_corefile_exit_2(tmp_path):
    bad = tmp_path / "Corefile"
    bad.write_text(".:53 {\n  forward . not-an-ip\n}\n")
    proc = subprocess.run(CLI + ["run", "-conf", str(bad)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert f"{bad}:2: forward: 'not-an-ip' is not an IP[:port] or a file" in proc.stderr


def test_run_serves_until_sigterm(tmp_path):
    up_port, port = client.free_port(), client.free_port()
    fake = subprocess.Popen(CLI + ["fake-upstream", "--listen", f"127.0.0.1:{up_port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    core = tmp_path / "Corefile"
    core.write_text(f".:{port} {{\n  errors\n  cache\n  bind 127.0.0.1\n"
                    f"  forward . 127.0.0.1:{up_port}\n}}\n")
    proc = subprocess.Popen(CLI + ["run", "-conf", str(core), "-handoff-dir", str(tmp_path / "h"),
                                   "-metrics-listen-address", "", "-status-socket", str(tmp_path / "s")],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        reply = None
        while time.monotonic() < deadline and reply is None:
            try:
                reply = run(client.udp("127.0.0.1", port, build("www.example.com", QTYPE.A), 0.5))
            except (TimeoutError, OSError, ConnectionError):
                time.sleep(0.1)
        assert reply is not None and DNSRecord.parse(reply).rr
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        assert "shutting down" in out
    finally:
        for p in (proc, fake):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_sigterm_fails_readiness_at_once_then_lameduck_keeps_serving(tmp_path):
    """What Cilium Local Redirect Policy rollouts need: unready from the
    moment of SIGTERM, still answering DNS through the lameduck period."""
    import urllib.error
    import urllib.request
    from nodecache.run.status import probe
    up_port, port, rport = client.free_port(), client.free_port(), client.free_port()
    fake = subprocess.Popen(CLI + ["fake-upstream", "--listen", f"127.0.0.1:{up_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    core = tmp_path / "Corefile"
    core.write_text(f".:{port} {{\n  bind 127.0.0.1\n  health 127.0.0.1:{client.free_port()} {{\n"
                    f"    lameduck 3s\n  }}\n  ready 127.0.0.1:{rport}\n  cache\n"
                    f"  forward . 127.0.0.1:{up_port}\n}}\n")
    status = str(tmp_path / "s")
    proc = subprocess.Popen(CLI + ["run", "-conf", str(core), "-handoff-dir", str(tmp_path / "h"),
                                   "-metrics-listen-address", "", "-status-socket", status],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready() -> int:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{rport}/ready", timeout=2).status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0
    try:
        deadline = time.monotonic() + 20
        while ready() != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        while ready() != 503:
            assert time.monotonic() - t0 < 0.5, "readiness did not fail at SIGTERM"
            time.sleep(0.02)
        assert probe(status, "ready") == 1
        reply = run(client.udp("127.0.0.1", port, build("svc-1.default.svc.cluster.local", QTYPE.A), 2))
        assert DNSRecord.parse(reply).header.rcode == 0 and time.monotonic() - t0 < 3.0  # lameduck: serving
        assert proc.wait(15) == 0 and time.monotonic() - t0 >= 3.0
    finally:
        for p in (proc, fake):
            if p.poll() is None:
                p.kill()
