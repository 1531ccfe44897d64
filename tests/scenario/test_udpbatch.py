"""The batched UDP transport (server.udpbatch): the same replies as uvloop's
transport for the same datagrams, in bursts that really arrive as batches;
senders of both families; a reply the kernel refuses costs only itself."""
from __future__ import annotations

import asyncio
import logging
import ctypes
import errno
import socket
import time

import pytest

from nodecache.server import agent as agent_mod
from nodecache.server import mmsg, udpbatch
from nodecache.emulated import client
from nodecache.emulated.client import build
from nodecache_lab.fakes import FakeClock
from nodecache_lab.harness import CLUSTER, node

pytestmark = pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg not available here")

NAMES = [f"svc-{i}.default.svc.cluster.local" for i in range(30)] + [f"nope-{i}.example.com" for i in range(5)]


def _burst(round_: int) -> list[bytes]:
    out = []
    for i, name in enumerate(NAMES):
        qid = round_ * 1000 + i
        out.append(build(name, 1, qid=qid))
        out.append(build(name.upper(), 28, do=1, qid=qid + 100))
    out.append(bytes([0xF0 + round_, 7]) + b"\x01\x00\x00\x01" + b"\x00" * 6 + b"\x05trunc")  # malformed question
    out.append(b"\xee\x09")  # shorter than a header: dropped, no reply
    return out


