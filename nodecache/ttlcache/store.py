"""The cache proper: two maps (success, denial) of rendered-ready entries.

Pure and synchronous, with the clock injected, so every TTL, eviction,
prefetch and serve-stale rule is tested without sleeping.

* ``hit`` is the hot path: one dict lookup per class, an expiry check, a
  flag set and a render that is usually a join of cached bytes. It never
  allocates beyond the reply and never logs; counters are plain integers
  read by the metrics collector at scrape time.
* ``lookup`` is the slow path's view: fresh, stale (RFC 8767) or absent.
* ``insert`` decides whether and how long a reply may be cached:
  success = lowest TTL of answer + authority, clamped to [MINTTL, TTL];
  denial (NXDOMAIN or NODATA) = min(SOA TTL, SOA MINIMUM) (RFC 2308 §5),
  clamped likewise, and not cached at all without a SOA;
  SERVFAIL for the configured ``servfail`` duration (RFC 2308 §7.1 allows
  up to 5 minutes); truncated replies and any other RCODE never.
Eviction (CLOCK / second chance, like SIEVE: no reordering on a hit): each
class is kept in insertion order; a hit only marks the entry visited. To
make room, the oldest entry is taken: if visited, it is cleared and moved
to the young end, otherwise evicted. Popular entries stay, one-hit names
(most misses) go first.

Memory is bounded twice: by each class's entry capacity (CoreDNS's
options) and by a byte budget shared by every cache of the agent
(``ByteBudget``: entry overhead + key + records), and a reply whose records
exceed ``max_item`` bytes is not cached at all.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

from .. import defaults
from ..ttlcache.options import CacheConfig
from ..dns.reply import Reply
from ..dns.wire import NOERROR, NXDOMAIN, SERVFAIL
from .entry import DENIAL, SERVFAIL_KIND, SUCCESS, Entry

FRESH, STALE = "fresh", "stale"
DEFAULT_BUDGET = defaults.CACHE_BYTES      # bytes for all caches of an agent (see docs/corefile.md: limits)
DEFAULT_MAX_ITEM = defaults.CACHE_MAX_ITEM  # records bytes; larger replies are served, not cached


class ByteBudget:
    """The bytes every cache of one agent may hold together."""

    def __init__(self, limit: int = DEFAULT_BUDGET, max_item: int = DEFAULT_MAX_ITEM):
        self.limit, self.max_item = limit, max_item
        self.caches: list["Cache"] = []
        self.memos: list = []  # the listeners' memo tables (plugins.cache.memo): the first to give way

    @property
    def used(self) -> int:
        # Asked on every insert and every new memo, over a cache or two and a
        # memo table per listener: plain loops (no generator to make and run).
        used = 0
        for cache in self.caches:
            used += cache.bytes
        for table in self.memos:
            used += table.bytes
        return used

    def shed_memo(self) -> bool:
        """Drop one memo (from the table holding most bytes) for an entry
        that needs room; False when there is none left."""
        tables = [m for m in self.memos if m.bytes]
        return bool(tables) and max(tables, key=lambda m: m.bytes).shed()


class Cache:
    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.monotonic,
                 budget: ByteBudget | None = None):
        self.config = config
        self.clock = clock
        self.budget = budget or ByteBudget()
        self.budget.caches.append(self)
        self.bytes = 0
        self._success: OrderedDict[bytes, Entry] = OrderedDict()
        self._denial: OrderedDict[bytes, Entry] = OrderedDict()
        self._stale_for = config.serve_stale.duration if config.serve_stale else 0.0
        pf = config.prefetch
        self._prefetch_pct = pf.percentage / 100 if pf else 0.0
        # Called with an entry that should be refreshed in the background;
        # the callee sets ``entry.refreshing`` while it works.
        self.on_prefetch: Callable[[Entry], None] | None = None
        # Counters (read at scrape time): indexes follow entry kinds.
        self.hits = [0, 0, 0]
        self.misses = 0
        self.evictions = [0, 0, 0]
        self.served_stale = 0
        self.prefetches = 0
        self.drops = 0  # replies not cached because they were truncated
        self.too_big = 0  # replies not cached because their records exceed max_item
        self.budget_evictions = 0  # evicted to stay within the byte budget

    def __len__(self) -> int:
        return len(self._success) + len(self._denial)

    @property
    def capacity(self) -> int:
        """Entries this cache holds at most, both classes together."""
        return self.config.success.capacity + self.config.denial.capacity

    def sizes(self) -> tuple[int, int]:
        return len(self._success), len(self._denial)

    # -- hot path -------------------------------------------------------
    def fresh(self, key: bytes, now: float) -> Entry | None:
        """The unexpired entry for ``key``, counted as a hit (and considered
        for prefetch), else None: the hot path's one lookup. Expired entries
        are the slow path's to decide (stale, refresh, evict)."""
        lru = self._success
        entry = lru.get(key)
        if entry is None:
            lru = self._denial
            entry = lru.get(key)
            if entry is None:
                return None
        if now >= entry.expires:
            return None
        self._fresh_hit(entry, now)
        return entry

    def _fresh_hit(self, entry: Entry, now: float) -> None:
        """What a fresh hit does to its entry, by whichever path it came:
        counted, marked used (second chance), considered for prefetch."""
        entry.visited = True
        self.hits[entry.kind] += 1
        if self._prefetch_pct and not entry.refreshing:
            self._consider_prefetch(entry, now)

    def _consider_prefetch(self, entry: Entry, now: float) -> None:
        # CoreDNS: popular = AMOUNT hits with no gap of DURATION between them.
        pf = self.config.prefetch
        if now - entry.last_hit >= pf.duration:
            entry.streak = 0
        entry.streak += 1
        entry.last_hit = now
        if (entry.streak >= pf.amount and entry.kind != SERVFAIL_KIND
                and entry.remaining(now) <= entry.ttl * self._prefetch_pct
                and self.on_prefetch is not None):
            self.prefetches += 1
            self.on_prefetch(entry)

    # -- slow path ------------------------------------------------------
    def lookup(self, key: bytes) -> tuple[Entry | None, str | None]:
        """(entry, FRESH|STALE) or (None, None). Drops entries past serving."""
        lru = self._success
        entry = lru.get(key)
        if entry is None:
            lru = self._denial
            entry = lru.get(key)
        if entry is None:
            self.misses += 1
            return None, None
        now = self.clock()
        if now < entry.expires:
            self._fresh_hit(entry, now)  # as on the hot path (a block whose hits take the chain: `log`)
            return entry, FRESH
        if now < entry.expires + self._stale_for and entry.kind != SERVFAIL_KIND:
            entry.visited = True
            return entry, STALE
        del lru[key]
        entry.cached = False
        self.bytes -= entry.size
        self.misses += 1
        return None, None

    def holds(self, entry: Entry) -> bool:
        """Whether ``entry`` is still the one cached under its key: its own
        flag, which every way into and out of the tables sets (no lookup in
        tables of 100,000 entries, cold in the CPU's caches, per memo renewal)."""
        return entry.cached

    def peek(self, key: bytes) -> Entry | None:
        """The entry under ``key``, fresh or not, without counting anything."""
        entry = self._success.get(key)
        return entry if entry is not None else self._denial.get(key)

    def count_miss(self) -> None:
        self.misses += 1

    def count_stale(self) -> None:
        self.served_stale += 1

    def classify(self, reply: Reply) -> tuple[int, int] | None:
        """(kind, ttl) for a cacheable reply, else None."""
        if reply.truncated or not reply.cacheable:
            return None
        cfg = self.config
        if reply.rcode == NOERROR and reply.answers:
            if reply.min_ttl is None:
                return None
            return SUCCESS, _clamp(reply.min_ttl, cfg.success.min_ttl, cfg.success.max_ttl)
        if reply.rcode in (NOERROR, NXDOMAIN):
            if reply.negative_ttl is None:
                return None  # RFC 2308 §5: no SOA, no negative caching
            return DENIAL, _clamp(reply.negative_ttl, cfg.denial.min_ttl, cfg.denial.max_ttl)
        if reply.rcode == SERVFAIL and cfg.servfail_ttl > 0:
            return SERVFAIL_KIND, max(1, round(cfg.servfail_ttl))
        return None

    def insert(self, key: bytes, reply: Reply) -> Entry | None:
        if reply.truncated:
            self.drops += 1
        if len(reply.tail) > self.budget.max_item:
            self.too_big += 1
            return None
        decision = self.classify(reply)
        if decision is None:
            return None
        kind, ttl = decision
        if ttl <= 0:
            return None
        entry = Entry(key, reply, kind, ttl, self.clock())
        self.put(entry)
        return entry

    def put(self, entry: Entry) -> None:
        key = entry.key
        for lru in (self._success, self._denial):
            old = lru.pop(key, None)
            if old is not None:
                old.cached = False
                self.bytes -= old.size
        if entry.kind == SUCCESS:
            lru, cap = self._success, self.config.success.capacity
        else:
            lru, cap = self._denial, self.config.denial.capacity
        lru[key] = entry
        entry.cached = True
        self.bytes += entry.size
        while len(lru) > cap:
            self._evict_one(lru)
        while self.budget.used > self.budget.limit and len(self):
            if self.budget.shed_memo():
                continue  # memos are derived from entries: they make room first
            self._evict_one(self._success if len(self._success) >= len(self._denial) else self._denial)
            self.budget_evictions += 1

    def _evict_one(self, lru: OrderedDict) -> None:
        """Second chance: visited entries move to the young end, cleared; the
        first unvisited one goes. Bounded: after one pass every flag is clear."""
        while True:
            key, entry = lru.popitem(last=False)
            if not entry.visited:
                break
            entry.visited = False
            lru[key] = entry
        entry.cached = False
        self.bytes -= entry.size
        self.evictions[entry.kind] += 1

    def detach(self) -> None:
        """This cache is going away (a reload replaced it): stop counting its bytes."""
        if self in self.budget.caches:
            self.budget.caches.remove(self)

    def entries(self):
        """All entries (for snapshots and tests), least recently used first."""
        yield from self._success.values()
        yield from self._denial.values()

    def clear(self) -> None:
        for entry in self.entries():
            entry.cached = False
        self._success.clear()
        self._denial.clear()
        self.bytes = 0


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))
