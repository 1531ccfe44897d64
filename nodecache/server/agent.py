"""The running server: blocks, listeners, start and graceful stop.

Each server block becomes one ``Block`` (one cache, one forwarder), shared
by all the addresses it binds. Each (address, port) becomes a listener with
a UDP and a TCP socket and a router over the blocks bound there. Sockets
are created here (not by asyncio) so that their options are ours and so
that they can later be handed to another process as they are.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time

from ..config.model import Config
from .block import Block
from .dispatch import Dispatcher
from .router import Router
from .tcp import TcpLimits, TcpServerState
from .udp import UdpServer

log = logging.getLogger("nodecache")
UDP_RCVBUF = 4 << 20  # absorb bursts while the loop is busy


class ListenError(OSError):
    pass


def make_sockets(addr: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A bound UDP socket and a listening TCP socket on addr:port.
    ``::`` means every address of both families (dual-stack)."""
    family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    socks = []
    try:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(family, kind)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if addr == "::" else 1)
            if kind == socket.SOCK_DGRAM:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
                except OSError as exc:
                    log.warning("cannot raise UDP receive buffer on %s: %s", addr, exc)
            sock.bind((addr, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(1024)
            sock.setblocking(False)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise ListenError(exc.errno, f"cannot listen on {addr}:{port}: {exc.strerror}") from exc
    return socks[0], socks[1]


class Listener:
    def __init__(self, addr: str, port: int, blocks: list[Block], limits: TcpLimits):
        self.addr, self.port = addr, port
        self.dispatcher = Dispatcher(Router(blocks))
        self.tcp_state = TcpServerState(self.dispatcher, limits)
        self.udp: UdpServer | None = None
        self.udp_transport = None
        self.tcp_server: asyncio.AbstractServer | None = None

    async def start(self, udp_sock: socket.socket, tcp_sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self.udp_transport, self.udp = await loop.create_datagram_endpoint(
            lambda: UdpServer(self.dispatcher), sock=udp_sock)
        self.tcp_server = await loop.create_server(self.tcp_state.protocol, sock=tcp_sock)
        bound = udp_sock.getsockname()
        self.port = bound[1]  # port 0 in tests: the kernel's choice

    def stop_reading(self) -> None:
        if self.tcp_server is not None:
            self.tcp_server.close()
        if self.udp is not None:
            self.udp.stop_reading()

    def close(self) -> None:
        self.stop_reading()
        self.tcp_state.close_all()
        if self.udp is not None:
            self.udp.close()


class Agent:
    def __init__(self, config: Config, clock=time.monotonic, tcp_limits: TcpLimits | None = None):
        self.config = config
        self.blocks = [Block(b, clock) for b in config.blocks]
        self.listeners: list[Listener] = []
        for addr, port in config.listeners:
            mine = [blk for blk in self.blocks
                    if blk.cfg.port == port and (addr in blk.cfg.binds or not blk.cfg.binds)]
            self.listeners.append(Listener(addr, port, mine, tcp_limits or TcpLimits()))

    async def start(self) -> None:
        for listener in self.listeners:
            try:
                udp, tcp = make_sockets(listener.addr, listener.port)
            except ListenError:
                if listener.addr != "::":
                    raise
                log.warning("IPv6 unavailable; listening on 0.0.0.0:%d only", listener.port)
                listener.addr = "0.0.0.0"
                udp, tcp = make_sockets(listener.addr, listener.port)
            await listener.start(udp, tcp)
            log.info("listening on %s port %d (udp, tcp)", listener.addr, listener.port)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop reading, let in-flight queries finish (bounded), release everything."""
        for listener in self.listeners:
            listener.stop_reading()
        cut = 0
        for listener in self.listeners:
            cut += await listener.dispatcher.drain(grace)
        if cut:
            log.warning("shutdown cut off %d queries still in flight after %.1fs", cut, grace)
        for listener in self.listeners:
            listener.close()
        for block in self.blocks:
            block.close()

    def cache_stats(self) -> dict:
        out = {}
        for block in self.blocks:
            if block.cache is not None:
                c = block.cache
                out[",".join(block.cfg.zones)] = {
                    "hits": sum(c.hits), "misses": c.misses, "entries": len(c),
                    "served_stale": c.served_stale, "prefetches": c.prefetches}
        return out
