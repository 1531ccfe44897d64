"""Finished UDP replies to exact queries: the cheapest cache hit there is.

A pod asks the same question with the same bytes again and again: its
stub resolver's flags, the name in the same letter case, the same OPT. So
once the cache has answered a query, the reply to every later query with
the same bytes after the ID is the same reply with that ID in front, until
one of its TTLs would change (``Entry.next_tick``, at most a second away)
or the entry expires. ``MemoTable`` maps those bytes (``data[2:]``) to the
reply's bytes after the ID, and the query path answers a UDP query from it with one
dict lookup, one clock read, one join and one integer increment: no scan,
no routing, no rendering, no counter series lookup.

When the TTL tick comes, the memo renews itself (``Memo.refresh``) if its
entry is still the one cached and still fresh: its own reply with each
TTL aged to the second, written where the entry's offsets say (one record:
two slices and a join), without rendering the entry. Without that, a
name asked a few times a second (most names on most nodes) went through
the full hit path and a new memo once a second: at 5 queries per name
and second, one query in five (measured side by side with dnsperf at
5,000 q/s over 1,000 names: 39.5 -> 38.0 µs of CPU per query).

Counting is deferred, not dropped: each ``Memo`` counts its own hits, and
``fold`` adds the ones not added yet to everything a normal hit would have updated (CoreDNS's
request, response, size and duration series, the cache's hit counter, the
entry's second-chance bit, the truncated counter). The metrics collector
folds before every scrape, a memo is folded when it is replaced, and the
table is folded and emptied when full, when its listener's routing changes
(reload) and when a forwarding loop is detected. A memoised hit falls in
the first duration bucket (it is a dict lookup and a send, microseconds;
the bucket ends at 250 µs) and adds to the duration sum the time the full
cache-hit path took when the memo was made, an upper bound of its own.

Only blocks whose hits need nothing per hit are memoised: a cache without
prefetch (prefetch counts each hit's timing) and no query log. A memo may
outlive its entry's eviction or replacement by less than a second; the
records it serves are still within the TTL they were cached with (a
memo renews only while its entry is still cached).

Bounds. A table holds at most as many memos as the caches it memoises
can hold entries (``bind``: the sum of their capacities), so a working
set the cache holds fits in the memo too; a fixed ceiling below that
made every query of a busy node's working set build a memo that was
thrown away before its next use. A full table makes room one memo at a
time, with the cache's second chance (a memo hit since it was last
looked at moves to the young end; the first one that was not goes): hot
queries stay, a client varying its bytes on purpose churns only the young
end. Memos are derived data, so their bytes (``Memo.size``) count in the
agent's cache byte budget as the lowest priority: a cache that needs room
takes it from the memos first (``ByteBudget.shed_memo``), and a memo that
would overflow the budget evicts older memos, never an entry. Only
memos that would only churn are not made: while the evicted memos
keep having had no hit at all (CHURN in a row: a working set larger than
the table, asked round-robin), only one query in SAMPLE gets a memo, so
the table fills with memos that stay long enough to be used instead of
paying to build memos nobody asks for again. Only
replies and records of at most MEMO_BYTES are memoised (what pods ask
nearly always is). A memo holds its entry, which the cache's budget no
longer counts once evicted: at most one entry per memo, until the memo's
next renewal replaces it.
"""
from __future__ import annotations

from collections import OrderedDict

from ...ttlcache.entry import ttls_aged

MEMO_BYTES = 512   # replies (and entries' records) larger than this are not memoised
# What a memo costs beyond its byte strings' contents: the Memo object, two
# bytes objects' headers (reply and key), its expiry and its table slot, as
# tracemalloc measures it (tests/unit/test_memo_table.py); the byte budget
# counts with it.
MEMO_OVERHEAD = 344
CHURN = 64   # unused memos evicted in a row: the table churns
SAMPLE = 16  # while it churns, one memo is made in this many chances