async def _exchange(port: int, queries: list[bytes], expect: int, limit: float = 8.0) -> dict[bytes, bytes]:
    """Send every query at once from one socket; the replies by ID."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.setblocking(False)
    try:
        for q in queries:
            s.sendto(q, ("127.0.0.1", port))
        got: dict[bytes, bytes] = {}
        deadline = time.monotonic() + limit
        while len(got) < expect and time.monotonic() < deadline:
            try:
                reply = s.recv(65535)
                got[reply[:2]] = reply
            except BlockingIOError:
                await asyncio.sleep(0.005)
        return got
    finally:
        s.close()


async def _run(mode: str, monkeypatch) -> tuple[list[dict], object]:
    """mode: "batches" or "single" (server.udpbatch), "uvloop" (server.udp)."""
    monkeypatch.setattr(mmsg, "available", lambda: mode != "uvloop")
    async with node(CLUSTER, clock=FakeClock()) as n:
        server = n.agent.listeners[0].udp
        if mode != "uvloop":
            server.use_batches(mode == "batches")
        rounds = []
        for r in range(3):  # misses, then full-path hits, then memoised hits
            queries = _burst(r)
            rounds.append(await _exchange(n.port, queries, len(queries) - 1))
        return rounds, server


async def test_batched_and_single_replies_are_uvloops_replies(monkeypatch):
    batched, server = await _run("batches", monkeypatch)
    single, one = await _run("single", monkeypatch)
    plain, control = await _run("uvloop", monkeypatch)
    assert isinstance(server, udpbatch.BatchUdpServer) and not isinstance(control, udpbatch.BatchUdpServer)
    assert server.batches < server.datagrams  # bursts really arrived several to a call
    assert one.batches == 0 and one.datagrams == server.datagrams
    assert [len(r) for r in batched] == [len(_burst(0)) - 1] * 3  # all answered but the runt
    assert batched == plain
    assert single == plain


async def test_batching_follows_the_rate(monkeypatch):
    monkeypatch.setattr(udpbatch, "PACE", 40)
    async with node(CLUSTER) as n:
        server = n.agent.listeners[0].udp
        assert not server.batching  # starts one at a time
        queries = [build(NAMES[i % 30], 1, qid=i) for i in range(200)]
        assert len(await _exchange(n.port, queries, 200)) == 200  # a burst: far above TO_BATCH
        assert server.batching and server.batches > 0
        for i in range(90):  # ~100/s: far below TO_SINGLE
            await n.udp(build(NAMES[i % 30], 1, qid=i))
            await asyncio.sleep(0.01)
        assert not server.batching and server.switches == 2


@pytest.mark.parametrize("batches", [True, False])
async def test_ipv6_senders_are_answered_on_hits_and_misses(batches):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    async with node(CLUSTER.replace("bind 127.0.0.1", "bind 127.0.0.1 ::1")) as n:
        v6 = [lst for lst in n.agent.listeners if lst.addr == "::1"]
        assert v6 and isinstance(v6[0].udp, udpbatch.BatchUdpServer) and v6[0].udp.namelen == 28
        v6[0].udp.use_batches(batches)
        for qid in (1, 2, 3):  # a miss (the slow path needs the sender's tuple), a hit, a memo
            reply = await client.udp("::1", n.port, build(NAMES[0], 1, qid=qid), 5)
            assert reply[:2] == qid.to_bytes(2, "big") and reply[3] & 0xF == 0


def test_sender_tuples_are_what_recvfrom_gives():
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            rx = socket.socket(family, socket.SOCK_DGRAM)
            rx.bind((host, 0))
        except OSError:
            continue
        tx = socket.socket(family, socket.SOCK_DGRAM)
        tx.bind((host, 0))
        tx.sendto(b"x", rx.getsockname())
        _, want = rx.recvfrom(10)
        port = tx.getsockname()[1]
        if family == socket.AF_INET:
            name = (family.to_bytes(2, "little") + port.to_bytes(2, "big") + socket.inet_pton(family, host)
                    + b"\0" * 8)
        else:
            name = (family.to_bytes(2, "little") + port.to_bytes(2, "big") + b"\0" * 4
                    + socket.inet_pton(family, host) + b"\0" * 4)
        assert mmsg.sender(name) == want
        rx.close()
        tx.close()


def test_a_reply_the_kernel_refuses_costs_only_itself():
    class Path:
        dispatch = None
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server = udpbatch.BatchUdpServer(Path(), s)
    calls = []
    script = iter([2, -1, 0, 3])  # two sent; the next refused; one that sends none; the rest sent

    def sendmmsg(fd, pointer, count, flags):
        calls.append(((pointer.value - server.tx.address) // mmsg.MM, count))
        sent = next(script)
        if sent < 0:  # (set here: ctypes' errno is whatever an earlier test left, EPERM included)
            ctypes.set_errno(errno.EAGAIN)
        return sent
    server.sendmmsg = sendmmsg
    server._flush(7)
    assert calls == [(0, 7), (2, 5), (3, 4), (4, 3)]
    assert server.unsent == 2
    server.close()


@pytest.mark.parametrize("batches", [True, False])
async def test_one_failing_datagram_leaves_the_rest_answered(monkeypatch, batches, caplog):
    async with node(CLUSTER) as n:
        n.agent.listeners[0].udp.use_batches(batches)
        udp = n.agent.listeners[0].udp
        full = udp.dispatch
        poison = build("svc-3.default.svc.cluster.local", 1, qid=666)

        def failing(data, proto, via, ref):
            if data == poison:
                raise RuntimeError("a bug")
            return full(data, proto, via, ref)
        monkeypatch.setattr(udp, "dispatch", failing)
        queries = [build(NAMES[i], 1, qid=i) for i in range(10)]
        with caplog.at_level(logging.ERROR, logger="nodecache.udp"):
            got = await _exchange(n.port, queries[:5] + [poison] * 3 + queries[5:], 10)
        assert sorted(got) == sorted(q[:2] for q in queries)
        failed = [r for r in caplog.records if "udp query failed" in r.getMessage()]
        # the traceback once: the same failure again within the interval is only counted (observe.ratelog)
        assert len(failed) == 1 and isinstance(failed[0].exc_info[1], RuntimeError)


async def test_the_agent_uses_uvloops_transport_when_batching_is_off():
    """-udp-batch=false (or no batching here): uvloop's datagram transport
    answers the same."""
    from nodecache.config.parse import parse_config
    from nodecache.server.agent import Agent
    from nodecache.server.udp import UdpServer
    assert mmsg.available() and agent_mod.udpbatch is udpbatch
    port = client.free_port()
    async with node(CLUSTER) as n:
        text = CLUSTER.format(port=port, up0=n.up.port)
        plain = Agent(parse_config(text, "test"), udp_batch=False)
        await plain.start()
        try:
            assert isinstance(plain.listeners[0].udp, UdpServer)
            assert isinstance(n.agent.listeners[0].udp, udpbatch.BatchUdpServer)
            query = build(NAMES[0], 1, qid=7)
            assert (await client.udp("127.0.0.1", port, query, 5))[:2] == query[:2]
        finally:
            await plain.stop(0.5)


@pytest.mark.parametrize("call", ["recvmmsg", "sendmmsg"])
async def test_a_refused_system_call_means_one_datagram_at_a_time(call, caplog):
    """A seccomp profile or an old kernel that refuses recvmmsg/sendmmsg:
    every query is still answered, one datagram at a time from then on."""
    import ctypes
    import errno

    def refused(*args):
        ctypes.set_errno(errno.EPERM)
        return -1
    async with node(CLUSTER) as n:
        server = n.agent.listeners[0].udp
        server.use_batches(True)
        setattr(server, call, refused)
        queries = [build(NAMES[i % 30], 1, qid=i) for i in range(40)]
        await _exchange(n.port, queries[:10], 10)  # fill the cache: later ones are hits, answered in batches
        got = await _exchange(n.port, queries, 40)
        assert sorted(got) == sorted(q[:2] for q in queries)
        assert not server.batching and not server.batch_ok
        assert f"udp {call} on" in caplog.text and "one datagram at a time" in caplog.text


def _sockets(count: int) -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        out.append(s)
    return out


async def _replies(sock: socket.socket, wait: float = 1.0) -> list[bytes]:
    got, deadline = [], time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(65535))
        except BlockingIOError:
            await asyncio.sleep(0.01)
    return got


async def test_an_exception_in_a_batch_never_misaddresses_the_next_batch():
    """The security review's fault injection: in one batch a miss leaves
    (reply slots shift), a hit is queued, then the memo lookup raises. The
    next batch's replies must each reach their own sender. Control: with
    the destination set only when a slot shifted and no try around the
    memo lookup (the code before), client C's reply went to client D."""
    async with node(CLUSTER) as n:
        server = n.agent.listeners[0].udp
        server.use_batches(True)
        a, b, c, d = _sockets(4)
        hit = build(NAMES[1], 1, qid=11)
        await n.udp(hit)  # cached; ...and memoised
        await n.udp(hit)
        real, poison = server.dispatch, build(NAMES[2], 1, qid=66)

        def dispatch(data, proto, via, ref):  # the query path (memo lookup first) raising for one datagram
            if data == poison:
                raise RuntimeError("injected fault")
            return real(data, proto, via, ref)
        server.dispatch = dispatch
        caught = []
        server.throttle.error = lambda reason, msg, *args, exc_info=None: caught.append(exc_info)
        addr = ("127.0.0.1", n.port)
        a.sendto(build(NAMES[3], 1, qid=31), addr)   # a miss: leaves the batch
        b.sendto(build(NAMES[1], 1, qid=32), addr)   # a hit queued in slot 0, for sender 1
        b.sendto(poison, addr)                       # raises
        got_a, got_b = await asyncio.gather(_replies(a), _replies(b))
        c.sendto(build(NAMES[1], 1, qid=41), addr)   # the next batch: both hits
        d.sendto(build(NAMES[1], 1, qid=42), addr)
        got_c, got_d = await asyncio.gather(_replies(c), _replies(d))
        assert [r[:2] for r in got_a] == [(31).to_bytes(2, "big")]
        assert [r[:2] for r in got_b] == [(32).to_bytes(2, "big")]
        assert [r[:2] for r in got_c] == [(41).to_bytes(2, "big")]
        assert [r[:2] for r in got_d] == [(42).to_bytes(2, "big")]
        assert len(caught) == 1 and "injected" in str(caught[0])
        assert server.batching and server.batches >= 2
        for s in (a, b, c, d):
            s.close()


