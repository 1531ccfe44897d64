"""A cached reply, ready to be rendered for any client asking the same question.

An entry keeps the upstream reply's records after the question (the tail,
see ``dns.reply``) and where each TTL sits in it. Rendering for a client is
the client's ID, our flags, the counts, the client's own question bytes
(its letter case, RFC 4343 / 0x20), the tail, and our OPT if it sent one.

TTLs count down: every record shows ``min(original, entry TTL) - age``
(RFC 1035 §7.1 / RFC 2181 §8: what a cache hands out must not outlive what
it holds). The tail is re-rendered at most once per second of age and
memoised, and so is the header for each kind of client (RD/CD/AD bits,
with or without OPT), so most hits are one join of existing byte strings.
"""
from __future__ import annotations

from ..dns.reply import Reply
from ..dns.wire import AD, CD, OPT_DO, OPT_PLAIN, RD, TC

SUCCESS, DENIAL, SERVFAIL_KIND = 0, 1, 2
KIND_NAMES = ("success", "denial", "servfail")
STALE_TTL = 30  # RFC 8767 §4: stale answers carry a TTL of 30 seconds
_ECHO = RD | CD
_VARIANT = RD | CD | AD  # client flag bits that change our header; edns + 1 (0..2) fits below


class Entry:
    __slots__ = ("key", "kind", "flags", "counts_plain", "counts_opt", "src", "offsets",
                 "ttls", "stored", "ttl", "expires", "age", "next_tick", "tail", "bodies",
                 "heads", "last_hit", "streak", "refreshing")

    def __init__(self, key: bytes, reply: Reply, kind: int, ttl: int, now: float):
        self.key = key
        self.kind = kind
        # Header we send: QR, RA, upstream's AD and RCODE; AA cleared since a
        # cache is not authoritative; RD and CD come from each client. TC is
        # kept for an uncached truncated reply (never cached) so that the
        # client retries over TCP (RFC 7766 §5).
        self.flags = 0x8080 | (reply.flags & (AD | TC | 0xF))
        an, ns, ar = reply.counts
        base = b"\x00\x01" + an.to_bytes(2, "big") + ns.to_bytes(2, "big")
        self.counts_plain = base + ar.to_bytes(2, "big")
        self.counts_opt = base + (ar + 1).to_bytes(2, "big")
        self.src = reply.tail
        self.offsets = reply.ttl_offsets
        self.ttls = tuple(min(t, ttl) for t in reply.ttls)
        self.stored = now
        self.ttl = ttl
        self.expires = now + ttl
        self.age = 0
        self.next_tick = now + 1
        self.tail = self._render_tail(0) if self.ttls != reply.ttls else reply.tail
        self.bodies = self._bodies(self.tail)
        # header (flags + counts) per client variant, see _head
        self.heads: dict[int, bytes] = {}
        self.last_hit = now
        self.streak = 0
        self.refreshing = False

    def _render_tail(self, age: int) -> bytes:
        tail = bytearray(self.src)
        for off, ttl in zip(self.offsets, self.ttls):
            tail[off:off + 4] = (ttl - age if ttl > age else 0).to_bytes(4, "big")
        return bytes(tail)

    def remaining(self, now: float) -> float:
        return self.expires - now

    @staticmethod
    def _bodies(tail: bytes) -> list:
        """What follows the question, indexed by the client's edns + 1; the
        variants with our OPT are built on first use (most clients send
        OPT, but many entries are only ever asked one way)."""
        return [tail, None, None]

    def _body(self, edns: int) -> bytes:
        # edns is -1 (no OPT: the bare tail, always present), 0 or 1 (the DO bit).
        body = self.bodies[0] + (OPT_DO if edns == 1 else OPT_PLAIN)
        self.bodies[edns + 1] = body
        return body

    def render(self, data: bytes, qend: int, qflags: int, edns: int, now: float) -> bytes:
        """The reply to query ``data`` (whose question ends at qend)."""
        if now >= self.next_tick:
            age = int(now - self.stored)
            self.next_tick = self.stored + age + 1
            if age != self.age:
                self.age = age
                self.tail = self._render_tail(age)
                self.bodies = self._bodies(self.tail)
        head = self.heads.get((qflags & _VARIANT) | (edns + 1))
        if head is None:
            head = self._head(qflags, edns)
        body = self.bodies[edns + 1]
        if body is None:  # not truthiness: an empty tail (SERVFAIL, bare NODATA) is a valid body
            body = self._body(edns)
        return b"".join((data[:2], head, data[12:qend], body))

    def render_stale(self, data: bytes, qend: int, qflags: int, edns: int) -> bytes:
        """Same reply with every TTL at STALE_TTL (RFC 8767 §4)."""
        tail = bytearray(self.src)
        for off in self.offsets:
            tail[off:off + 4] = STALE_TTL.to_bytes(4, "big")
        body = bytes(tail) + (b"", OPT_PLAIN, OPT_DO)[edns + 1]
        return b"".join((data[:2], self._head(qflags, edns), data[12:qend], body))

    def _head(self, qflags: int, edns: int) -> bytes:
        """Flags and counts for a client with these flags and EDNS state; memoised."""
        flags = self.flags | (qflags & _ECHO)
        if flags & AD and not (qflags & AD or edns == 1):
            flags ^= AD  # RFC 6840 §5.8: AD only to clients that asked with AD or DO
        head = flags.to_bytes(2, "big") + (self.counts_plain if edns < 0 else self.counts_opt)
        self.heads[(qflags & _VARIANT) | (edns + 1)] = head
        return head


def render_uncached(reply: Reply, data: bytes, qend: int, qflags: int, edns: int) -> bytes:
    """Render an upstream reply that is not cached (REFUSED, truncated, ...)."""
    return Entry(b"", reply, SUCCESS, 0x7FFFFFFF, 0.0).render(data, qend, qflags, edns, 0.0)
