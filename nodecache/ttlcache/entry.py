"""A cached reply, ready to be rendered for any client asking the same question.

An entry keeps the upstream reply's records after the question (the tail,
see ``dns.reply``) and where each TTL sits in it: one copy of the records,
nothing else of size. Rendering for a client is the client's ID, our flags
and the counts (the *head*), the client's own question bytes (its letter
case, RFC 4343 / 0x20), the tail, and our OPT if it sent one: one join of
existing byte strings.

TTLs count down: every record shows ``min(original, entry TTL) - age``
(RFC 1035 §7.1 / RFC 2181 §8: what a cache hands out must not outlive what
it holds). The tail is re-rendered at most once per second of age, in
place of the old one (only TTL bytes change, so the tail is its own
template).

Heads depend only on the entry's flags and counts and on the kind of
client (RD/CD/AD bits, with or without OPT), so they live in a ``Shape``
shared by every entry with the same flags and counts: thousands of
entries answering one A record share one table of a few heads.
"""
from __future__ import annotations

import struct
from array import array

from ..dns.key import EDNS_DO, NO_EDNS
from ..dns.reply import Reply
from ..dns.wire import AD, CD, OPT_DO, OPT_PLAIN, RD, TC

SUCCESS, DENIAL, SERVFAIL_KIND = 0, 1, 2
KIND_NAMES = ("success", "denial", "servfail")
STALE_TTL = 30  # RFC 8767 §4: stale answers carry a TTL of 30 seconds
_ECHO = RD | CD
_VARIANT = RD | CD | AD  # client flag bits that change our header; edns + 1 (0..2) fits below
_OPT = (b"", OPT_PLAIN, OPT_DO)  # what follows the tail, by the client's edns + 1
MAX_SHAPES = 4096  # beyond this (an upstream inventing counts), entries get a private shape
# Bytes an entry costs beyond its key and tail, and per record (its TTL
# offset and value), as tracemalloc measures them (tests/unit/test_entry_size):
# the cache's byte budget counts with these.
ENTRY_OVERHEAD = 400
PER_RECORD_SMALL, PER_RECORD_ARRAY, SMALL_RECORDS = 48, 6, 8


_TTL = struct.Struct(">I")
_pack_ttl, _pack_ttl_into = _TTL.pack, _TTL.pack_into


def ttls_aged(tail: bytes, base: int, offsets, ttls, age: int) -> bytes:
    """``tail`` with the TTL at ``base`` + each offset set to its original
    less ``age``, never below 0 (RFC 2181 §8). One record, what most answers
    carry, is two slices and a join; more are patched in one copy."""
    if len(offsets) == 1:
        at, ttl = base + offsets[0], ttls[0]
        return b"".join((tail[:at], _pack_ttl(ttl - age if ttl > age else 0), tail[at + 4:]))
    out = bytearray(tail)
    for off, ttl in zip(offsets, ttls):
        _pack_ttl_into(out, base + off, ttl - age if ttl > age else 0)
    return bytes(out)


def _compact(values, typecode: str):
    """A few values as a tuple (cheapest to iterate), many as a packed array
    (an int object per value would cost 28+ bytes each)."""
    return tuple(values) if len(values) <= SMALL_RECORDS else array(typecode, values)


class Shape:
    """Flags and counts shared by many entries, and their memoised heads."""
    __slots__ = ("flags", "counts", "heads")

    def __init__(self, flags: int, counts: tuple[int, int, int]):
        self.flags = flags
        self.counts = counts
        self.heads: dict[int, bytes] = {}

    def head(self, qflags: int, edns: int) -> bytes:
        variant = (qflags & _VARIANT) | (edns + 1)
        head = self.heads.get(variant)
        if head is None:
            flags = self.flags | (qflags & _ECHO)
            if flags & AD and not (qflags & AD or edns == EDNS_DO):
                flags ^= AD  # RFC 6840 §5.8: AD only to clients that asked with AD or DO
            an, ns, ar = self.counts
            head = self.heads[variant] = (flags.to_bytes(2, "big") + b"\x00\x01" + an.to_bytes(2, "big")
                                          + ns.to_bytes(2, "big") + (ar + (edns != NO_EDNS)).to_bytes(2, "big"))
        return head


