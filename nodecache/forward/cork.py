"""TCP_CORK's idea for the upstream connections, in the event loop.

While a batch of client queries is read (``with CORK:``: server.udpbatch's
polls under ``-udp-coalesce``), the queries written to each upstream TCP
connection (``forward.transport``) are held, and sent with one write per
connection when the batch ends: one segment, one wakeup of the upstream
and one system call instead of one of each per query. Outside a batch a
write goes out at once, as it always did. The connection keeps what it
holds (``held``) and registers itself here with its first held frame;
``__exit__`` asks each to send, whatever the batch raised.
"""
from __future__ import annotations


class Cork:
    """One per process (``CORK``); batches may nest, the outermost sends."""

    def __init__(self):
        self.held: list | None = None  # connections holding frames; None: not corked
        self.depth = 0

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


CORK = Cork()
