"""Bounds that keep one hostile client from growing the agent's memory or
starving other clients. Each test checks that its bound actually triggered."""
import asyncio
import socket
import time

import pytest

from dnslib import QTYPE, DNSRecord

from nodecache.emulated.client import build
from nodecache.dns.framing import frame
from nodecache.server import tcp as tcp_mod
from nodecache.server.tcp import TcpLimits
from nodecache_lab.fakes import eventually
from nodecache_lab.harness import CLUSTER, node

CACHED = "svc-1.default.svc.cluster.local"


async def test_client_that_never_reads_is_paused_bounded_and_aborted():
    async with node(CLUSTER, tcp_limits=TcpLimits(idle=1.0)) as n:
        await n.udp(build(CACHED, QTYPE.A))  # cached
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", n.port))
        sock.setblocking(False)
        chunk = b"".join(frame(build(CACHED, QTYPE.A)) for _ in range(200))
        pending, sent, deadline = b"", 0, time.monotonic() + 0.8
        while time.monotonic() < deadline:  # pipeline as fast as the agent takes them
            try:
                if not pending:
                    pending, sent = chunk, sent + 200
                pending = pending[sock.send(pending):]
            except BlockingIOError:
                await asyncio.sleep(0.002)
            except OSError:
                break
        state = n.agent.listeners[0].tcp_state
        (conn,) = state.conns
        buffered = conn.transport.get_write_buffer_size()
        assert conn.write_blocked and not conn.reading             # the bound triggered
        assert buffered <= tcp_mod.WRITE_HIGH + 1024, buffered      # ... and held
        assert len(conn.backlog) < 4000 and state.queries < sent
        await eventually(lambda: state.blocked_aborted == 1, what="aborted when blocked past idle")
        assert not state.conns
        sock.close()
        # other clients were answered meanwhile and still are
        assert DNSRecord.parse(await n.tcp(build(CACHED, QTYPE.A))).rr


async def test_inflight_cap_is_per_frame_not_per_read():
    async with node(CLUSTER, delay=0.5, tcp_limits=TcpLimits(max_inflight=8)) as n:
        reader, writer = await asyncio.open_connection("127.0.0.1", n.port)
        # one write, 300 frames of distinct misses
        writer.write(b"".join(frame(build(f"svc-{i}.other.svc.cluster.local", QTYPE.A, qid=i))
                              for i in range(300)))
        await asyncio.sleep(0.3)
        assert len(n.up.seen) == 8  # not 300: the cap applies per frame
        writer.close()


async def test_partial_frames_do_not_keep_a_connection_alive():
    async with node(CLUSTER, tcp_limits=TcpLimits(idle=1.0)) as n:
        reader, writer = await asyncio.open_connection("127.0.0.1", n.port)
        query = frame(build(CACHED, QTYPE.A))
        t0 = time.monotonic()
        for byte in query[:-1]:  # a slowloris: one byte every 0.2 s, never a whole frame
            writer.write(bytes([byte]))
            await asyncio.sleep(0.2)
            if writer.transport.is_closing() or reader.at_eof():
                break
        data = await asyncio.wait_for(reader.read(), 3)
        assert data == b"" and time.monotonic() - t0 < 2.5
        assert n.agent.listeners[0].tcp_state.idle_closed == 1


async def _ask(reader, writer, data: bytes, timeout: float = 3.0) -> bytes:
    writer.write(frame(data))
    size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), timeout), "big")
    return await asyncio.wait_for(reader.readexactly(size), timeout)


async def test_per_client_connection_cap_queues_then_refuses_never_resets_and_leaves_room_for_others():
    async with node(CLUSTER, tcp_limits=TcpLimits(max_per_client=3)) as n:
        mine = [await asyncio.open_connection("127.0.0.1", n.port) for _ in range(3)]
        waiting = [await asyncio.open_connection("127.0.0.1", n.port) for _ in range(3)]
        refused_r, refused_w = await asyncio.open_connection("127.0.0.1", n.port)
        state = n.agent.listeners[0].tcp_state
        await eventually(lambda: state.queued_per_client == 3 and state.rejected_per_client == 1,
                         what="three waiting, one refusing")
        # the 7th (beyond twice the share): REFUSED at once, not a reset
        assert DNSRecord.parse(await _ask(refused_r, refused_w, build(CACHED, QTYPE.A))).header.rcode == 5
        # a waiting connection's query is read once one of the served ones closes
        w_r, w_w = waiting[0]
        w_w.write(frame(build(CACHED, QTYPE.A)))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(w_r.readexactly(2), 0.3)
        mine[0][1].close()
        size = int.from_bytes(await asyncio.wait_for(w_r.readexactly(2), 3), "big")
        assert DNSRecord.parse(await w_r.readexactly(size)).rr
        # another client address still gets in and is answered
        other_r, other_w = await asyncio.open_connection("127.0.0.1", n.port, local_addr=("127.0.0.2", 0))
        assert DNSRecord.parse(await _ask(other_r, other_w, build(CACHED, QTYPE.A))).rr
        for _, w in mine[1:] + waiting + [(None, other_w), (None, refused_w)]:
            w.close()
        await eventually(lambda: state.per_client == {} and state.waiting == {}, what="every slot given back")


