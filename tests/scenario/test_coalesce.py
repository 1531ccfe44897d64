"""-udp-coalesce (server.udpbatch): a busy socket is read by a timer, all
that queued at once, instead of one wakeup per datagram; a quiet one goes
back to its reader; the misses of one poll reach each upstream connection
in one write (upstream.cork: the agent's Cork). Real sockets and a paced client, so
these measure what the loop really does; each has its control with
coalescing off."""
from __future__ import annotations

import asyncio
import ctypes
import errno
import socket
import threading
import time

import pytest

from nodecache.config.parse import parse_config
from nodecache.upstream import cork, transport
from nodecache.server import mmsg
from nodecache.emulated import client
from nodecache.emulated.client import build
from nodecache_lab.harness import CLUSTER, node

pytestmark = pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg not available here")

WINDOW = 0.005
CACHED = [f"svc-{i}.default.svc.cluster.local" for i in range(30)]


def _paced(port: int, queries: list[bytes], gap: float, burst: int = 0) -> socket.socket:
    """Send ``queries`` from a thread, the first ``burst`` at once and the
    rest ``gap`` s apart (a steady client); returns its socket once every
    query is sent, replies queued on it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    for k, q in enumerate(queries):
        s.sendto(q, ("127.0.0.1", port))
        if k >= burst:
            time.sleep(gap)
    return s


async def _send_paced(port: int, queries: list[bytes], gap: float = 0.0005, limit: float = 5.0,
                      burst: int = 0) -> dict:
    """Replies by ID to ``queries`` sent paced while the loop serves them."""
    box: list[socket.socket] = []
    sender = threading.Thread(target=lambda: box.append(_paced(port, queries, gap, burst)))
    sender.start()
    while sender.is_alive():
        await asyncio.sleep(0.002)
    sock = box[0]
    sock.setblocking(False)
    got: dict[bytes, bytes] = {}
    deadline = time.monotonic() + limit
    try:
        while len(got) < len(queries) and time.monotonic() < deadline:
            try:
                reply = sock.recv(65535)
                got[reply[:2]] = reply
            except BlockingIOError:
                await asyncio.sleep(0.005)
    finally:
        sock.close()
    return got


def _count_reads(server) -> list[int]:
    """Count the server's receive calls (recvfrom_into and recvmmsg)."""
    calls = [0]
    one, many = server.recvfrom_into, server.recvmmsg

    def recvfrom_into(*args):
        calls[0] += 1
        return one(*args)

    def recvmmsg(*args):
        calls[0] += 1
        return many(*args)
    server.recvfrom_into, server.recvmmsg = recvfrom_into, recvmmsg
    return calls


async def _reads_per_datagram(coalesce: float) -> tuple[float, object, int]:
    """(receive calls per datagram, the server, replies) for 400 cached
    queries at ~1,500/s: far below the batching threshold (16,000/s)."""
    async with node(CLUSTER, udp_coalesce=coalesce) as n:
        server = n.agent.listeners[0].udp
        await _send_paced(n.port, [build(name, 1, qid=i) for i, name in enumerate(CACHED)])  # fill
        reads = _count_reads(server)
        before = server.datagrams
        queries = [build(CACHED[i % 30], 1, qid=i) for i in range(400)]
        got = await _send_paced(n.port, queries)
        per = reads[0] / (server.datagrams - before)
        for _ in range(100):  # the load is over: polls find nothing and give the socket back
            if not server.polling:
                break
            await asyncio.sleep(0.01)
        assert not server.polling and server.reading
        return per, server, len(got)


async def test_a_busy_socket_is_read_in_polls_and_a_quiet_one_by_its_reader():
    per, server, answered = await _reads_per_datagram(WINDOW)
    control, plain, answered_plain = await _reads_per_datagram(0.0)
    assert answered == answered_plain == 400
    assert per <= 0.5, f"{per:.2f} receive calls per datagram while coalescing"
    assert server.polls > 0 and server.datagrams / server.polls > 2
    assert control >= 0.9 and plain.polls == 0  # the control: one read per datagram without it
    assert server.empty_polls > 0  # how it went back to its reader once the load was over


async def test_the_first_query_after_a_quiet_spell_is_read_at_once():
    async with node(CLUSTER, udp_coalesce=0.010) as n:
        server = n.agent.listeners[0].udp
        await _send_paced(n.port, [build(CACHED[i % 30], 1, qid=i) for i in range(300)])
        for _ in range(200):  # the polls find nothing and give the socket back to its reader
            if not server.polling:
                break
            await asyncio.sleep(0.01)
        assert not server.polling and server.poll_timer is None
        t0 = time.monotonic()
        assert len(await _send_paced(n.port, [build(CACHED[0], 1, qid=7)], gap=0)) == 1
        assert time.monotonic() - t0 < 0.5  # (not a latency figure: no window to wait out first)


