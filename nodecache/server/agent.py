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
from ..ttlcache.store import ByteBudget
from ..upstream.cork import Cork
from ..plugins import timeouts
from ..observe.top import Top
from .admission import Admission
from .querypath import QueryPath
from ..observe.stats import ListenerStats
from . import reuseport
from .router import Router
from .tcp import TcpLimits, TcpServerState
from . import mmsg, sharing, udpbatch, udpwild
from .udp import UdpServer

log = logging.getLogger("nodecache")
UDP_RCVBUF = 4 << 20  # absorb bursts while the loop is busy


class ListenError(OSError):
    pass


def make_sockets(addr: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A bound UDP socket and a listening TCP socket on addr:port.
    ``::`` means every address of both families (dual-stack); port 0 picks
    a free UDP port and TCP takes the same one (may fail: caller retries).
    A fixed port is bound with SO_REUSEPORT, as CoreDNS binds it: a cache
    still serving it (node-cache during a migration) is joined, not an
    error (``server.reuseport``)."""
    family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    socks = []
    shared = port != 0
    try:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(family, kind)
            socks.append(sock)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebind past TIME_WAIT
            if shared:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if addr == "::" else 1)
            if kind == socket.SOCK_DGRAM:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
                except OSError as exc:
                    log.warning("cannot raise UDP receive buffer on %s: %s", addr, exc)
            sock.bind((addr, port))
            port = sock.getsockname()[1]  # port 0: TCP takes the port UDP was given
            if kind == socket.SOCK_STREAM:
                sock.listen(1024)
            if shared:
                reuseport.join(sock, addr, port)
            sock.setblocking(False)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise ListenError(exc.errno, f"cannot listen on {addr}:{port}: {exc.strerror}") from exc
    return socks[0], socks[1]


class Listener:
    def __init__(self, addr: str, port: int, blocks: list[Block], limits: TcpLimits,
                 admission: Admission | None = None, clock=time.monotonic, udp_batch: bool = True,
                 cork: Cork | None = None, top: Top | None = None):
        self.addr, self.port = addr, port
        self.udp_batch = udp_batch  # False (-udp-batch=false): uvloop's datagram transport
        self.cork = cork if cork is not None else Cork()  # the agent's; its window: -udp-coalesce
        family = "2" if ":" in addr else "1"
        self.stats = ListenerStats(self.server_label(), family)
        idle = timeouts.idle([b.cfg for b in blocks], limits.idle)
        if idle != limits.idle:  # the Corefile's timeouts for the blocks served here
            limits = TcpLimits(idle, limits.max_conns, limits.max_inflight, limits.max_per_client)
        self.path = QueryPath(Router(blocks), self.stats, admission, clock, top)
        self.tcp_state = TcpServerState(self.path, limits)
        self.udp: UdpServer | udpbatch.BatchUdpServer | udpwild.WildcardUdpServer | None = None  # (or its wild kind)
        self.tcp_server: asyncio.AbstractServer | None = None

    async def start(self, udp_sock: socket.socket, tcp_sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        wild = udpwild.is_wildcard(udp_sock)  # replies must leave from the address asked (server.udpwild)
        if self.udp_batch and mmsg.available():
            server = udpwild.WildcardBatchServer if wild else udpbatch.BatchUdpServer
            self.udp = server(self.path, udp_sock, self.cork)
            self.udp.start(loop)
        else:
            if self.cork.window:
                log.warning("-udp-coalesce: no recvmmsg/sendmmsg here (or -udp-batch=false): "
                            "one wakeup per datagram on %s", self.addr)
            if wild:
                self.udp = udpwild.WildcardUdpServer(self.path, udp_sock)
                self.udp.start(loop)
            else:
                _, self.udp = await loop.create_datagram_endpoint(lambda: UdpServer(self.path),
                                                                  sock=udp_sock)
        self.tcp_server = await loop.create_server(self.tcp_state.protocol, sock=tcp_sock)
        bound = udp_sock.getsockname()
        self.port = bound[1]  # port 0 in tests: the kernel's choice
        self.stats.server = self.server_label()

    def server_label(self) -> str:
        """CoreDNS's ``server`` label: dns://ADDR:PORT (empty ADDR for all addresses)."""
        addr = "" if self.addr in ("::", "0.0.0.0") else (f"[{self.addr}]" if ":" in self.addr else self.addr)
        return f"dns://{addr}:{self.port}"

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
        self.path.memo.detach()


def block_id(block: Block) -> str:
    """Identity of a block across processes and reloads: its zones and port."""
    return f"{' '.join(block.cfg.zones)}|{block.cfg.port}"


def put_entries(blocks: list[Block], by_block: dict[str, list]) -> int:
    """The one way cache entries move between blocks (a reload, a handoff,
    a cache file): into the block serving the same zones on the same port."""
    count = 0
    mine = {block_id(b): b for b in blocks if b.cache is not None}
    for bid, entries in by_block.items():
        block = mine.get(bid)
        if block is None:
            continue
        for entry in entries:
            block.cache.put(entry)
            count += 1
    return count


def _blocks_for(blocks: list[Block], addr: str, port: int) -> list[Block]:
    return [b for b in blocks if b.cfg.port == port and (addr in b.cfg.binds or not b.cfg.binds)]


class Agent:
    def __init__(self, config: Config, clock=time.monotonic, tcp_limits: TcpLimits | None = None,
                 admission: Admission | None = None, budget: ByteBudget | None = None,
                 forward_retry: bool = True, udp_batch: bool = True, udp_coalesce: float = 0.0):
        self.config = config
        self.clock = clock
        self.forward_retry, self.udp_batch = forward_retry, udp_batch  # -forward-retry, -udp-batch
        # the coalescing polls' state, one for the agent: its listeners poll
        # with it (-udp-coalesce's window) and its forwarders' connections
        # hold their writes and reads in it (upstream.cork)
        self.cork = Cork(udp_coalesce)
        self.tcp_limits = tcp_limits or TcpLimits()
        self.admission = admission or Admission()  # one for the whole agent
        self.budget = budget or ByteBudget()        # likewise: every cache's bytes together
        self.top = Top(clock=clock)                 # likewise: the heavy hitters of every listener
        self.blocks = [Block(b, clock, self.budget, forward_retry, self.cork) for b in config.blocks]
        self.listeners: list[Listener] = [
            Listener(addr, port, _blocks_for(self.blocks, addr, port), self.tcp_limits, self.admission,
                     self.clock, udp_batch, self.cork, self.top)
            for addr, port in config.listeners]
        self.retiring: set[asyncio.Task] = set()
        self.retired: list[Listener] = []  # removed by reloads; their counters still count
        self.shared: list[sharing.Shared] = []  # addresses another server holds too (server.sharing)

    async def start(self, adopted: dict[tuple[str, int, str], socket.socket] | None = None) -> None:
        """Start every listener, on sockets handed over (hot handoff, systemd)
        where there are some for its address, else on new ones. Adopted
        sockets no listener wants are closed."""
        adopted = dict(adopted or {})
        for listener in self.listeners:
            udp = adopted.pop((listener.addr, listener.port, "udp"), None)
            tcp = adopted.pop((listener.addr, listener.port, "tcp"), None)
            if udp is not None and tcp is not None:
                await listener.start(udp, tcp)
                log.info("serving on %s port %d (udp, tcp) with adopted sockets", listener.addr, listener.port)
                continue
            for sock in (udp, tcp):
                if sock is not None:
                    sock.close()
            await self._start_listener(listener)
        for (addr, port, kind), sock in adopted.items():
            log.info("closing adopted %s socket %s:%d: not in this configuration", kind, addr, port)
            sock.close()
        self.shared = sharing.shared_ports(self.listening_sockets())

    def udp_answers(self) -> dict:
        """(addr, port) -> ``answer(data, addr)`` of each UDP transport that
        can answer a datagram read off its socket elsewhere (server.sharing)."""
        return {(lst.addr, lst.port): lst.udp.answer for lst in self.listeners
                if lst.udp is not None and hasattr(lst.udp, "answer") and not getattr(lst.udp, "wild", False)}

    def listening_sockets(self) -> list[tuple[str, int, str, int]]:
        """(addr, port, kind, fd) of every listening socket, for a heir."""
        out = []
        for lst in self.listeners:
            fd = lst.udp.fileno() if lst.udp is not None else None
            if fd is not None:
                out.append((lst.addr, lst.port, "udp", fd))
            if lst.tcp_server is not None and lst.tcp_server.sockets:
                out.append((lst.addr, lst.port, "tcp", lst.tcp_server.sockets[0].fileno()))
        return out

    def snapshot_blocks(self) -> list[tuple[str, list]]:
        return [(block_id(b), list(b.cache.entries())) for b in self.blocks if b.cache is not None]

    def restore(self, by_block: dict[str, list]) -> int:
        """Put snapshot entries (a handoff, a cache file) into the blocks
        serving the same zones; returns how many."""
        return put_entries(self.blocks, by_block)

    def event_sources(self):
        """Everything that counts ``nodecache_events_total`` events: each
        says its own (``events()``); retired listeners still count."""
        for listener in list(self.listeners) + list(self.retired):
            yield listener.path
            yield listener.tcp_state
            if listener.udp is not None:
                yield listener.udp
        for block in self.blocks:
            for stage in block.stages:
                if hasattr(stage, "events"):
                    yield stage

    def stop_reading(self) -> None:
        """After a handoff: the heir reads our sockets now; we only finish replies."""
        for listener in self.listeners:
            listener.stop_reading()

    async def _start_listener(self, listener: Listener) -> None:
        try:
            udp, tcp = make_sockets(listener.addr, listener.port)
        except ListenError:
            if listener.addr != "::":
                raise
            # The listener keeps its configured address ("::", every address)
            # as its identity, so reloads and a heir's lookup of handed-over
            # sockets still find it; only the socket is IPv4-only.
            log.warning("IPv6 unavailable; listening on 0.0.0.0:%d only", listener.port)
            udp, tcp = make_sockets("0.0.0.0", listener.port)
        await listener.start(udp, tcp)
        log.info("listening on %s port %d (udp, tcp)", listener.addr, listener.port)

    async def reload(self, config: Config) -> None:
        """Swap in a new configuration without dropping a query.

        Listeners on addresses that stay keep their sockets; only their
        router changes, in one assignment, so a datagram is routed either
        by the old blocks or by the new ones. Queries already in flight
        finish on the old blocks, which are closed once idle. Cache entries
        move to the new block serving the same zones on the same port.
        New listeners must bind before anything changes: if one cannot,
        the reload fails and the old configuration stays.
        """
        blocks = [Block(b, self.clock, self.budget, self.forward_retry, self.cork) for b in config.blocks]
        moving = dict(self.snapshot_blocks())
        for old in self.blocks:
            if old.cache is not None:
                old.cache.detach()  # its entries move (or go): count them once, in the new caches
        put_entries(blocks, moving)
        current = {(lst.addr, lst.port): lst for lst in self.listeners}
        wanted = set(config.listeners)
        started = []
        try:
            for addr, port in config.listeners:
                if (addr, port) not in current:
                    listener = Listener(addr, port, _blocks_for(blocks, addr, port), self.tcp_limits,
                                        self.admission, self.clock, self.udp_batch, self.cork, self.top)
                    await self._start_listener(listener)
                    started.append(listener)
        except ListenError:
            for listener in started:
                listener.close()
            for block in blocks:
                block.close()
            raise
        for (addr, port), listener in current.items():
            if (addr, port) in wanted:
                listener.path.router = Router(_blocks_for(blocks, addr, port))
        gone = [lst for key, lst in current.items() if key not in wanted]
        self.retired = (self.retired + gone)[-64:]
        self.listeners = [lst for key, lst in current.items() if key in wanted] + started
        kept = {(lst.addr, lst.port) for lst in self.listeners}
        self.shared = [e for e in self.shared if (e.addr, e.port) in kept]  # (a new listener's joins are not
        # watched: the settling task ends with the shares it saw at start)
        old_blocks, self.blocks, self.config = self.blocks, blocks, config
        task = asyncio.get_running_loop().create_task(self._retire(old_blocks, gone))
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)
        self.start_blocks()

    def start_blocks(self) -> None:
        """Start the stages' own work in every block (the loop probe: plugins.loop)."""
        for block in self.blocks:
            if block.starting:
                task = asyncio.get_running_loop().create_task(block.start())
                self.retiring.add(task)
                task.add_done_callback(self.retiring.discard)
                task.add_done_callback(lambda _, block=block: self._block_started(block))

    def _block_started(self, block: Block) -> None:
        if block.down:  # its answers, memoised ones included, stop now
            for listener in self.listeners:
                listener.path.memo.clear()

    def fold_counters(self) -> None:
        """Bring every counter up to date with the memoised hits (plugins.cache.memo)."""
        for listener in self.listeners + self.retired:
            listener.path.memo.fold()

    def block_server(self, block: Block) -> str:
        """CoreDNS's ``server`` label for a block: its first listener's."""
        for listener in self.listeners:
            if any(b is block for b in listener.path.router.blocks):
                return listener.stats.server
        return ""

    async def _retire(self, blocks: list[Block], listeners: list[Listener], grace: float = 10.0) -> None:
        for listener in listeners:
            listener.stop_reading()
        deadline = asyncio.get_running_loop().time() + grace
        while asyncio.get_running_loop().time() < deadline and any(
                b.forward_stage and any(f.inflight for f in b.forward_stage.forwarders) for b in blocks):
            await asyncio.sleep(0.05)
        for listener in listeners:
            await listener.path.drain(1.0)
            listener.close()
        for block in blocks:
            block.close()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop reading, let in-flight queries finish (bounded), release everything."""
        for listener in self.listeners:
            listener.stop_reading()
        cut = 0
        for listener in self.listeners:
            cut += await listener.path.drain(grace)
        if cut:
            log.warning("shutdown cut off %d queries still in flight after %.1fs", cut, grace)
        for listener in self.listeners:
            listener.close()
        for task in list(self.retiring):
            task.cancel()
        for block in self.blocks:
            block.close()

    def cache_stats(self) -> dict:
        self.fold_counters()
        out = {}
        for block in self.blocks:
            if block.cache is not None:
                c = block.cache
                out[",".join(block.cfg.zones)] = {
                    "hits": sum(c.hits), "misses": c.misses, "entries": len(c),
                    "served_stale": c.served_stale, "prefetches": c.prefetches}
        return out
