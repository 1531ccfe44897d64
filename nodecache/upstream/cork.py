"""The upstream TCP connections while a listener polls (``-udp-coalesce``).

Writes: TCP_CORK's idea, in the event loop. While a batch of client
queries is read (``with cork:``: server.udpbatch's polls), the queries
written to each upstream TCP connection (``upstream.transport``) are held,
and sent with one write per connection when the batch ends: one segment,
one wakeup of the upstream and one system call instead of one of each per
query. Outside a batch a write goes out at once, as it always did. The
connection keeps what it holds (``held``) and registers itself here with
its first held frame; ``__exit__`` asks each to send, whatever the batch
raised.

Reads: a reply from the cluster DNS would still wake the process once per
miss. So while any listener polls (``poll_begin`` .. ``poll_end``) every
open upstream connection has its transport's reading paused, and each poll
reads them (``read_replies``, before the poll's datagrams): the replies to
one poll's misses are answered in the next poll, W later, in the same
wakeup. A read that finds the connection closed or failed gives it back
to its transport, which reports it as it always does (``connection_lost``:
the queries on it are re-sent). When the last listener stops polling,
every connection reads on its own again.
"""
from __future__ import annotations

import os

POLL_READ = 1 << 16  # bytes per read of a paused connection


class Cork:
    """One per agent (``server.agent`` makes it and hands it to its
    listeners and forwarders); batches may nest, the outermost sends.
    ``window``: -udp-coalesce's polling window W in seconds (0: off)."""

    def __init__(self, window: float = 0.0):
        self.window = window
        self.held: list | None = None  # connections holding frames; None: not corked
        self.depth = 0
        self.connections: set = set()  # open upstream TCP connections (upstream.transport adds them)
        self.pollers = 0               # listeners polling now

    def __enter__(self) -> "Cork":
        self.depth += 1
        if self.held is None:
            self.held = []
        return self

    def __exit__(self, *exc) -> None:
        self.depth -= 1
        if self.depth:
            return
        held, self.held = self.held, None
        for conn in held:
            conn.send_held()

    def poll_begin(self) -> None:
        self.pollers += 1
        if self.pollers == 1:
            for conn in list(self.connections):
                conn.pause()

    def poll_end(self) -> None:
        self.pollers -= 1
        if not self.pollers:
            for conn in list(self.connections):
                conn.resume()

    def read_replies(self) -> None:
        for conn in list(self.connections):
            conn.read_paused()


class PolledConnection:
    """A connection's side of this (upstream.transport's TCP connection):
    it sets ``cork`` (its agent's), ``transport`` and ``fd``, calls
    ``joined``/``left`` when it opens and is lost, writes through
    ``write_or_hold`` and provides ``closed``, ``data_received`` and
    ``write_failed``."""

    def __init__(self, *args):
        super().__init__(*args)
        self.cork: Cork | None = None
        self.held: list[bytes] = []  # frames written while corked
        self.paused = False          # reading left to the polls

    def joined(self) -> None:
        self.cork.connections.add(self)
        if self.cork.pollers:
            self.pause()

    def left(self) -> None:
        self.cork.connections.discard(self)
        self.paused = False

    def write_or_hold(self, data: bytes) -> None:
        held = self.cork.held
        if held is None:
            self.transport.write(data)
            return
        if not self.held:
            held.append(self)
        self.held.append(data)

    def send_held(self) -> None:
        """The frames held while corked, in one write. A connection that
        closed meanwhile failed their queries already."""
        data = b"".join(self.held)
        self.held.clear()
        if self.closed or self.transport.is_closing():
            return
        try:
            self.transport.write(data)
        except (RuntimeError, OSError) as exc:
            self.write_failed(exc)

    def pause(self) -> None:
        if self.paused or self.fd < 0 or self.closed or self.transport.is_closing():
            return
        self.transport.pause_reading()
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def read_paused(self) -> None:
        """What the upstream sent since the last poll, delivered. End of
        file or an error: the transport reads again and reports it."""
        while self.paused and not self.closed:
            try:
                data = os.read(self.fd, POLL_READ)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.resume()
                return
            self.data_received(data)
            if len(data) < POLL_READ:
                return
