"""TCP transport (RFC 7766): framing, pipelining, out-of-order replies, bounds.

* Every complete frame is a query. Hits are answered at once; misses run
  as tasks and are written when ready, in whatever order they finish
  (RFC 7766 §6.2.1.1), each with its own ID so the client can match them.
* At most ``max_inflight`` slow queries per connection: beyond that the
  connection stops reading (backpressure) until one completes, rather than
  queueing without bound.
* At most ``max_conns`` connections per listener; more are closed at once.
* A connection with nothing in flight that sends nothing for ``idle``
  seconds is closed (RFC 7766 §6.2.3), which also ends half-open
  connections and slow senders of partial frames.
* A frame larger than ``MAX_QUERY`` is not a query: the connection is closed.
* EOF from the client (half-close) still lets in-flight answers go out,
  then closes.
"""
from __future__ import annotations

import asyncio
import logging

from ..dns.framing import FrameReader, FrameTooLarge, frame
from .dispatch import Dispatcher

log = logging.getLogger("nodecache.tcp")
MAX_QUERY = 16384


class TcpLimits:
    def __init__(self, idle: float = 10.0, max_conns: int = 2000, max_inflight: int = 64):
        self.idle, self.max_conns, self.max_inflight = idle, max_conns, max_inflight


class TcpServerState:
    """Per-listener bookkeeping shared by its connections."""

    def __init__(self, dispatcher: Dispatcher, limits: TcpLimits):
        self.dispatcher = dispatcher
        self.limits = limits
        self.conns: set["TcpConnection"] = set()
        self.queries = 0
        self.rejected_conns = 0
        self.idle_closed = 0
        self.oversized = 0

    def protocol(self) -> "TcpConnection":
        return TcpConnection(self)

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.close()


class TcpConnection(asyncio.Protocol):
    def __init__(self, state: TcpServerState):
        self.state = state
        self.reader = FrameReader(MAX_QUERY)
        self.transport: asyncio.Transport | None = None
        self.inflight = 0
        self.paused = False
        self.eof = False
        self.timer: asyncio.TimerHandle | None = None
        self.peer = None

    def connection_made(self, transport):
        self.transport = transport
        if len(self.state.conns) >= self.state.limits.max_conns:
            self.state.rejected_conns += 1
            transport.abort()
            return
        self.peer = transport.get_extra_info("peername")
        self.state.conns.add(self)
        self._arm()

    def connection_lost(self, exc):
        self.state.conns.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.state.limits.idle, self._idle)

    def _idle(self) -> None:
        self.timer = None
        if self.inflight == 0 and self.transport is not None:
            self.state.idle_closed += 1
            self.transport.close()

    def data_received(self, data: bytes):
        try:
            frames = self.reader.feed(data)
        except FrameTooLarge as exc:
            self.state.oversized += 1
            log.debug("closing %s: %s", self.peer, exc)
            self.transport.abort()
            return
        self._arm()
        dispatcher = self.state.dispatcher
        for msg in frames:
            self.state.queries += 1
            hit = dispatcher.fast(msg, "tcp")
            if hit is not None:
                self.transport.write(frame(hit))
                continue
            self.inflight += 1
            dispatcher.spawn(self._slow(msg, dispatcher.scanned))
        if self.inflight >= self.state.limits.max_inflight and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    async def _slow(self, msg: bytes, scanned) -> None:
        try:
            reply = await self.state.dispatcher.answer(msg, "tcp", self.peer, scanned)
            if reply is not None and self.transport is not None and not self.transport.is_closing():
                self.transport.write(frame(reply))
        finally:
            self.inflight -= 1
            self._after_reply()

    def _after_reply(self) -> None:
        if self.transport is None:
            return
        if self.paused and self.inflight < self.state.limits.max_inflight and not self.eof:
            self.paused = False
            self.transport.resume_reading()
        if self.eof and self.inflight == 0:
            self.transport.close()
        elif self.inflight == 0:
            self._arm()

    def eof_received(self):
        self.eof = True
        return self.inflight > 0  # keep the write side open for pending answers

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
