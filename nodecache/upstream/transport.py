"""Upstream transports: pipelined TCP connections and shared UDP sockets.

Both multiplex many queries over one long-lived channel, told apart by
message ID (RFC 7766 §6.2.1.1 for TCP; RFC 5452 §9.2 for UDP): a channel
hands out IDs unique among its own outstanding queries and drops replies
whose ID it is not waiting for (late, duplicated or forged).

A reply is matched by its ID *and* its question: one that carries a
pending ID but not the question sent under it (an off-path spoofer who
guessed the port and ID, a confused upstream) is counted unmatched and
never frees, completes or fails the query waiting on that ID. IDs come
from the operating system's CSPRNG (``os.urandom``, read in batches; RFC 5452 §9.2: they must
be unpredictable, and our upstream questions are lower-cased, so 0x20
adds nothing).

An ID whose query timed out is *quarantined*: it stays reserved on that
channel until a reply for it arrives or the channel closes, so a late
reply can never be taken for the answer to a newer query that happened to
draw the same ID. Too many quarantined IDs retire the channel.

A channel is used for new queries until it is ``expire`` seconds old, then
retired: it finishes what it has in flight and closes. For TCP this sends
the next connection through kube-proxy again, so load spreads over the
cluster DNS replicas; for UDP it moves to a fresh random source port
(a blind spoofer must guess port and ID; RFC 5452 §9.2). A UDP socket is
also retired after ``UDP_USES`` queries.

When a channel dies (reset, EOF, an ICMP error on a connected UDP
socket), every query still waiting on it fails with ``UpstreamClosed``;
the forwarder re-sends them on a fresh channel. A write to a channel that
is closing raises ``UpstreamClosed`` too, never the transport's own error.

While a listener polls (``-udp-coalesce``), a TCP connection's writes
may be held to the end of the poll and its reads left to the polls
(``upstream.cork``); its transport reads again when a poll finds it ended.

``exchange_on`` sets one timer per query (no ``wait_for`` task) and awaits
one future; connecting is the only other await, once per channel. The
forwarder calls it directly on ``usable()``'s channel, so on the common
path a miss is a few frames deep.
"""
from __future__ import annotations

import asyncio
import os
import random
import socket
from typing import Protocol

from ..dns.framing import FrameReader, FrameTooLarge, frame
from ..dns.wire import question_end
from .cork import Cork, PolledConnection

MAX_PENDING_PER_CONN = 512   # then the pool opens another connection
MAX_CONNS = 8
MAX_QUARANTINED = 1024       # then the channel is retired
UDP_SOCKETS = 4              # per upstream
UDP_USES = 4096              # queries per UDP socket before its port changes


_ID_BATCH = 256  # IDs per read of the CSPRNG: one getrandom(2) per 256 queries, not one per query
_ids: list[int] = []


def _random_id() -> int:
    """A query ID from the operating system's CSPRNG (RFC 5452 §9.2), drawn
    in batches: the same randomness, a system call per _ID_BATCH queries."""
    if not _ids:
        raw = os.urandom(2 * _ID_BATCH)
        _ids.extend(int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2))
    return _ids.pop()


os.register_at_fork(after_in_child=_ids.clear)  # a child never repeats its parent's IDs


class UpstreamClosed(ConnectionError):
    """The channel carrying a query closed before the reply; the query may be re-sent."""


class Waiter(Protocol):
    """What a channel completes for each query it sends: an asyncio future
    is one as it is (the slow path), ``upstream.direct.DirectExchange`` one
    by declaration. The channel calls ``set_result`` or ``set_exception``
    at most once, and only while ``done()`` is false."""

    def done(self) -> bool: ...

    def set_result(self, msg: bytes) -> None: ...

    def set_exception(self, exc: BaseException) -> None: ...