async def test_a_waiting_connection_is_closed_after_idle():
    async with node(CLUSTER, tcp_limits=TcpLimits(idle=0.5, max_per_client=1)) as n:
        served = await asyncio.open_connection("127.0.0.1", n.port)
        served[1].write(frame(build(CACHED, QTYPE.A)[:5]))  # a partial frame: no activity
        reader, _ = await asyncio.open_connection("127.0.0.1", n.port)
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed in time (FIN), never served
        served[1].close()


def _slow_flood(data: bytes) -> float:
    return 1.0 if b"\x05flood" in data else 0.0


async def _udp_from(src: str, port: int, data: bytes, timeout: float = 3.0) -> bytes:
    from nodecache.emulated import client
    return await client.udp("127.0.0.1", port, data, timeout, source=src)


async def test_a_client_flooding_slow_misses_gets_refused_beyond_its_share_others_are_served():
    from nodecache.server.admission import Admission
    async with node(CLUSTER, delay=_slow_flood, admission=Admission(total=100, per_client=10)) as n:
        flood = [asyncio.ensure_future(_udp_from("127.0.0.1", n.port, build(f"flood.{i}.example.com", QTYPE.A)))
                 for i in range(50)]
        await eventually(lambda: n.agent.admission.refused_share == 40, what="the flood arrived")
        t0 = time.monotonic()
        good = DNSRecord.parse(await _udp_from("127.0.0.2", n.port, build("www.example.com", QTYPE.A)))
        assert good.header.rcode == 0 and good.rr and time.monotonic() - t0 < 0.5  # promptly
        rcodes = [DNSRecord.parse(r).header.rcode for r in await asyncio.gather(*flood)]
        assert rcodes.count(5) == 40 and rcodes.count(3) + rcodes.count(0) == 10
        assert n.agent.admission.refused_share == 40
        assert n.agent.admission.running == 0 and n.agent.admission.by_client == {}


async def test_total_capacity_refuses_once_every_slot_is_taken():
    from nodecache.server.admission import Admission
    async with node(CLUSTER, delay=_slow_flood, admission=Admission(total=15, per_client=10)) as n:
        a = [asyncio.ensure_future(_udp_from("127.0.0.1", n.port, build(f"flood.a{i}.example.com", QTYPE.A)))
             for i in range(10)]
        await eventually(lambda: n.agent.admission.running == 10, what="a's ten admitted")
        b = [asyncio.ensure_future(_udp_from("127.0.0.2", n.port, build(f"flood.b{i}.example.com", QTYPE.A)))
             for i in range(8)]
        b_rcodes = [DNSRecord.parse(r).header.rcode for r in await asyncio.gather(*b)]
        await asyncio.gather(*a)
        assert b_rcodes.count(5) == 3 and n.agent.admission.refused_capacity == 3


def test_metric_series_stay_bounded_over_a_qtype_sweep():
    from nodecache.observe.stats import ListenerStats
    stats = ListenerStats("dns://:53", "1")
    for qtype in range(1, 20001):
        stats.record(".", "udp", qtype, 0, 0, 40, 80, 0.0001, "cache")
    labels = {key[2] for key in stats.counts}
    assert "other" in labels and "A" in labels and len(stats.counts) == len(labels) < 40


async def test_accept_loop_survives_running_out_of_descriptors(monkeypatch):
    import errno
    from nodecache import fdlimit
    loop = asyncio.get_running_loop()
    calls = []
    real = loop.sock_accept

    async def flaky(sock):
        calls.append(1)
        if len(calls) <= 3:
            raise OSError(errno.EMFILE, "Too many open files")
        return await real(sock)
    monkeypatch.setattr(loop, "sock_accept", flaky)
    monkeypatch.setattr(fdlimit, "BACKOFF", 0.01)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    guard = fdlimit.AcceptGuard("test")
    c = socket.create_connection(server.getsockname())
    conn, _ = await asyncio.wait_for(guard.accept(server), 2)
    assert guard.failures == 3 and len(calls) == 4   # the bound triggered, the loop went on
    for s in (conn, c, server):
        s.close()


