"""The load generator's UDP in batches: recvmmsg in, sendmmsg out.

Where the agent's batched transport runs (``nodecache.server.udpbatch``, over ``nodecache.server.mmsg``,
whose buffers this reuses), each of the engine's sockets is read with one
recvmmsg per wakeup, and the queries its replies set off are queued and go
out with one sendmmsg when the engine flushes (after a read, a burst of
open-loop sends, a sweep): not a system call per datagram each way, which
is what lets one core drive nearly as much as dnsperf does.
"""
from __future__ import annotations

import asyncio
import socket
import time

from nodecache.server import mmsg


def batched_udp(engine, flight_cls):
    """(send, flights, close) for ``engine`` (a loadgen.Engine), like its
    uvloop-transport ``_udp``; sets ``engine.flush``."""
    loop = asyncio.get_running_loop()
    recvmmsg, sendmmsg = mmsg.CALLS
    rx, tx = mmsg.Vectors(), mmsg.Vectors()
    batch, slot, at_len = mmsg.BATCH, mmsg.SLOT, mmsg.I_LEN
    per, dontwait = mmsg.I_PER, mmsg.MSG_DONTWAIT
    dirty, monotonic = [], time.monotonic

    class Outbox:
        """A socket's queries waiting for the next flush (its transport)."""

        def __init__(self, sock: socket.socket):
            self.sock, self.fd, self.queued = sock, sock.fileno(), []

        def close(self) -> None:
            loop.remove_reader(self.fd)
            self.sock.close()

    def readable(flight, fd: int) -> None:
        n = recvmmsg(fd, rx.pointer, batch, dontwait, None)
        lengths, data, on_reply, now = rx.i, rx.data, engine.on_reply, monotonic()
        for k in range(n if n > 0 else 0):
            at = k * slot
            on_reply(flight, data[at:at + lengths[k * per + at_len]].tobytes(), now)
        flush()

    def write(box: Outbox, query: bytes) -> None:
        if not box.queued:
            dirty.append(box)
        box.queued.append(query)

    def flush() -> None:
        out, lengths = tx.data, tx.iov
        for box in dirty:
            queued = box.queued
            for first in range(0, len(queued), batch):
                chunk = queued[first:first + batch]
                for k, msg in enumerate(chunk):
                    out[k * slot:k * slot + len(msg)] = msg
                    lengths[2 * k + 1] = len(msg)
                sendmmsg(box.fd, tx.pointer, len(chunk), 0)  # refused ones time out: lost
            queued.clear()
        dirty.clear()

    flights, boxes = [], []
    for _ in range(engine.spec.sockets):
        flight, box = flight_cls(), Outbox(engine.udp_socket())
        loop.add_reader(box.fd, readable, flight, box.fd)
        flights.append(flight)
        boxes.append(box)
    send, flights, close_boxes = engine.sender(flights, boxes, write)

    def close():
        close_boxes()
        rx.release()
        tx.release()
    engine.flush = flush
    return send, flights, close
