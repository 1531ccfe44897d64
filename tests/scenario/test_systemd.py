"""systemd-style restarts: sockets held by the "socket unit" (here the test)
are adopted through LISTEN_FDS, so queries sent while no agent runs wait in
the kernel and are answered by the next one; the cache survives the restart
through -cache-file."""
import asyncio
import os
import socket
import subprocess
import sys

from dnslib import QTYPE, DNSRecord

from nodecache.emulated import client
from nodecache.ttlcache import snapshot
from nodecache_lab.fakes import run
from nodecache_bench.procs import NAMES, corefile
from test_handoff import Upstream


def _spawn(conf, tmp, fds, log):
    def place_fds():  # what systemd does: the sockets become fds 3 and 4
        os.dup2(fds[0], 3)
        os.dup2(fds[1], 4)
    cmd = (f"LISTEN_PID=$$ LISTEN_FDS=2 exec {sys.executable} -m nodecache run -conf {conf} "
           f"-handoff=false -cache-file {tmp / 'cache.snap'} -metrics-listen-address '' "
           f"-status-socket {tmp / 'status.sock'}")
    return subprocess.Popen(["sh", "-c", cmd], preexec_fn=place_fds, pass_fds=(*fds, 3, 4),
                            stdout=open(log, "a"), stderr=subprocess.STDOUT)


def test_restart_with_socket_activation_queues_queries_and_keeps_the_cache(tmp_path):
    async def go():
        up = Upstream()
        up_port = await up.server.start()
        port = client.free_port()
        conf = tmp_path / "Corefile"
        conf.write_text(corefile(port, up_port))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", port))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", port))
        tcp.listen(64)
        fds = (udp.fileno(), tcp.fileno())
        log = tmp_path / "agent.log"
        agent = _spawn(conf, tmp_path, fds, log)
        try:
            await _wait(log, "serving", agent)
            assert "adopted 2 sockets from systemd" in log.read_text()
            for name in NAMES[:50]:
                assert DNSRecord.parse(await client.udp("127.0.0.1", port, client.build(name, QTYPE.A))).rr
            asked = len(up.times)
            agent.terminate()
            assert agent.wait(15) == 0
            assert "saved the cache" in log.read_text()
            # no agent now: the query waits in the socket's queue
            pending = asyncio.get_running_loop().create_task(
                client.udp("127.0.0.1", port, client.build(NAMES[0], QTYPE.A), timeout=15))
            await asyncio.sleep(0.3)
            assert not pending.done()
            agent = _spawn(conf, tmp_path, fds, log)
            rec = DNSRecord.parse(await pending)
            assert rec.rr, "the queued query was answered by the new process"
            assert "loaded 50 cache entries" in log.read_text()
            for name in NAMES[:50]:
                assert DNSRecord.parse(await client.udp("127.0.0.1", port, client.build(name, QTYPE.A))).rr
            assert len(up.times) == asked  # every one a hit: the cache came back
        finally:
            if agent.poll() is None:
                agent.kill()
            udp.close()
            tcp.close()
            await up.server.stop()
    run(go(), timeout=60)


def test_unwritable_cache_file_is_logged_not_fatal(tmp_path):
    cache_dir = tmp_path / "ro"
    cache_dir.mkdir()
    try:
        snapshot.save(str(cache_dir / "missing-dir" / "cache.snap"), [], 0.0, 0.0)
        raise AssertionError("expected an OSError")
    except OSError:
        pass
    assert list(cache_dir.iterdir()) == []  # no temporary file left behind


async def _wait(log, needle, proc, limit=20):
    for _ in range(int(limit / 0.05)):
        if needle in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        await asyncio.sleep(0.05)
    raise AssertionError(log.read_text())
