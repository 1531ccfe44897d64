"""The upstream TCP connections while a listener polls (``-udp-coalesce``).

Writes: TCP_CORK's idea, in the event loop. While a batch of client
queries is read (``with CORK:``: server.udpbatch's polls), the queries
written to each upstream TCP connection (``forward.transport``) are held,
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


class Cork:
    """One per process (``CORK``); batches may nest, the outermost sends."""

    def __init__(self):
        self.held: list | None = None  # connections holding frames; None: not corked
        self.depth = 0
        self.connections: set = set()  # open upstream TCP connections (forward.transport adds them)
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


CORK = Cork()