async def test_stop_reading_while_polling_leaves_the_datagrams_queued():
    """A handoff stops the reading: no timer reads the socket after that,
    so what arrives stays queued for the successor."""
    async with node(CLUSTER, udp_coalesce=WINDOW) as n:
        server = n.agent.listeners[0].udp
        box = []
        sender = threading.Thread(target=lambda: box.append(
            _paced(n.port, [build(CACHED[i % 30], 1, qid=i) for i in range(2000)], 0.0005)))
        sender.start()
        for _ in range(300):
            if server.polling:
                break
            await asyncio.sleep(0.005)
        assert server.polling
        server.stop_reading()
        assert not server.polling and server.poll_timer is None and server.fileno() is None
        seen = server.datagrams
        while sender.is_alive():
            await asyncio.sleep(0.01)
        box[0].close()
        await asyncio.sleep(3 * WINDOW)
        assert server.datagrams == seen
        queued = server.sock.recv(65535, socket.MSG_DONTWAIT)  # still there for whoever reads next
        assert queued[2:] and queued[4:6] == b"\x00\x01"


@pytest.mark.parametrize("coalesce", [WINDOW, 0.0])
async def test_the_misses_of_a_poll_reach_the_upstream_in_one_write(monkeypatch, coalesce):
    writes: list[int] = []
    send_held = transport._TcpConnection.send_held

    def counted(conn):
        writes.append(len(conn.held))
        send_held(conn)
    monkeypatch.setattr(transport._TcpConnection, "send_held", counted)
    async with node(CLUSTER, udp_coalesce=coalesce) as n:
        server = n.agent.listeners[0].udp
        await _send_paced(n.port, [build(CACHED[i % 30], 1, qid=i) for i in range(200)])  # polling now
        misses = [build(f"svc-{i}.ns{i % 7}.svc.cluster.local", 1, qid=1000 + i) for i in range(300)]
        got = await _send_paced(n.port, misses)
        assert len(got) == 300  # (the names in ns1..ns6 do not exist: NXDOMAIN is their answer)
        assert all(got[q[:2]][12:len(q)] == q[12:] and got[q[:2]][3] & 0xF in (0, 3) for q in misses)
        seen = {s.name for s in n.upstreams[0].seen if s.proto == "tcp"}
        assert {f"svc-{i}.ns{i % 7}.svc.cluster.local." for i in range(300)} <= seen
        if coalesce:
            assert server.polls > 0 and sum(writes) >= 250 and max(writes) > 1, writes
        else:
            assert writes == []  # the control: one write per query, none held


async def test_a_refused_recvmmsg_while_polling_ends_coalescing_and_answers_on(caplog):
    async with node(CLUSTER, udp_coalesce=WINDOW) as n:
        server = n.agent.listeners[0].udp
        await _send_paced(n.port, [build(CACHED[i % 30], 1, qid=i) for i in range(200)])
        assert server.polls > 0

        def refused(*args):
            ctypes.set_errno(errno.EPERM)
            return -1
        server.recvmmsg = refused
        got = await _send_paced(n.port, [build(CACHED[i % 30], 1, qid=i) for i in range(300)])
        assert len(got) == 300
        assert not server.batch_ok and not server.coalesce and not server.polling
        assert "not coalescing" in caplog.text


class _Sink:
    def __init__(self, fail: bool = False):
        self.writes: list[bytes] = []
        self.fail, self.closing = fail, False

    def write(self, data):
        if self.fail:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")
        self.writes.append(data)

    def is_closing(self):
        return self.closing

    def abort(self):
        self.closing = True


def _conn(loop, sink, held: cork.Cork) -> transport._TcpConnection:
    conn = transport._TcpConnection(loop, held)
    conn.transport = sink
    return conn


async def test_corked_queries_go_in_one_write_per_connection_and_uncorked_at_once():
    loop = asyncio.get_running_loop()
    a, b = _Sink(), _Sink()
    held = cork.Cork()
    ca, cb = _conn(loop, a, held), _conn(loop, b, held)
    with held:
        with held:  # nested: only the outermost sends
            for i in range(3):
                ca.send(build(f"a{i}.example.com", 1), loop.create_future())
        cb.send(build("b.example.com", 1), loop.create_future())
        assert a.writes == [] and b.writes == []
    assert len(a.writes) == 1 and len(b.writes) == 1 and held.held is None
    frames = a.writes[0]
    sizes = []
    while frames:  # three length-prefixed messages, in the order sent
        size = int.from_bytes(frames[:2], "big")
        sizes.append(frames[2 + 12:2 + size])
        frames = frames[2 + size:]
    assert [s[:3] for s in sizes] == [b"\x02a0", b"\x02a1", b"\x02a2"]
    ca.send(build("later.example.com", 1), loop.create_future())
    assert len(a.writes) == 2  # not corked: at once


