"""The ``cache`` stage: serve from ``cache.store.Cache``, fill it from the
next stage, refresh in the background.

Fresh hits normally never reach this stage (the block answers them on the
hot path); it sees misses, expired entries and, when ``log`` is on, all
queries. Expired entries within ``serve_stale`` are answered stale at once
and refreshed behind the client's back (``immediate``), or refreshed first
and answered stale only if the upstream fails (``verify``), per RFC 8767.
Prefetch and stale refreshes go through the rest of the chain with an
internal request built from the cache key; the forwarder coalesces them
with client misses for the same key.
"""
from __future__ import annotations

import asyncio
import logging

from ...cache.entry import Entry
from ...cache.store import FRESH, STALE, ByteBudget, Cache
from ...cache.options import CacheConfig
from ...dns.key import cd, edns, name as key_name, question
from ...dns.wire import CD, RD, SERVFAIL, encode_name, make_query, parse_query
from ..chain import Answer, Request, Shortcuts, Stage, in_zone

log = logging.getLogger("nodecache.cache")


class CacheStage(Stage):
    name = "cache"

    def __init__(self, cfg: CacheConfig, block_zones: tuple[str, ...], clock, budget: ByteBudget | None = None):
        self.cfg = cfg
        self.cache = Cache(cfg, clock, budget)
        self.cache.on_prefetch = self._refresh_soon
        self.zones = [encode_name(z) for z in (cfg.zones or block_zones)]
        self.everything = b"\x00" in self.zones  # the root zone: no per-query check
        self.tasks: set[asyncio.Task] = set()
        self.refresh_failures = 0

    def shortcuts(self) -> Shortcuts:
        # The hit path is this stage's own (Cache.fresh). The memo skips its
        # per-hit work, which only prefetch needs (it times each hit). A
        # direct miss caches as this stage would, if the cache takes every
        # name of the block (a cache limited to some zones decides per name).
        return Shortcuts(hit=True, memo=self.cfg.prefetch is None, direct=not self.cfg.zones)

    def covers(self, lname: bytes) -> bool:
        if self.everything:
            return True
        return any(in_zone(lname, z) for z in self.zones)

    async def handle(self, request: Request) -> Answer:
        q = request.query
        if not self.covers(key_name(q.key)):
            return await self.next(request)
        entry, state = self.cache.lookup(q.key)
        if state == FRESH:
            return Answer(entry.flags & 0xF, wire=entry.render(
                q.data, q.qend, q.flags, q.edns, self.cache.clock()), plugin="cache")
        if state == STALE:
            if not self.cfg.serve_stale.verify:
                self._refresh_soon(entry)
                return self._stale(request, entry)
            try:
                answer = await self.next(request)
            except Exception:  # verify mode: any upstream failure falls back to stale
                return self._stale(request, entry)
            if answer.reply is None or answer.reply.rcode == SERVFAIL:
                return self._stale(request, entry)
            return self._store(request, answer)
        return self._store(request, await self.next(request))

    def _stale(self, request: Request, entry: Entry) -> Answer:
        q = request.query
        self.cache.count_stale()
        return Answer(entry.flags & 0xF, wire=entry.render_stale(q.data, q.qend, q.flags, q.edns),
                      plugin="cache")

    def _store(self, request: Request, answer: Answer) -> Answer:
        if answer.reply is None:
            return answer
        q = request.query
        entry = self.cache.insert(q.key, answer.reply)
        if entry is None:
            return answer
        return Answer(answer.rcode, wire=entry.render(q.data, q.qend, q.flags, q.edns,
                                                      self.cache.clock()), plugin=answer.plugin)

    def _refresh_soon(self, entry: Entry) -> None:
        if entry.refreshing:
            return
        entry.refreshing = True
        task = asyncio.get_running_loop().create_task(self._refresh(entry))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _refresh(self, entry: Entry) -> None:
        key = entry.key
        data = make_query(0, question(key), RD | (CD if cd(key) else 0), edns(key))
        request = Request(parse_query(data), proto="internal")
        try:
            answer = await self.next(request)
            if answer.reply is not None and answer.reply.rcode != SERVFAIL:
                self.cache.insert(key, answer.reply)
        except Exception as exc:  # the entry stays (stale) and is retried on next use
            self.refresh_failures += 1
            log.debug("refresh of %r failed: %s", key, exc)
        finally:
            entry.refreshing = False

    def events(self) -> dict[str, int]:
        return {"refresh_failed": self.refresh_failures, "cache_budget_evicted": self.cache.budget_evictions,
                "cache_too_big": self.cache.too_big}

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.cache.detach()