def _refusing_sendmmsg(server, refuse_at: int):
    """sendmmsg as the kernel behaves when the message at ``refuse_at`` is
    refused by a netfilter rule: the ones before it go, then EPERM."""
    import ctypes
    import errno
    real = server.sendmmsg

    def sendmmsg(fd, pointer, count, flags):
        first = (pointer.value - server.tx.address) // mmsg.MM
        if first == refuse_at:
            ctypes.set_errno(errno.EPERM)
            return -1
        if first < refuse_at < first + count:
            count = refuse_at - first
        return real(fd, pointer, count, flags)
    return sendmmsg


async def test_a_firewalled_reply_costs_only_itself():
    """An OUTPUT rule dropping one client's replies makes sendmmsg fail
    with EPERM at that message, as a seccomp profile would for the call:
    the one reply is counted unsent (sendto is refused too) and batching
    stays on. Control: treating every EPERM as a refused call (the code
    before) turned batching off for good, with a seccomp warning."""
    async with node(CLUSTER) as n:
        server = n.agent.listeners[0].udp
        server.use_batches(True)
        await _exchange(n.port, [build(NAMES[i], 1, qid=i) for i in range(6)], 6)  # cached
        server.sendmmsg = _refusing_sendmmsg(server, 2)
        real_sendto = server.sendto

        def sendto(data, addr):
            if data[:2] == (102).to_bytes(2, "big"):
                raise PermissionError(1, "Operation not permitted")  # what a DROP rule gives
            return real_sendto(data, addr)
        server.sendto = sendto
        unsent = server.unsent
        got = await _exchange(n.port, [build(NAMES[i], 1, qid=100 + i) for i in range(6)], 5)
        assert sorted(got) == [(100 + i).to_bytes(2, "big") for i in range(6) if i != 2]
        assert server.unsent == unsent + 1
        assert server.batching and server.batch_ok