def test_soft_descriptor_limit_is_raised_to_the_hard_limit():
    import resource
    from nodecache.fdlimit import raise_nofile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        old, new = raise_nofile()
        assert old == min(1024, hard) and resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_reload_moves_cache_entries_and_counts_their_bytes_once():
    from nodecache.config.parse import parse_config
    from nodecache.demo import COREFILE
    async with node(CLUSTER) as n:
        for i in range(30):
            await n.udp(build(f"svc-{i}.default.svc.cluster.local", QTYPE.A))
        before = n.agent.budget.used
        entries = sum(len(b.cache) for b in n.agent.blocks if b.cache is not None)
        text = COREFILE.format(port=n.port, upstream=n.up.port)
        await n.agent.reload(parse_config(text, "reloaded"))
        after = sum(len(b.cache) for b in n.agent.blocks if b.cache is not None)
        assert after == entries == 30 and n.agent.budget.used == before > 0


async def _rcodes_of(sock: socket.socket, port: int, queries: list[bytes], wait: float = 3.0) -> list[int]:
    """Send every query from ``sock`` at once; the rcodes of the replies."""
    for q in queries:
        sock.sendto(q, ("127.0.0.1", port))
    got, deadline = [], time.monotonic() + wait
    while len(got) < len(queries) and time.monotonic() < deadline:
        try:
            got.append(sock.recv(65535)[3] & 0xF)
        except BlockingIOError:
            await asyncio.sleep(0.005)
    return got


def _udp_socket(source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((source, 0))
    s.setblocking(False)
    return s


def _misses(tag: str, count: int) -> list[bytes]:
    return [build(f"{tag}-{i}.example.com", QTYPE.A, qid=i) for i in range(count)]


@pytest.mark.parametrize("host_network_aware", [True, False])
async def test_one_busy_host_network_client_leaves_the_others_their_share(host_network_aware):
    """Every host-network pod asks from the node's own address. A busy one
    (one socket, far over its share and rate) must not get the others
    REFUSED: on the node's addresses a client is a socket. The False case
    is the negative control (keyed by address, as before): the quiet
    client is refused there."""
    from nodecache.server.admission import Admission
    admission = Admission(total=4096, per_client=16, rate=50)
    if host_network_aware:
        admission.local = frozenset({"127.0.0.1"})
    async with node(CLUSTER, admission=admission, delay=0.2) as n:
        busy, quiet = _udp_socket(), _udp_socket()
        noisy = asyncio.ensure_future(_rcodes_of(busy, n.port, _misses("busy", 300)))
        await asyncio.sleep(0.05)  # the busy client holds its share now
        quiet_rcodes = await _rcodes_of(quiet, n.port, _misses("quiet", 10))
        busy_rcodes = await noisy
        assert busy_rcodes.count(5) > 250  # the busy client is limited either way
        if host_network_aware:
            assert quiet_rcodes == [0] * 10
        else:
            assert quiet_rcodes.count(5) == 10
        busy.close()
        quiet.close()


async def test_host_network_clients_together_never_crowd_out_the_pods():
    """A host-network process spreading misses over fresh sockets escapes
    the per-client limits; all host-network clients together hold at most
    LOCAL_SHARES shares, REFUSED beyond (host_share), and a pod (here
    127.0.0.2, not one of the node's addresses) is still admitted."""
    from nodecache.server import admission as admission_mod
    admission = admission_mod.Admission(total=4096, per_client=4, rate=0)
    admission.local = frozenset({"127.0.0.1"})
    cap = 4 * admission_mod.LOCAL_SHARES
    async with node(CLUSTER, admission=admission, delay=0.3) as n:
        sprayers = [_udp_socket() for _ in range(cap + 8)]
        spray = [asyncio.ensure_future(_rcodes_of(s, n.port, _misses(f"spray{k}", 1)))
                 for k, s in enumerate(sprayers)]
        await eventually(lambda: admission.local_running == cap, what="the host share full")
        pod = _udp_socket("127.0.0.2")
        assert await _rcodes_of(pod, n.port, _misses("pod", 3)) == [0, 0, 0]
        sprayed = [r for rc in await asyncio.gather(*spray) for r in rc]
        assert sprayed.count(5) == 8 and sprayed.count(0) == cap
        assert admission.refused_host == 8 and admission.local_running == 0
        for s in sprayers + [pod]:
            s.close()
