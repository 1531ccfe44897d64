"""UDP transport: bytes in, bytes out, nothing else (on uvloop's datagram
transport; the agent uses ``server.udpbatch`` instead where it runs).

A cache hit is answered inside ``datagram_received`` (no task, no await):
from the memo of finished replies when these exact query bytes were
answered before (``server.memo``), else by the dispatcher's fast path;
anything else becomes a task. The dispatcher has already fitted the reply
to the client's UDP size.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

from .dispatch import Dispatcher

log = logging.getLogger("nodecache.udp")


class UdpServer(asyncio.DatagramProtocol):
    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher
        self.memo = dispatcher.memo.get
        self.clock = dispatcher.clock
        self.transport: asyncio.DatagramTransport | None = None
        self.spare: socket.socket | None = None  # sends replies after stop_reading
        self.unsent = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data: bytes, addr):
        memo = self.memo(data[2:])
        if memo is not None:
            now = self.clock()
            if now < memo.until or memo.refresh(now):
                memo.hits += 1
                self.transport.sendto(data[:2] + memo.tail, addr)
                return
        dispatcher = self.dispatcher
        reply = dispatcher.fast(data, "udp")
        if reply is not None:
            self.transport.sendto(reply, addr)
            return
        refused = dispatcher.start_slow(self._slow, data, addr, addr, dispatcher.scanned, server=self)
        if refused is not None:
            self.transport.sendto(refused, addr)

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

    def _send(self, reply: bytes, addr) -> None:
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

    async def _slow(self, data: bytes, addr, scanned, started: float | None = None) -> None:
        reply = await self.dispatcher.answer(data, "udp", addr, scanned, started)
        if reply is not None:
            self._send(reply, addr)

    def error_received(self, exc):
        # ICMP errors for earlier replies (client went away): nothing to do.
        log.debug("udp error: %s", exc)
