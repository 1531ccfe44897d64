"""The ``cache`` stage: serve from ``ttlcache.store.Cache``, fill it from the
next stage, refresh in the background.

Its three speeds (``plugins.chain``): ``front`` answers a fresh hit from
the receive callback (one lookup, one render) and ``memo_for`` makes the
memo of that reply (``memo``); ``take`` lets the next stages take a
plain miss at the callback speed (``upstream.direct``), then stores the
reply and answers each asker (``_taken``); ``handle`` is the rest, where
fresh hits arrive only when a stage before this one must see every query
(``log``): misses, expired entries. Expired entries within ``serve_stale`` are answered stale at once
and refreshed behind the client's back (``immediate``), or refreshed first
and answered stale only if the upstream fails (``verify``), per RFC 8767.
Prefetch and stale refreshes go through the rest of the chain with an
internal request built from the cache key; the forwarder coalesces them
with client misses for the same key.
"""
from __future__ import annotations

import asyncio
import logging

from ...ttlcache.entry import Entry, render_uncached
from ...ttlcache.store import FRESH, STALE, ByteBudget, Cache
from ...ttlcache.options import CacheConfig
from ...dns.key import TRAILER, cd, edns, name as key_name, question
from ...dns.wire import CD, RD, SERVFAIL, decode_name, encode_name, make_query, parse_query
from ...observe.ratelog import Throttle
from ..chain import Answer, Request, Shortcuts, Stage, in_zone
from .memo import MEMO_BYTES, Memo

log = logging.getLogger("nodecache.cache")
_throttle = Throttle(log)  # a failure answering a client's direct miss: at most a line a minute


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
        # The fast front is this stage's own. The memo skips its per-hit
        # work, which only prefetch needs (it times each hit). A direct miss
        # is taken (and cached as ``handle`` would) if the cache takes every
        # name of the block (a cache limited to some zones decides per name).
        return Shortcuts(hit=True, memo=self.cfg.prefetch is None, direct=not self.cfg.zones)

    # -- the fast speed -------------------------------------------------------
    def front(self, data: bytes, scanned: tuple, now: float) -> bytes | None:
        """A fresh hit's reply (an entry holds only names this cache covers)."""
        entry = self.cache.fresh(scanned[0], now)
        if entry is None:
            return self.next_front(data, scanned, now)
        return entry.render(data, scanned[1], scanned[2], scanned[4], now)

    def memo_for(self, data: bytes, reply: bytes, key: bytes, qend: int, truncated: bool) -> Memo | None:
        entry = self.cache.peek(key)  # the entry ``front`` just rendered
        if entry is None or len(reply) > MEMO_BYTES or len(entry.tail) > MEMO_BYTES:
            return None
        until = entry.next_tick if entry.next_tick < entry.expires else entry.expires
        return Memo(until, reply[2:], entry, self.cache, None, len(data), len(reply), 0.0, truncated, qend)

    # -- the callback speed ---------------------------------------------------
    def take(self, key: bytes, asker, on_done) -> bool:
        cache = self.cache
        if cache.peek(key) is not None:
            return False  # stale entries: ``handle`` decides (serve stale, refresh)
        if not self.next_take(key, asker, self._taken):
            return False
        cache.count_miss()  # as ``handle`` counts each miss, coalesced or not
        return True

    def _taken(self, key: bytes, reply, askers: list) -> None:
        """A taken miss's exchange ended: store the reply and answer each
        asker through its own listener's path, or hand them to the slow path
        (reply None). A bug here must not lose the queries: the slow path
        answers what is left."""
        if reply is None:
            for asker in askers:
                asker.path.hand_over(asker)
            return
        try:
            entry = self.cache.insert(key, reply)
            while askers:
                asker = askers[0]
                data, (_, qend, flags, _, edns) = asker.data, asker.scan
                if entry is not None:
                    out = entry.render(data, qend, flags, edns, self.cache.clock())
                else:
                    out = render_uncached(reply, data, qend, flags, edns)
                out = asker.path.finish(asker, out)  # fitted and counted: it is answered
                askers.pop(0)
                asker.send(out, asker.addr)
        except Exception:
            self.panics += 1  # coredns_panics_total
            _throttle.error("direct", "answering a direct miss for %s failed", decode_name(key[:-TRAILER]),
                            exc_info=True)
            for asker in askers:
                asker.path.hand_over(asker)

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
