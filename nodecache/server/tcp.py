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
* At most ``max_conns`` connections per listener; more are aborted at once.
* At most ``max_per_client`` connections of one client are served at once
  (a client as admission keys it: a pod's address; on the node's own
  addresses each socket, every host-network socket together holding
  ``LOCAL_SHARES`` clients' worth). Never a reset for that: glibc reads a
  reset as "name does not exist" (EAI_NONAME), a wrong and cached answer.
  The next ``max_per_client`` connections wait, accepted but not read, and
  are served in order as the client's served connections close (a burst of
  lookups that each open a connection, ``options use-vc``, ends with every
  one answered). Beyond that, a connection's queries are answered REFUSED
  at once, without work (clients move on to the next server or retry).
  A waiting or refusing connection is closed after ``idle`` seconds.
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
from ..dns.wire import REFUSED, QueryError, error_reply, parse_query
from .admission import LOCAL_SHARES
from .querypath import QueryPath

log = logging.getLogger("nodecache.tcp")
MAX_QUERY = 16384
WRITE_HIGH, WRITE_LOW = 64 * 1024, 16 * 1024
# Kernel buffers of a client connection: small, so that a client that does
# not read is noticed (pause_writing) after a few hundred replies rather
# than after the megabytes an autotuned send buffer absorbs, and one read
# brings a bounded number of frames. Round trips on a node are sub-ms.
SOCK_BUFFER = 32 * 1024
HOST_NETWORK = ("host network",)  # the share every host-network socket counts against together
SERVED, WAITING, REFUSING = "served", "waiting", "refusing"


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
        self.per_client: dict = {}    # share -> connections served
        self.waiting: dict[object, deque] = {}  # share -> connections accepted, not yet read
        self.queries = 0
        self.rejected_conns = 0       # over max_conns
        self.rejected_per_client = 0  # over twice max_per_client: their queries answered REFUSED
        self.queued_per_client = 0    # over max_per_client: waited for a slot
        self.idle_closed = 0
        self.blocked_aborted = 0      # replies never read for `idle` seconds
        self.oversized = 0

    def events(self) -> dict[str, int]:
        return {"tcp_rejected_max_conns": self.rejected_conns, "tcp_rejected_per_client": self.rejected_per_client,
                "tcp_queued_per_client": self.queued_per_client, "tcp_aborted_blocked": self.blocked_aborted,
                "tcp_closed_idle": self.idle_closed, "tcp_oversized": self.oversized}

    def protocol(self) -> "TcpConnection":
        return TcpConnection(self)

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.close()

    def share_of(self, peer) -> tuple[object, int]:
        """The share a connection from ``peer`` counts against, and its size."""
        client = self.path.admission.client(peer)
        if type(client) is tuple:
            return HOST_NETWORK, self.limits.max_per_client * LOCAL_SHARES
        return client, self.limits.max_per_client

    def admit(self, conn: "TcpConnection") -> str:
        """SERVED, WAITING or REFUSING for a new connection of ``conn.share``."""
        share, size = conn.share, conn.share_size
        if self.per_client.get(share, 0) < size:
            self.per_client[share] = self.per_client.get(share, 0) + 1
            return SERVED
        if len(self.waiting.get(share, ())) < size:
            self.waiting.setdefault(share, deque()).append(conn)
            self.queued_per_client += 1
            return WAITING
        self.rejected_per_client += 1
        return REFUSING

    def leave(self, conn: "TcpConnection") -> None:
        """``conn`` ended: give its slot to the share's oldest waiting connection."""
        share, queue = conn.share, self.waiting.get(conn.share)
        if conn.mode == WAITING:
            queue.remove(conn)
        elif conn.mode != SERVED:
            return
        elif queue:  # the slot passes to the share's oldest waiting connection
            queue.popleft().serve()
        elif self.per_client[share] > 1:
            self.per_client[share] -= 1
        else:
            del self.per_client[share]
        if queue is not None and not queue:
            del self.waiting[share]


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
        self.share, self.share_size = None, 0
        self.mode = ""  # SERVED, WAITING, REFUSING; "" before admission or when over max_conns

    def connection_made(self, transport):
        self.transport = transport
        state = self.state
        if len(state.conns) >= state.limits.max_conns:
            state.rejected_conns += 1
            transport.abort()
            return
        self.peer = transport.get_extra_info("peername")
        self.share, self.share_size = state.share_of(self.peer)
        state.conns.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUFFER)
        self.mode = state.admit(self)
        if self.mode == WAITING:
            self._pause()  # its queries wait in the kernel until a slot frees (``serve``)
        self._arm()

    def serve(self) -> None:
        """A slot freed: this waiting connection is served from now on."""
        self.mode = SERVED
        if self.transport is None:
            return
        self._arm()
        self._work()  # what it read before its pause held, then reading again

    def connection_lost(self, exc):
        state = self.state
        if self in state.conns:
            state.conns.discard(self)
            state.leave(self)
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
        elif self.inflight == 0 or self.mode == WAITING:
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
            reply = path.dispatch(msg, "tcp", self, None)
            if reply is not None:  # a hit, or a refusal
                self.transport.write(frame(reply))  # may call pause_writing
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
        if self.mode == REFUSING:
            self._refuse(frames)
            return
        if self.mode == WAITING:  # (the transport may read once before its pause holds)
            self.backlog.extend(frames)
            self._pause()
            return
        if not self.write_blocked:
            self._arm()
        self.backlog.extend(frames)
        self._work()

    def _refuse(self, frames: list[bytes]) -> None:
        """Over twice its client's share: REFUSED to each query, no other
        work (its idle timer is never re-armed, so it closes in time)."""
        for msg in frames:
            try:
                q = parse_query(msg)
                reply = error_reply(msg, REFUSED, q.qend, q.edns)
            except QueryError as exc:
                if exc.rcode is None:
                    continue
                reply = error_reply(msg, exc.rcode, exc.qend, exc.edns)
            self.state.path.error_replies += 1
            self.transport.write(frame(reply))
            if self.write_blocked:
                return

    # the query path's ``via`` for this connection's queries (no ref needed)
    def client_of(self, ref):
        return self.peer

    def sender_of(self, ref):
        return self.send

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