def _time_out(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


class _Channel:
    """ID multiplexing shared by TCP connections and UDP sockets."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport = None
        self.pending: dict[int, Waiter | None] = {}  # None: quarantined ID
        self.questions: dict[int, bytes] = {}  # the question sent under each pending ID
        self.quarantined = 0
        self.created = loop.time()
        self.uses = 0
        self.closed = False
        self.retired = False
        self.unmatched = 0  # replies nobody waited for: late (after a timeout) or an unknown ID

    @property
    def live(self) -> int:
        return len(self.pending) - self.quarantined

    def _new_id(self) -> int:
        while True:
            qid = _random_id()
            if qid not in self.pending:
                return qid

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def send(self, query: bytes, fut: Waiter, question: bytes | None = None) -> int:
        """Send ``query`` under a fresh ID; the waiter ``fut`` gets the reply.
        Returns the ID. ``question``: the query's question bytes, when the
        caller has them (else they are read from ``query``)."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise UpstreamClosed("connection is closing")
        qid = self._new_id()
        self.pending[qid] = fut
        # ours: lower-case, uncompressed
        self.questions[qid] = question if question is not None else query[12:question_end(query)]
        self.uses += 1
        try:
            self._write(qid.to_bytes(2, "big") + query[2:])
        except (RuntimeError, OSError) as exc:  # closed under us between the check and the write
            del self.pending[qid], self.questions[qid]
            self._fail(UpstreamClosed(f"write failed: {exc}"))
            raise UpstreamClosed(f"write failed: {exc}") from None
        return qid

    def release(self, qid: int, fut: Waiter) -> None:
        """The caller is done with ``qid``. Still pending, no reply came for
        it (timed out, cancelled, given up): it stays quarantined. A reply
        that came was taken out of ``pending`` by ``deliver``; that is the
        only test, so any waiter, a future or not, is quarantined alike."""
        if self.pending.get(qid) is fut:
            self.pending[qid] = None
            self.quarantined += 1
            if self.quarantined > MAX_QUARANTINED:
                self.retired = True
        self._maybe_close()

    def deliver(self, msg: bytes) -> None:
        qid = msg[0] << 8 | msg[1] if len(msg) >= 12 else -1
        fut = self.pending.get(qid, False)
        if fut is False or not self._answers(qid, msg):
            self.unmatched += 1  # an unknown ID, or not a reply to what was sent under it
            return
        del self.pending[qid], self.questions[qid]
        if fut is None:  # a late reply to a quarantined ID: now the ID is free again
            self.quarantined -= 1
            self.unmatched += 1
        elif fut.done():
            self.unmatched += 1
        else:
            fut.set_result(msg)

    def fail_one(self, qid: int, exc: Exception) -> None:
        """The query under ``qid`` will get no reply on this channel (a DoH
        stream ended without one): its waiter fails with ``exc`` and the
        ID is free again, quarantined or not (no late reply can come)."""
        if qid not in self.pending:
            return
        waiter = self.pending.pop(qid)
        del self.questions[qid]
        if waiter is None:  # it had timed out
            self.quarantined -= 1
        elif not waiter.done():
            waiter.set_exception(exc)

    def _answers(self, qid: int, msg: bytes) -> bool:
        """``msg`` is a reply (QR) to the one question sent under ``qid``
        (0x20-tolerant: a length octet, < 64, is never changed by lower())."""
        question = self.questions[qid]
        return msg[2] & 0x80 and msg[4:6] == b"\x00\x01" and msg[12:12 + len(question)].lower() == question

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        for fut in list(self.pending.values()):  # (a waiter may give its ID back meanwhile)
            if fut is not None and not fut.done():
                fut.set_exception(exc)
        self.pending.clear()
        self.questions.clear()
        self.quarantined = 0
        if self.transport is not None:
            self.transport.abort() if hasattr(self.transport, "abort") else self.transport.close()

    def _maybe_close(self) -> None:
        if self.retired and not self.live and not self.closed:
            self.closed = True
            self.transport.close()

    def usable(self, now: float, expire: float, max_pending: int) -> bool:
        if self.closed or self.retired:
            return False
        if now - self.created >= expire:
            self.retired = True
            self._maybe_close()
            return False
        return self.live < max_pending


async def exchange_on(channel: _Channel, query: bytes, timeout: float) -> bytes:
    loop = channel.loop
    fut = loop.create_future()
    qid = channel.send(query, fut)
    timer = loop.call_later(timeout, _time_out, fut)
    try:
        reply = await fut
    finally:
        timer.cancel()
        channel.release(qid, fut)
    return query[:2] + reply[2:]  # give the caller its own ID back


class _TcpConnection(PolledConnection, _Channel, asyncio.Protocol):
    def __init__(self, loop, cork: Cork):
        super().__init__(loop)
        self.cork = cork
        self.reader = FrameReader()
        self.fd = -1  # the socket, for the polls' reads (upstream.cork)

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.fd = sock.fileno()
        self.joined()

    def _write(self, data: bytes) -> None:
        self.write_or_hold(frame(data))

    def write_failed(self, exc: Exception) -> None:
        self._fail(UpstreamClosed(f"write failed: {exc}"))

    def data_received(self, data: bytes):
        try:
            messages = self.reader.feed(data)
        except FrameTooLarge:
            self._fail(UpstreamClosed("upstream sent an oversized frame"))
            return
        for msg in messages:
            self.deliver(msg)
        self._maybe_close()

    def connection_lost(self, exc):
        self.left()
        self._fail(UpstreamClosed(f"upstream closed the connection: {exc or 'EOF'}"))


class _Pool:
    """Channels to one upstream; subclasses say how a channel is opened."""
    max_channels = MAX_CONNS
    max_pending = MAX_PENDING_PER_CONN

    def __init__(self, host: str, port: int, expire: float):
        self.host, self.port, self.expire = host, port, expire
        self.channels: list[_Channel] = []
        self.reused = 0    # coredns_proxy_conn_cache_hits_total
        self.opened = 0    # coredns_proxy_conn_cache_misses_total
        self._unmatched_gone = 0  # unmatched replies of channels no longer listed
        self._opening: asyncio.Future | None = None

    async def exchange(self, query: bytes, timeout: float) -> bytes:
        channel = self.usable()
        if channel is None:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            channel = await self.open(timeout)
            timeout = max(timeout - (loop.time() - t0), 0.001)
        return await exchange_on(channel, query, timeout)

    async def open(self, timeout: float) -> _Channel:
        """A new channel (or the one being opened right now)."""
        return await asyncio.wait_for(self._open_shared(asyncio.get_running_loop()), timeout)

    def usable(self) -> _Channel | None:
        """A channel that takes a new query now, without opening one."""
        channel = self._usable()
        if channel is not None:
            self.reused += 1
        return channel

    def _usable(self) -> _Channel | None:
        if not self.channels:
            return None
        now = self.channels[0].loop.time()
        for channel in self._candidates():
            if channel.usable(now, self.expire, self.max_pending):
                return channel
        return None

    def _candidates(self):
        return self.channels

    async def _open_shared(self, loop) -> _Channel:
        if self._opening is None:  # one connect at a time; others share it
            self._opening = loop.create_task(self._open(loop))
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    def _opened(self, task: asyncio.Task) -> None:
        self._opening = None
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have timed out

    async def _open(self, loop) -> _Channel:
        channel = await self._connect(loop)
        self.opened += 1
        self._unmatched_gone += sum(c.unmatched for c in self.channels if c.closed)
        self.channels = [c for c in self.channels if not c.closed] + [channel]
        if len(self.channels) > self.max_channels:
            self.channels[0].retired = True
            self.channels[0]._maybe_close()
        return channel

    async def _connect(self, loop) -> _Channel:
        raise NotImplementedError

    @property
    def unmatched(self) -> int:
        """Replies that came for nobody, on every channel this pool had."""
        return self._unmatched_gone + sum(c.unmatched for c in self.channels)

    def close(self) -> None:
        for channel in self.channels:
            if channel.transport is not None:
                channel.transport.close()
        self._unmatched_gone = self.unmatched
        self.channels.clear()


class TcpPool(_Pool):
    """Persistent pipelined connections to one upstream; ``cork``: the
    agent's (upstream.cork), which its listeners' polls hold."""

    def __init__(self, host: str, port: int, expire: float, cork: Cork):
        super().__init__(host, port, expire)
        self.cork = cork

    async def _connect(self, loop) -> _Channel:
        _, conn = await loop.create_connection(lambda: _TcpConnection(loop, self.cork), self.host, self.port)
        return conn


class _UdpSocket(_Channel, asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def _write(self, data: bytes) -> None:
        self.transport.sendto(data)

    def datagram_received(self, data, addr):
        self.deliver(data)
        if self.uses >= UDP_USES:
            self.retired = True
        self._maybe_close()

    def error_received(self, exc):
        # ICMP port/host unreachable on the connected socket: nobody is there
        # now; every query on it is re-sent (or fails over) at once.
        self._fail(UpstreamClosed(f"upstream unreachable: {exc}"))

    def connection_lost(self, exc):
        self._fail(UpstreamClosed(f"socket closed: {exc or 'closed'}"))


class UdpPool(_Pool):
    """A few long-lived connected UDP sockets to one upstream (the kernel
    drops datagrams from any other address). A query goes out on a random
    one of them; each is replaced after ``expire`` seconds or ``UDP_USES``
    queries, so source ports keep changing."""
    max_channels = UDP_SOCKETS * 2
    max_pending = 4096

    def _candidates(self):
        usable = self.channels[-UDP_SOCKETS:]
        if len(usable) < UDP_SOCKETS:
            return []  # open more until there are UDP_SOCKETS ports to spread over
        start = random.randrange(len(usable))
        return usable[start:] + usable[:start]

    async def _connect(self, loop) -> _Channel:
        _, sock = await loop.create_datagram_endpoint(lambda: _UdpSocket(loop),
                                                      remote_addr=(self.host, self.port))
        return sock