async def test_a_refused_call_is_told_from_a_refused_reply():
    """sendmmsg refused with EPERM while sendto of the same reply goes (a
    seccomp profile): the call is refused, that reply is not sent twice,
    and the rest go one by one."""
    async with node(CLUSTER) as n:
        server = n.agent.listeners[0].udp
        server.use_batches(True)
        await _exchange(n.port, [build(NAMES[i], 1, qid=i) for i in range(6)], 6)
        server.sendmmsg = _refusing_sendmmsg(server, 0)
        s = _sockets(1)[0]
        for i in range(6):
            s.sendto(build(NAMES[i], 1, qid=200 + i), ("127.0.0.1", n.port))
        got = [r[:2] for r in await _replies(s)]
        assert sorted(got) == [(200 + i).to_bytes(2, "big") for i in range(6)]  # each once
        assert not server.batch_ok and not server.batching
        s.close()


async def test_a_failed_batched_read_that_is_not_a_refused_call_keeps_batching():
    """recvmmsg failing with anything but EAGAIN/EINTR/EPERM/ENOSYS (an
    error queued on the socket, ENOMEM) is counted and the next read goes
    on in batches. Control: the code before switched batching off for good."""
    import ctypes
    import errno
    async with node(CLUSTER) as n:
        server = n.agent.listeners[0].udp
        server.use_batches(True)
        real, failed = server.recvmmsg, []

        def recvmmsg(*args):
            if not failed:
                failed.append(1)
                ctypes.set_errno(errno.ENOMEM)
                return -1
            return real(*args)
        server.recvmmsg = recvmmsg
        queries = [build(NAMES[i], 1, qid=i) for i in range(8)]
        assert len(await _exchange(n.port, queries, 8)) == 8
        assert failed and server.receive_errors == 1 and server.batching and server.batch_ok
