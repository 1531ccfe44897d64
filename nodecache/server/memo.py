"""Finished UDP replies to exact queries: the cheapest cache hit there is.

A pod asks the same question with the same bytes again and again: its
stub resolver's flags, the name in the same letter case, the same OPT. So
once the cache has answered a query, the reply to every later query with
the same bytes after the ID is the same reply with that ID in front, until
one of its TTLs would change (``Entry.next_tick``, at most a second away)
or the entry expires. ``MemoTable`` maps those bytes (``data[2:]``) to the
reply's bytes after the ID, and the UDP transport answers from it with one
dict lookup, one clock read, one join and one integer increment: no scan,
no routing, no rendering, no counter series lookup.

When the TTL tick comes, the memo renews itself (``Memo.refresh``) if its
entry is still the one cached and still fresh: the entry's tail with the
new TTLs between the memo's own head and OPT, one join. Without that, a
name asked a few times a second (most names on most nodes) went through
the full hit path and a new memo once a second: at 5 queries per name
and second, one query in five (measured side by side with dnsperf at
5,000 q/s over 1,000 names: 39.5 -> 38.0 µs of CPU per query).

Counting is deferred, not dropped: each ``Memo`` counts its own hits, and
``fold`` adds them to everything a normal hit would have updated (CoreDNS's
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
memo renews only while its entry is still cached). A memo
holds its entry, which the cache's byte budget no longer counts once
evicted, so the table is bounded in bytes too: only replies and records of
at most MEMO_BYTES are memoised (what pods ask nearly always is), which
keeps a full table under ~3.5 MB per listener.
"""
from __future__ import annotations

MEMO_MAX = 2048    # distinct query byte strings; a table this full is folded and emptied
MEMO_BYTES = 512   # replies (and entries' records) larger than this are not memoised


class Memo:
    __slots__ = ("until", "tail", "hits", "entry", "cache", "acc", "qlen", "rlen", "seconds", "truncated",
                 "head", "opt")

    def __init__(self, until: float, tail: bytes, entry, cache, acc: list, qlen: int, rlen: int,
                 seconds: float, truncated: bool, qend: int):
        self.until = until          # on the cache's clock: the next TTL change or expiry
        self.tail = tail            # the reply after its ID
        self.hits = 0               # answered from here since the last fold
        self.entry, self.cache = entry, cache
        self.acc = acc              # the stats series a hit falls in (first duration bucket)
        self.qlen, self.rlen = qlen, rlen
        self.seconds = seconds      # what the full hit path took: counted per memoised hit
        self.truncated = truncated
        # What surrounds the entry's records in ``tail``: our header and the
        # client's question before (the reply up to ``qend``), OPT after. A
        # truncated reply carries no records and never renews (head None).
        self.head = self.opt = None
        if not truncated:
            self.head, self.opt = tail[:qend - 2], tail[qend - 2 + len(entry.tail):]

    def refresh(self, now: float) -> bool:
        """At the TTL tick: renew from the entry if it is still the one
        cached and still fresh (else the full path decides, as for any hit)."""
        entry = self.entry
        if self.head is None or now >= entry.expires or not self.cache.holds(entry):
            return False
        if now >= entry.next_tick:
            entry.tick(now)
        self.tail = b"".join((self.head, entry.tail, self.opt))
        until = entry.next_tick
        self.until = until if until < entry.expires else entry.expires
        return True


class MemoTable:
    def __init__(self):
        self.table: dict[bytes, Memo] = {}
        self.get = self.table.get   # the transport's lookup (the dict is never replaced)
        self.truncated = 0          # memoised hits that carried TC=1, folded

    def put(self, query_tail: bytes, memo: Memo) -> None:
        table = self.table
        old = table.get(query_tail)
        if old is not None:
            self._fold(old)
        elif len(table) >= MEMO_MAX:
            self.clear()  # a client varying its bytes on purpose only costs itself the memo
        table[query_tail] = memo

    def fold(self) -> None:
        """Add every memo's hits to the counters a normal hit updates."""
        for memo in self.table.values():
            if memo.hits:
                self._fold(memo)

    def clear(self) -> None:
        self.fold()
        self.table.clear()

    def _fold(self, memo: Memo) -> None:
        n = memo.hits
        if not n:
            return
        memo.hits = 0
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
