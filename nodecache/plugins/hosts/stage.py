"""The ``hosts`` stage: answer A, AAAA and PTR from a hosts file and
inline entries, as CoreDNS's hosts plugin does.

For a name in its zones: the addresses of the type asked; a name it knows
with no address of that type is NODATA (NOERROR, empty, authoritative); a
name it does not know goes down the chain with ``fallthrough`` (for that
name's zones), else SERVFAIL (CoreDNS: there is no SOA to make an
NXDOMAIN). PTR questions need no zone: the reverse of a known address is
answered with its names (unless ``no_reverse``), any other PTR goes down
the chain. The file is re-read when its modification time or size
changed, checked at most every ``reload`` seconds on the query path's
clock (no task of its own); a file that disappears leaves the inline
entries serving.

Its answers are not cached (CoreDNS's cache does keep them): they cost a
dict lookup here. It sits after ``cache`` in the chain, so fresh hits may
skip it; a direct miss may not (it declares no ``direct``), so a block with
hosts sends every miss through the chain.
"""
from __future__ import annotations

import logging
import os
import time

from dnslib import AAAA, PTR, QTYPE, RR, A

from ...dns.wire import SERVFAIL, decode_name, encode_name
from ..answer import reply
from ..chain import Answer, Request, Shortcuts, Stage, in_zone
from .setup import HostsConfig
from .table import Table, address_of_reverse, parse

log = logging.getLogger("nodecache.hosts")


class HostsStage(Stage):
    name = "hosts"

    def __init__(self, cfg: HostsConfig, block_zones: tuple[str, ...], clock=time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self.zones = [encode_name(z) for z in (cfg.zones or block_zones)]
        self.fall = None if cfg.fallthrough is None else [encode_name(z) for z in cfg.fallthrough or (".",)]
        self.inline = Table()
        for addr, names in cfg.inline:
            self.inline.add(addr, names)
        self.table = self.inline
        self.stamp: tuple | None = None
        self.checked = float("-inf")
        self._load()

    def shortcuts(self) -> Shortcuts:
        return Shortcuts(hit=True, memo=True)  # after the cache: a fresh hit never reaches it

    def _load(self) -> None:
        try:
            st = os.stat(self.cfg.file)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self.stamp:
                return
            with open(self.cfg.file, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as exc:
            if self.stamp is not None or self.table is not self.inline:
                log.warning("hosts: %s unreadable (%s); serving the inline entries", self.cfg.file, exc.strerror)
            self.stamp, self.table = None, self.inline
            return
        table = Table()
        for addr, names in self.cfg.inline:
            table.add(addr, names)
        self.table, self.stamp = parse(text, table), stamp

    def _fresh(self) -> Table:
        if self.cfg.reload:
            now = self.clock()
            if now - self.checked >= self.cfg.reload:
                self.checked = now
                self._load()
        return self.table

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
