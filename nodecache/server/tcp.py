"""TCP transport (RFC 7766): framing, pipelining, out-of-order replies, bounds.

* Every complete frame is a query. Hits are answered at once; misses run
  as tasks and are written when ready, in whatever order they finish
  (RFC 7766 §6.2.1.1), each with its own ID so the client can match them.
* Memory per connection is bounded whatever the client does:
  - writes: above ``WRITE_HIGH`` bytes unsent (a client that does not read
    its replies) the transport calls ``pause_writing``; from then on no
    further frame is answered and reading stops, until the buffer drains
    below ``WRITE_LOW``. A connection still blocked ``idle`` seconds later
    is aborted (RST), so its buffer is freed;
  - queries: at most ``max_inflight`` slow queries at once; the cap is
    checked per frame, so one read carrying thousands of frames starts at
    most that many. Frames read but not yet started wait in a backlog that
    is bounded because reading stops as soon as one is waiting.
* At most ``max_conns`` connections per listener and ``max_per_client``
  from one client address; more are aborted at once.
* A connection with nothing in flight that completes no query for
  ``idle`` seconds is closed (RFC 7766 §6.2.3). Only a complete frame
  re-arms the timer, so a client trickling partial frames (slowloris) is
  closed too.
* A frame larger than ``MAX_QUERY`` is not a query: the connection is closed.
* EOF from the client (half-close) still lets in-flight answers go out,
  then closes.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque

from ..dns.framing import FrameReader, FrameTooLarge, frame
from .querypath import QueryPath

log = logging.getLogger("nodecache.tcp")
MAX_QUERY = 16384
WRITE_HIGH, WRITE_LOW = 64 * 1024, 16 * 1024
# Kernel buffers of a client connection: small, so that a client that does
# not read is noticed (pause_writing) after a few hundred replies rather
# than after the megabytes an autotuned send buffer absorbs, and one read
# brings a bounded number of frames. Round trips on a node are sub-ms.
SOCK_BUFFER = 32 * 1024


class TcpLimits:
    def __init__(self, idle: float = 10.0, max_conns: int = 2000, max_inflight: int = 64,
                 max_per_client: int = 64):
        self.idle, self.max_conns, self.max_inflight = idle, max_conns, max_inflight
        self.max_per_client = max_per_client


class TcpServerState:
    """Per-listener bookkeeping shared by its connections."""

    def __init__(self, path: QueryPath, limits: TcpLimits):
        self.path = path
        self.limits = limits
        self.conns: set["TcpConnection"] = set()
        self.per_client: dict[str, int] = {}
        self.queries = 0
        self.rejected_conns = 0       # over max_conns
        self.rejected_per_client = 0  # over max_per_client
        self.idle_closed = 0
        self.blocked_aborted = 0      # replies never read for `idle` seconds
        self.oversized = 0

    def events(self) -> dict[str, int]:
        return {"tcp_rejected_max_conns": self.rejected_conns, "tcp_rejected_per_client": self.rejected_per_client,
                "tcp_aborted_blocked": self.blocked_aborted, "tcp_closed_idle": self.idle_closed,
                "tcp_oversized": self.oversized}

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
        self.backlog: deque[bytes] = deque()  # frames read, not yet started
        self.reading = True
        self.write_blocked = False
        self.eof = False
        self.timer: asyncio.TimerHandle | None = None
        self.peer = None
        self.client = ""

    def connection_made(self, transport):
        self.transport = transport
        state, limits = self.state, self.state.limits
        if len(state.conns) >= limits.max_conns:
            state.rejected_conns += 1
            transport.abort()
            return
        self.peer = transport.get_extra_info("peername")
        self.client = self.peer[0] if self.peer else ""
        if state.per_client.get(self.client, 0) >= limits.max_per_client:
            state.rejected_per_client += 1
            self.client = ""
            transport.abort()
            return
        state.per_client[self.client] = state.per_client.get(self.client, 0) + 1
        state.conns.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUFFER)
        self._arm()

    def connection_lost(self, exc):
        state = self.state
        if self in state.conns:
            state.conns.discard(self)
            left = state.per_client.get(self.client, 1) - 1
            if left > 0:
                state.per_client[self.client] = left
            else:
                state.per_client.pop(self.client, None)
        if self.timer is not None:
            self.timer.cancel()
        self.backlog.clear()
        self.transport = None

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.state.limits.idle, self._idle)

    def _idle(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        if self.write_blocked:  # the client has not read its replies for `idle` seconds
            self.state.blocked_aborted += 1
            self.transport.abort()
        elif self.inflight == 0:
            self.state.idle_closed += 1
            self.transport.close()

    # -- backpressure -------------------------------------------------------
    def pause_writing(self):
        self.write_blocked = True
        self._pause()
        self._arm()  # abort if it stays blocked this long

    def resume_writing(self):
        self.write_blocked = False
        self._arm()
        self._work()

    def _pause(self) -> None:
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def _work(self) -> None:
        """Start backlog frames while the caps allow; read again when all are started."""
        limit = self.state.limits.max_inflight
        path = self.state.path
        backlog = self.backlog
        while backlog and not self.write_blocked and self.inflight < limit and self.transport is not None:
            msg = backlog.popleft()
            self.state.queries += 1
            hit = path.hit_tcp(msg)
            if hit.__class__ is bytes:
                self.transport.write(frame(hit))  # may call pause_writing
                continue
            refused = path.miss(hit, msg, self.peer, self.send, "tcp")
            if refused is not None:
                self.transport.write(frame(refused))
                continue
            self.inflight += 1
        if self.transport is None or self.eof:
            return
        if backlog or self.write_blocked or self.inflight >= limit:
            self._pause()
        elif not self.reading:
            self.reading = True
            self.transport.resume_reading()

    def data_received(self, data: bytes):
        try:
            frames = self.reader.feed(data)
        except FrameTooLarge as exc:
            self.state.oversized += 1
            log.debug("closing %s: %s", self.peer, exc)
            self.transport.abort()
            return
        if not frames:
            return  # a partial frame does not count as activity (slowloris)
        if not self.write_blocked:
            self._arm()
        self.backlog.extend(frames)
        self._work()

    def send(self, reply: bytes | None, addr) -> None:
        """The query path's answer to one of this connection's queries
        (None: none to send); counted in ``inflight`` by ``_work``."""
        try:
            if reply is not None and self.transport is not None and not self.transport.is_closing():
                self.transport.write(frame(reply))
        finally:
            self.inflight -= 1
            self._after_reply()

    def _after_reply(self) -> None:
        if self.transport is None:
            return
        self._work()
        if self.eof and self.inflight == 0 and not self.backlog:
            self.transport.close()
        elif self.inflight == 0 and not self.write_blocked:
            self._arm()

    def eof_received(self):
        self.eof = True
        return self.inflight > 0 or bool(self.backlog)  # keep the write side open for pending answers

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
