"""Which clients and names make this node's DNS traffic: bounded
heavy-hitter tables for ``nodecache top``.

Three Space-Saving summaries (Metwally, Agrawal, El Abbadi, 2005): clients,
names, and (client, name, rcode) for the failing answers (NXDOMAIN,
SERVFAIL, REFUSED). Each holds at most ``slots`` keys whatever the traffic:
a key not in a full table takes the slot of the smallest count, inheriting
that count (its overestimate, kept as ``error``), so any key asked more
often than 1/slots of the traffic is in the table and ranked by an upper
bound of its count. Every half ``window`` every count is halved and the
keys at zero leave: the tables follow the last minute or so, not the
process's life. Memory is fixed by ``slots``, whatever the traffic.

Feeding them costs the hit path one countdown per query: hits are sampled
(one in ``SAMPLE``, counted as SAMPLE), so the address of a batch's sender
is only made for the sampled one. Misses, refusals and the answers to
misses, dearer by far, are each counted. Per client: queries, cache hits,
NXDOMAIN and SERVFAIL answers, refusals, search-walk steps (an NXDOMAIN for
a name with a ``svc`` label: a pod's search list at work), TCP queries and
queries of a failing-question storm answered at the node (``server.storms``).
"""
from __future__ import annotations

import time

from ..dns.key import TRAILER
from ..dns.wire import NXDOMAIN, REFUSED, SERVFAIL, decode_name

SAMPLE = 128         # one hit in SAMPLE is counted (as SAMPLE): ~1% of a hit's cost at 80,000 q/s
SLOTS = 128          # keys per table
WINDOW = 60.0        # seconds: counts halve every WINDOW / 2
FIELDS = ("queries", "hits", "nxdomain", "servfail", "refused", "walk_steps", "tcp", "storm")
_Q, _HITS, _NX, _SERVFAIL, _REFUSED, _WALK, _TCP, _STORM = range(8)
_RCODES = {NXDOMAIN: "NXDOMAIN", SERVFAIL: "SERVFAIL", REFUSED: "REFUSED"}
_FIELD_OF = {NXDOMAIN: _NX, SERVFAIL: _SERVFAIL, REFUSED: _REFUSED}


class SpaceSaving:
    """At most ``slots`` keys, each with [count, error, *fields]; ``counts``
    mirrors each count so that the smallest is found by one C-level min
    (a new key in a full table: ~3 µs at 128 slots)."""

    def __init__(self, slots: int = SLOTS, fields: int = 0):
        self.slots, self.fields = slots, fields
        self.table: dict = {}
        self.counts: dict = {}

    def add(self, key, n: int = 1) -> list:
        rec = self.table.get(key)
        if rec is None:
            floor = 0
            if len(self.table) >= self.slots:
                counts = self.counts
                smallest = min(counts, key=counts.__getitem__)
                del self.table[smallest]
                floor = counts.pop(smallest)
            rec = self.table[key] = [floor, floor] + [0] * self.fields
        rec[0] += n
        self.counts[key] = rec[0]
        return rec

    def decay(self) -> None:
        for key in [k for k, rec in self.table.items() if rec[0] <= 1]:
            del self.table[key]
            del self.counts[key]
        for key, rec in self.table.items():
            for i in range(len(rec)):
                rec[i] //= 2
            self.counts[key] = rec[0]

    def ranked(self, limit: int) -> list:
        return sorted(self.table.items(), key=lambda item: -item[1][0])[:limit]


class Top:
    def __init__(self, slots: int = SLOTS, window: float = WINDOW, clock=time.monotonic):
        self.window, self.clock = window, clock
        self.pod_name = None  # address -> "namespace/pod" or None (observe.podnames, -pod-names)
        self.clients = SpaceSaving(slots, len(FIELDS))
        self.names = SpaceSaving(slots)
        self.failing = SpaceSaving(slots)
        self.next_decay = clock() + window / 2

    # -- feeding ----------------------------------------------------------------
    def _client(self, client, n: int = 1) -> list:
        now = self.clock()
        if now >= self.next_decay:
            for table in (self.clients, self.names, self.failing):
                table.decay()
            self.next_decay = now + self.window / 2
        return self.clients.add(client, n)

    # ``key``: the question's cache key (dns.key), as the query path scanned
    # it; None when the query is not of the common shape (then no name)
    def hit(self, client, key: bytes | None, proto: str, n: int = SAMPLE) -> None:
        """A sampled cache hit of ``client`` (weighing ``n`` queries)."""
        rec = self._client(client, n)
        rec[2 + _Q] += n
        rec[2 + _HITS] += n
        if proto == "tcp":
            rec[2 + _TCP] += n
        if key is not None:
            self.names.add(key[:-TRAILER], n)

    def miss(self, client, key: bytes | None, proto: str) -> None:
        rec = self._client(client)
        rec[2 + _Q] += 1
        if proto == "tcp":
            rec[2 + _TCP] += 1
        if key is not None:
            self.names.add(key[:-TRAILER])

    def refused(self, client, key: bytes | None, proto: str) -> None:
        """A query refused by admission (it counts as a query and a refusal)."""
        self.miss(client, key, proto)
        self.clients.table[client][2 + _REFUSED] += 1
        self._failed(client, key, REFUSED)

    def storm(self, client) -> None:
        """A query of a storm, answered at the node (server.storms)."""
        rec = self._client(client)
        rec[2 + _Q] += 1
        rec[2 + _STORM] += 1

    def answered(self, client, key: bytes | None, reply: bytes | None) -> None:
        """The reply to one of ``client``'s misses (its RCODE is what counts)."""
        if reply is None or len(reply) < 4:
            return
        rcode = reply[3] & 0xF
        if rcode not in _RCODES:
            return
        rec = self.clients.table.get(client)
        if rec is not None:
            rec[2 + _FIELD_OF[rcode]] += 1
            if rcode == NXDOMAIN and key is not None and b"\x03svc" in key:
                rec[2 + _WALK] += 1
        self._failed(client, key, rcode)

    def _failed(self, client, key: bytes | None, rcode: int) -> None:
        if key is not None:
            self.failing.add((client, key[:-TRAILER], _RCODES[rcode]))

    # -- reading ----------------------------------------------------------------
    def snapshot(self, limit: int = 50) -> dict:
        clients = []
        for client, rec in self.clients.ranked(limit):
            row = {"client": self._label(client), "queries": rec[2 + _Q]}
            if row["client"] != _label(client):
                row["address"] = _label(client)
            row.update({f: rec[2 + i] for i, f in enumerate(FIELDS) if f not in ("queries", "hits")})
            row["hit_ratio"] = round(rec[2 + _HITS] / rec[2 + _Q], 3) if rec[2 + _Q] else 0.0
            row["error"] = rec[1]
            clients.append(row)
        names = [{"name": decode_name(name), "queries": rec[0], "error": rec[1]}
                 for name, rec in self.names.ranked(limit)]
        failing = [{"client": self._label(c), "name": decode_name(name), "rcode": rcode, "count": rec[0]}
                   for (c, name, rcode), rec in self.failing.ranked(limit)]
        return {"window_s": self.window, "sample": SAMPLE, "slots": self.clients.slots,
                "clients": clients, "names": names, "failing": failing}


    def _label(self, client) -> str:
        named = self.pod_name(client) if self.pod_name is not None and isinstance(client, str) else None
        return named or _label(client)


def _label(client) -> str:
    return f"{client[0]}:{client[1]}" if isinstance(client, tuple) else str(client)