class Memo:
    __slots__ = ("until", "after_id", "hits", "folded", "seen", "entry", "cache", "acc", "qlen", "rlen", "seconds",
                 "truncated", "base", "size")

    def __init__(self, until: float, after_id: bytes, entry, cache, acc: list, qlen: int, rlen: int,
                 seconds: float, truncated: bool, qend: int):
        self.until = until          # on the cache's clock: the next TTL change or expiry
        self.after_id = after_id    # the reply after its ID (two bytes)
        # Counts only ever grow, and each has one writer: ``hits`` the hit
        # path, ``folded`` and ``seen`` the table. Folding never resets what
        # the second chance reads, so a metrics scrape does not make every
        # memo look unused to the next eviction.
        self.hits = 0               # answered from here
        self.folded = 0             # of those, added to the counters already (``fold``)
        self.seen = 0               # ``hits`` when eviction last looked (second chance)
        self.entry, self.cache = entry, cache
        self.acc = acc              # the stats series a hit falls in (first duration bucket)
        self.qlen, self.rlen = qlen, rlen
        self.seconds = seconds      # what the full hit path took: counted per memoised hit
        self.truncated = truncated
        # Where the entry's records start in ``after_id`` (after our header and
        # the client's question, the reply up to ``qend``): their TTLs sit
        # at the entry's offsets from there. A truncated reply carries only
        # the records that fit, not the entry's: it never renews (base
        # None) and ends at the entry's next TTL tick, so its TTLs are
        # never older than a full render's.
        self.base = None if truncated else qend - 2
        self.size = MEMO_OVERHEAD + len(after_id) + qlen  # the reply and the key (qlen - 2)

    def refresh(self, now: float) -> bool:
        """At the TTL tick: renew if the entry is still the one cached and
        still fresh (else the full path decides, as for any hit), with its
        TTLs aged in place as the entry ages its own (``Entry.tick``)."""
        entry = self.entry
        if self.base is None or now >= entry.expires or not self.cache.holds(entry):
            return False
        age, until = entry.age_at(now)
        self.after_id = ttls_aged(self.after_id, self.base, entry.offsets, entry.ttls, age)
        self.until = until if until < entry.expires else entry.expires
        return True


class MemoTable:
    """One listener's memos, by the query's bytes after its ID. ``get`` is
    the query path's lookup; the rest runs on misses, folds and reloads."""

    def __init__(self):
        self.table: OrderedDict[bytes, Memo] = OrderedDict()  # oldest first: eviction order
        self.get = self.table.get   # the query path's lookup (the table is never replaced)
        self.capacity = 0           # memos at most (``bind``); 0: nothing is memoised
        self.budget = None          # the caches' ByteBudget, which counts ``bytes``
        self.bytes = 0
        self.truncated = 0          # memoised hits that carried TC=1, folded
        self.evictions = 0          # memos dropped to make room (capacity or bytes)
        self.unused_run = 0         # evicted in a row without ever being used
        self.skip = 0               # chances to memoise left out before the next memo (churn)

    def admit(self) -> bool:
        """Whether to make a memo now (before it is built: see CHURN)."""
        if self.skip:
            self.skip -= 1
            return False
        return True

    def bind(self, caches: list, budget) -> None:
        """Memoise for these caches (a reload changed what the listener
        serves): as many memos as they hold entries, counted in ``budget``."""
        self.clear()
        self.capacity = sum(c.capacity for c in caches)
        if self.budget is not budget:
            if self.budget is not None:
                self.budget.memos.remove(self)
            self.budget = budget
            if budget is not None:
                budget.memos.append(self)

    def detach(self) -> None:
        """The listener is gone: fold, drop everything, stop counting."""
        self.bind([], None)

    def put(self, key: bytes, memo: Memo) -> None:
        """Memoise ``memo`` under ``key``: the query after its ID."""
        table = self.table
        old = table.pop(key, None)
        if old is not None:
            self._fold(old)
            self.bytes -= old.size
        elif len(table) >= self.capacity:
            if not self.capacity:
                return
            self._evict(True)
        table[key] = memo
        self.bytes += memo.size
        budget = self.budget
        while budget is not None and budget.used > budget.limit and table:
            self._evict(False)  # memos never push an entry out: older memos go (the new one last)

    def shed(self) -> bool:
        """Drop the oldest memo for a cache that needs its bytes."""
        if not self.table:
            return False
        self._evict(False)
        return True

    def _evict(self, second_chance: bool) -> None:
        """Drop one memo, oldest first; with ``second_chance``, one hit since
        it was last looked at buys it a move to the young end (bounded: after
        one pass every memo has been looked at)."""
        table = self.table
        while True:
            key, memo = table.popitem(last=False)
            if not second_chance or memo.hits <= memo.seen:
                break
            memo.seen = memo.hits
            table[key] = memo
        if memo.hits:
            self.unused_run = 0
        else:
            self.unused_run += 1
            if self.unused_run >= CHURN:
                self.skip = SAMPLE - 1
        self._fold(memo)
        self.bytes -= memo.size
        self.evictions += 1

    def fold(self) -> None:
        """Add every memo's hits to the counters a normal hit updates."""
        for memo in self.table.values():
            if memo.hits != memo.folded:
                self._fold(memo)

    def clear(self) -> None:
        self.fold()
        self.table.clear()
        self.bytes = 0

    def _fold(self, memo: Memo) -> None:
        n = memo.hits - memo.folded
        if not n:
            return
        memo.folded += n
        acc = memo.acc
        acc[0] += n
        acc[1] += n * memo.seconds
        acc[2] += n * memo.qlen
        acc[3] += n * memo.rlen
        memo.cache.hits[memo.entry.kind] += n
        memo.entry.visited = True
        if memo.truncated:
            self.truncated += n

    def __len__(self) -> int:
        return len(self.table)