_shapes: dict[tuple[int, tuple[int, int, int]], Shape] = {}


def shape_for(flags: int, counts: tuple[int, int, int]) -> Shape:
    shape = _shapes.get((flags, counts))
    if shape is None:
        shape = Shape(flags, counts)
        if len(_shapes) < MAX_SHAPES:
            _shapes[(flags, counts)] = shape
    return shape


class Entry:
    __slots__ = ("key", "kind", "shape", "offsets", "ttls", "tail", "stored", "ttl", "expires", "age",
                 "next_tick", "last_hit", "streak", "refreshing", "visited", "cached")

    def __init__(self, key: bytes, reply: Reply, kind: int, ttl: int, now: float):
        self.key = key
        self.kind = kind
        # Header we send: QR, RA, upstream's AD and RCODE; AA cleared since a
        # cache is not authoritative; RD and CD come from each client. TC is
        # kept for an uncached truncated reply (never cached) so that the
        # client retries over TCP (RFC 7766 §5).
        self.shape = shape_for(0x8080 | (reply.flags & (AD | TC | 0xF)), reply.counts)
        self.offsets = _compact(reply.ttl_offsets, "H")  # < 64 KiB: offsets inside one message
        self.stored = now
        self.ttl = ttl
        self.expires = now + ttl
        self.age = 0
        self.next_tick = now + 1
        self.tail = reply.tail
        ttls = reply.ttls
        if ttls and max(ttls) > ttl:  # no record is served with more than the entry's TTL
            ttls = [min(t, ttl) for t in ttls]
        self.ttls = _compact(ttls, "I")
        if ttls is not reply.ttls:
            self.tail = ttls_aged(self.tail, 0, self.offsets, self.ttls, 0)
        self.last_hit = now
        self.streak = 0
        self.refreshing = False
        self.visited = False  # second chance on eviction (see ttlcache.store)
        self.cached = False   # in a cache's tables now (ttlcache.store sets and clears it)

    @property
    def flags(self) -> int:
        return self.shape.flags

    @property
    def size(self) -> int:
        """What the entry costs, for the cache's byte budget."""
        n = len(self.offsets)
        return (ENTRY_OVERHEAD + len(self.key) + len(self.tail)
                + n * (PER_RECORD_SMALL if n <= SMALL_RECORDS else PER_RECORD_ARRAY))

    def remaining(self, now: float) -> float:
        return self.expires - now

    def age_at(self, now: float) -> tuple[int, float]:
        """Whole seconds since stored at ``now``, and when that next changes."""
        age = int(now - self.stored)
        return age, self.stored + age + 1

    def tick(self, now: float) -> None:
        """Bring the tail's TTLs to the age at ``now`` (at most once a second)."""
        age, self.next_tick = self.age_at(now)
        if age != self.age:
            self.age = age
            self.tail = ttls_aged(self.tail, 0, self.offsets, self.ttls, age)

    def render(self, data: bytes, qend: int, qflags: int, edns: int, now: float) -> bytes:
        """The reply to query ``data`` (whose question ends at qend)."""
        if now >= self.next_tick:
            self.tick(now)
        shape = self.shape
        head = shape.heads.get((qflags & _VARIANT) | (edns + 1)) or shape.head(qflags, edns)
        return b"".join((data[:2], head, data[12:qend], self.tail, _OPT[edns + 1]))

    def render_stale(self, data: bytes, qend: int, qflags: int, edns: int) -> bytes:
        """Same reply with every TTL at STALE_TTL (RFC 8767 §4)."""
        tail = bytearray(self.tail)
        for off in self.offsets:
            tail[off:off + 4] = STALE_TTL.to_bytes(4, "big")
        return b"".join((data[:2], self.shape.head(qflags, edns), data[12:qend], bytes(tail), _OPT[edns + 1]))


def render_uncached(reply: Reply, data: bytes, qend: int, qflags: int, edns: int) -> bytes:
    """Render an upstream reply that is not cached (REFUSED, truncated, ...)."""
    return Entry(b"", reply, SUCCESS, 0x7FFFFFFF, 0.0).render(data, qend, qflags, edns, 0.0)