async def test_a_corked_connection_that_fails_its_write_fails_its_queries():
    loop = asyncio.get_running_loop()
    sink = _Sink()
    held = cork.Cork()
    conn = _conn(loop, sink, held)
    futs = [loop.create_future() for _ in range(2)]
    with held:
        for i, fut in enumerate(futs):
            conn.send(build(f"x{i}.example.com", 1), fut)
        sink.fail = True  # closed under us before the batch ended
    assert conn.closed and not conn.pending
    assert all(isinstance(f.exception(), transport.UpstreamClosed) for f in futs)  # re-sent by the forwarder


async def test_listeners_a_reload_adds_coalesce_too():
    async with node(CLUSTER, udp_coalesce=WINDOW) as n:
        port2 = client.free_port()
        text = CLUSTER.format(port=n.port, up0=n.up.port)
        extra = f"example.com:{port2} {{\n    bind 127.0.0.1\n    forward . 127.0.0.1:{n.up.port}\n}}\n"
        await n.agent.reload(parse_config(text + "\n" + extra))
        added = [lst.udp for lst in n.agent.listeners if lst.port == port2]
        assert added and added[0].coalesce == WINDOW
        assert all(lst.udp.coalesce == WINDOW for lst in n.agent.listeners)


async def _sampled(server, sample, *send_args) -> tuple[dict, list]:
    """_send_paced while ``sample()`` is recorded every 2 ms the server polls."""
    seen: list = []

    async def watch():
        while True:
            if server.polling:
                seen.append(sample())
            await asyncio.sleep(0.002)
    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        got = await _send_paced(*send_args)
    finally:
        watcher.cancel()
    return got, seen


async def test_while_polling_the_upstream_connections_are_read_by_the_polls():
    async with node(CLUSTER, udp_coalesce=WINDOW) as n:
        server = n.agent.listeners[0].udp
        await _send_paced(n.port, [build(CACHED[i % 30], 1, qid=i) for i in range(200)])
        conns = lambda: list(n.agent.cork.connections)  # noqa: E731
        misses = [build(f"svc-{i}.ns{i % 7}.svc.cluster.local", 1, qid=1000 + i) for i in range(300)]
        got, seen = await _sampled(server, lambda: [(c.paused, c.transport.is_reading()) for c in conns()],
                                   n.port, misses)
        assert len(got) == 300
        assert seen and all(s and all(p and not r for p, r in s) for s in seen), seen[:5]  # paused, polls read
        for _ in range(100):
            if not server.polling:
                break
            await asyncio.sleep(0.01)
        assert not server.polling and n.agent.cork.pollers == 0
        assert conns() and all(not c.paused and c.transport.is_reading() for c in conns())  # its own reader again


@pytest.mark.parametrize("handed_back", [True, False])
async def test_an_upstream_that_closes_while_paused_is_reported_at_once(monkeypatch, handed_back):
    """The cluster DNS closes the connection under a poll's misses (nothing
    written to it after): only reading it can tell. The poll's read sees
    the end and gives the connection back to its transport, which reports
    it, and the queries are re-sent. The control: a connection never given
    back leaves them to their 2 s attempt timeout."""
    if not handed_back:
        monkeypatch.setattr(transport._TcpConnection, "resume", lambda self: None)
    async with node(CLUSTER, udp_coalesce=WINDOW, sever=("close", 35, 1)) as n:
        server = n.agent.listeners[0].udp
        await _send_paced(n.port, [build(CACHED[i % 30], 1, qid=i) for i in range(200)])  # 30 fills
        assert server.polling
        misses = [build(f"svc-{i}.ns{i % 7}.svc.cluster.local", 1, qid=1000 + i) for i in range(20)]
        hits = [build(CACHED[i % 30], 1, qid=2000 + i) for i in range(1000)]  # ~0.5 s: polling goes on
        t0 = time.monotonic()
        got = await _send_paced(n.port, misses + hits, burst=len(misses))
        took = time.monotonic() - t0
        assert n.up.severed == 1 and len(got) == 1020, (n.up.severed, len(got))
        assert (took < 1.5) == handed_back, f"answered in {took:.2f} s"
