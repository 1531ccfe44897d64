"""The ``hosts`` stage: answer A, AAAA and PTR from a hosts file and
inline entries, as CoreDNS's hosts plugin does.

For a name in its zones: the addresses of the type asked; a name it knows
with no address of that type is NODATA (NOERROR, empty, authoritative); a
name it does not know goes down the chain with ``fallthrough`` (for that
name's zones), else SERVFAIL (CoreDNS: there is no SOA to make an
NXDOMAIN). PTR questions need no zone: the reverse of a known address is
answered with its names (unless ``no_reverse``), any other PTR goes down
the chain. The file is read at start (before the block serves), then
re-read when its modification time or size changed, looked at at most
every ``reload`` seconds on the query path's clock: the look is a stat,
and the read and parse of a changed file run in a worker thread while the
old table keeps answering; the new table replaces it whole when ready.
Only a regular file of at most ``table.MAX_BYTES`` is read (a FIFO, a
device or a directory at the path is an error logged once, as is any
other reason the file cannot be used, and the table in use stays); a file
that disappears leaves the inline entries serving.

Its answers are not cached (CoreDNS's cache does keep them): they cost a
dict lookup here. It sits after ``cache`` in the chain, so fresh hits may
skip it; a direct miss may not (it declares no ``direct``), so a block with
hosts sends every miss through the chain.
"""
from __future__ import annotations

import asyncio
import logging
import time

from dnslib import AAAA, PTR, QTYPE, RR, A

from ...dns.wire import SERVFAIL, decode_name, encode_name
from ..answer import reply
from ..chain import Answer, Request, Shortcuts, Stage, in_zone
from .setup import HostsConfig
from .table import HostsFileError, Table, address_of_reverse, file_stamp, parse, read_file

log = logging.getLogger("nodecache.hosts")


class HostsStage(Stage):
    name = "hosts"

    def __init__(self, cfg: HostsConfig, block_zones: tuple[str, ...], clock=time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self.zones = [encode_name(z) for z in (cfg.zones or block_zones)]
        self.fall = None if cfg.fallthrough is None else [encode_name(z) for z in cfg.fallthrough or (".",)]
        self.inline = self._inline_table()
        self.table = self.inline
        self.stamp: tuple | None = None
        self.checked = float("-inf")
        self.loading = None     # the worker's future while a changed file is read
        self.problem = ""       # the reason last logged (each is logged once, until the file is fine)
        self.closed = False
        try:
            self.stamp, self.table = self._read_and_parse()  # at start, before the block serves
        except OSError as exc:
            self._unusable(exc)

    def shortcuts(self) -> Shortcuts:
        return Shortcuts(hit=True, memo=True)  # after the cache: a fresh hit never reaches it

    def close(self) -> None:
        self.closed = True

    def _inline_table(self) -> Table:
        table = Table()
        for addr, names in self.cfg.inline:
            table.add(addr, names)
        return table

    def _fresh(self) -> Table:
        if self.cfg.reload and self.loading is None:
            now = self.clock()
            if now - self.checked >= self.cfg.reload:
                self.checked = now
                self._look()
        return self.table

    def _look(self) -> None:
        """Start reading the file in a worker if it changed."""
        try:
            if file_stamp(self.cfg.file) == self.stamp:
                return
        except OSError as exc:
            self._unusable(exc)
            return
        self.loading = asyncio.get_running_loop().run_in_executor(None, self._read_and_parse)
        self.loading.add_done_callback(self._loaded)

    def _read_and_parse(self) -> tuple[tuple, Table]:
        """The file's stamp and its table (inline entries first); in a worker
        thread once serving."""
        stamp, text = read_file(self.cfg.file)
        return stamp, parse(text, self._inline_table())

    def _loaded(self, future) -> None:
        self.loading = None
        if self.closed or future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self.stamp, self.table = future.result()
            self._fine()
        elif isinstance(exc, OSError):
            self._unusable(exc)
        else:  # a bug in the parser: the old table serves, and it is said
            log.error("hosts: reading %s failed: %r; the table in use stays", self.cfg.file, exc)

    def _fine(self) -> None:
        if self.problem:
            log.info("hosts: %s read again (%d names)", self.cfg.file, len(self.table.v4) + len(self.table.v6))
        self.problem = ""

    def _unusable(self, exc: OSError) -> None:
        """The file cannot be read: a missing file leaves the inline entries;
        any other reason keeps the table in use. Each reason is logged once."""
        reason = str(exc) if isinstance(exc, HostsFileError) else (exc.strerror or str(exc))
        if isinstance(exc, FileNotFoundError):
            self.stamp, self.table = None, self.inline
        if reason != self.problem:
            log.warning("hosts: %s: %s; %s", self.cfg.file, reason,
                        "serving the inline entries" if self.table is self.inline else "the table in use stays")
            self.problem = reason

    async def handle(self, request: Request) -> Answer:
        q = request.query
        lname = q.qname.lower()
        name = decode_name(lname)
        table = self._fresh()
        if q.qtype == QTYPE.PTR:
            addr = address_of_reverse(name)
            names = table.names.get(addr, []) if addr and self.cfg.reverse else []
            if not names:  # never NODATA for a missing PTR: the rest of the chain may know it
                return await self.next(request)
            rrs = [RR(name, QTYPE.PTR, ttl=self.cfg.ttl, rdata=PTR(n)) for n in names]
            return Answer(0, wire=reply(q, 0, rrs), plugin="hosts")
        if not any(in_zone(lname, z) for z in self.zones):
            return await self.next(request)
        rrs = []
        if q.qtype == QTYPE.A:
            rrs = [RR(name, QTYPE.A, ttl=self.cfg.ttl, rdata=A(a)) for a in table.v4.get(name, ())]
        elif q.qtype == QTYPE.AAAA:
            rrs = [RR(name, QTYPE.AAAA, ttl=self.cfg.ttl, rdata=AAAA(a)) for a in table.v6.get(name, ())]
        if not rrs and not table.knows(name):
            if self.fall is not None and any(in_zone(lname, z) for z in self.fall):
                return await self.next(request)
            return Answer(SERVFAIL, plugin="hosts")
        return Answer(0, wire=reply(q, 0, rrs), plugin="hosts")
