"""UDP transport: bytes in, bytes out, nothing else (on uvloop's datagram
transport; the agent uses ``server.udpbatch`` instead where it runs).

Each datagram goes to the query path's one ``dispatch``
(``server.querypath``), which returns a cache hit's reply inside
``datagram_received`` (no task, no await) and takes the rest, replying
later through ``send``. The query path has already fitted every reply to
the client's UDP size.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

from .querypath import Fixed, QueryPath

log = logging.getLogger("nodecache.udp")


class UdpServer(asyncio.DatagramProtocol):
    def __init__(self, path: QueryPath):
        self.path = path
        self.dispatch = path.dispatch
        self.via = Fixed(self.send)  # the query path's: the client is the address, replies go through ``send``
        self.transport: asyncio.DatagramTransport | None = None
        self.spare: socket.socket | None = None  # sends replies after stop_reading
        self.unsent = 0

    def events(self) -> dict[str, int]:
        return {"udp_reply_unsent": self.unsent}

    def connection_made(self, transport):
        self.transport = transport

    def answer(self, data: bytes, addr) -> None:
        """A datagram read elsewhere (``server.sharing``), answered as ours."""
        self.datagram_received(data, addr)

    def datagram_received(self, data: bytes, addr):
        reply = self.dispatch(data, "udp", self.via, addr)
        if reply is not None:
            self.transport.sendto(reply, addr)

    def stop_reading(self) -> None:
        """Stop taking datagrams (they stay queued in the kernel for whoever
        reads the socket next) but keep a duplicate of the socket to send
        the replies still being worked on. uvloop's UDP transport has no
        pause_reading, so the transport is closed instead."""
        if self.transport is None or self.spare is not None:
            return
        sock = self.transport.get_extra_info("socket")
        self.spare = socket.socket(fileno=os.dup(sock.fileno()))
        self.spare.setblocking(False)
        self.transport.close()

    def fileno(self) -> int | None:
        """The listening socket, while it is read (what a successor takes)."""
        if self.transport is None or self.transport.is_closing():
            return None
        return self.transport.get_extra_info("socket").fileno()

    def sockname(self):
        return self.transport.get_extra_info("sockname")

    def send(self, reply: bytes | None, addr) -> None:
        """A reply from the query path's miss side (None: nothing to send)."""
        if reply is None:
            return
        if self.spare is None:
            if self.transport is not None:
                self.transport.sendto(reply, addr)
            return
        try:
            self.spare.sendto(reply, addr)
        except OSError:  # buffer full or client gone: the client will retry
            self.unsent += 1

    def close(self) -> None:
        if self.spare is not None:
            self.spare.close()
        elif self.transport is not None:
            self.transport.close()

    def error_received(self, exc):
        # ICMP errors for earlier replies (client went away): nothing to do.
        log.debug("udp error: %s", exc)
