"""Upstream transports: a pipelined TCP connection pool and one-shot UDP.

TCP (RFC 7766 §6.2.1.1): many queries are in flight on one connection at
once, told apart by message ID; replies may come in any order. Each
connection hands out IDs that are unique among its own pending queries and
drops replies whose ID it is not waiting for (late, duplicated or forged).
A connection is used for new queries only until it is ``expire`` seconds
old, then retired: it finishes what it has in flight and closes, so the next
connection goes through kube-proxy again and load spreads over the cluster
DNS replicas.

UDP: one connected socket per exchange (a fresh source port for each query,
so a blind spoofer must guess port and ID), reading until a datagram with
the expected ID arrives or the attempt times out; anything else is ignored.
"""
from __future__ import annotations

import asyncio
import random
import socket

from ..dns.framing import FrameReader, FrameTooLarge, frame

MAX_PENDING_PER_CONN = 512   # then the pool opens another connection
MAX_CONNS = 8


class UpstreamClosed(ConnectionError):
    pass


class _TcpConnection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.reader = FrameReader()
        self.created = loop.time()
        self.closed = False
        self.retired = False
        self.garbage = 0  # replies nobody waited for

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes):
        try:
            messages = self.reader.feed(data)
        except FrameTooLarge:
            self._fail(UpstreamClosed("upstream sent an oversized frame"))
            return
        for msg in messages:
            fut = self.pending.pop(msg[0] << 8 | msg[1], None) if len(msg) >= 2 else None
            if fut is None or fut.done():
                self.garbage += 1
                continue
            fut.set_result(msg)
        self._maybe_close()

    def connection_lost(self, exc):
        self._fail(UpstreamClosed(f"upstream closed the connection: {exc or 'EOF'}"))

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self.pending.clear()
        if self.transport is not None:
            self.transport.abort()

    def _maybe_close(self) -> None:
        if self.retired and not self.pending and not self.closed:
            self.closed = True
            self.transport.close()

    def _new_id(self) -> int:
        while True:
            qid = random.getrandbits(16)
            if qid not in self.pending:
                return qid

    async def exchange(self, query: bytes, timeout: float) -> bytes:
        qid = self._new_id()
        fut = self.loop.create_future()
        self.pending[qid] = fut
        self.transport.write(frame(qid.to_bytes(2, "big") + query[2:]))
        try:
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            if self.pending.get(qid) is fut:
                del self.pending[qid]
            self._maybe_close()
        return query[:2] + reply[2:]  # give the caller its own ID back

    def usable(self, now: float, expire: float) -> bool:
        if self.closed or self.retired:
            return False
        if now - self.created >= expire:
            self.retired = True
            self._maybe_close()
            return False
        return len(self.pending) < MAX_PENDING_PER_CONN


class TcpPool:
    """Persistent pipelined connections to one upstream."""

    def __init__(self, host: str, port: int, expire: float):
        self.host, self.port, self.expire = host, port, expire
        self.conns: list[_TcpConnection] = []
        self.reused = 0    # coredns_proxy_conn_cache_hits_total
        self.opened = 0    # coredns_proxy_conn_cache_misses_total
        self._connecting: asyncio.Future | None = None

    async def exchange(self, query: bytes, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = await asyncio.wait_for(self._acquire(loop), timeout)
        return await conn.exchange(query, max(deadline - loop.time(), 0.001))

    async def _acquire(self, loop) -> _TcpConnection:
        now = loop.time()
        self.conns = [c for c in self.conns if not c.closed]
        for conn in self.conns:
            if conn.usable(now, self.expire):
                self.reused += 1
                return conn
        if self._connecting is not None:  # share a connect already under way
            return await asyncio.shield(self._connecting)
        self._connecting = loop.create_task(self._connect(loop))
        try:
            return await asyncio.shield(self._connecting)
        finally:
            self._connecting = None

    async def _connect(self, loop) -> _TcpConnection:
        _, conn = await loop.create_connection(lambda: _TcpConnection(loop), self.host, self.port)
        self.opened += 1
        self.conns.append(conn)
        if len(self.conns) > MAX_CONNS:
            self.conns[0].retired = True
            self.conns[0]._maybe_close()
        return conn

    def close(self) -> None:
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()
        self.conns.clear()


class _UdpOnce(asyncio.DatagramProtocol):
    def __init__(self, qid: bytes, fut: asyncio.Future):
        self.qid, self.fut = qid, fut
        self.ignored = 0

    def datagram_received(self, data, addr):
        if data[:2] == self.qid and not self.fut.done():
            self.fut.set_result(data)
        else:
            self.ignored += 1

    def error_received(self, exc):
        if not self.fut.done():
            self.fut.set_exception(exc)  # e.g. ICMP port unreachable

    def connection_lost(self, exc):
        if not self.fut.done():
            self.fut.set_exception(UpstreamClosed("socket closed"))


async def udp_exchange(host: str, port: int, query: bytes, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    qid = random.getrandbits(16).to_bytes(2, "big")
    fut = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpOnce(qid, fut), remote_addr=(host, port))
    try:
        transport.sendto(qid + query[2:])
        reply = await asyncio.wait_for(fut, timeout)
    finally:
        transport.close()
    return query[:2] + reply[2:]
