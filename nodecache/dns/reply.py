"""Reply side of the wire format: analyse an upstream reply once, pure bytes.

An upstream reply is read once, when it arrives, into a ``Reply``: its
header facts, its question (for validation), and its records after the
question as one byte string (the *tail*) with the offset of every TTL in it,
the OPT pseudo-record removed. Everything the cache does later is a byte
join over that tail, so no message is ever parsed twice.

Keeping the tail verbatim keeps name compression valid: pointers refer to
absolute offsets, and the reply we render has the same 12-byte header and a
question of the same length (the client's name differs from upstream's at
most in letter case), so every pointer still lands on the same name. The
OPT record is removed only when it is the last record, where no pointer can
refer past it; an upstream that puts records after its OPT is rejected.
"""
from __future__ import annotations

from typing import NamedTuple

from .wire import QR, TC, TYPE_OPT, TYPE_SOA


class MalformedReply(ValueError):
    """The upstream sent something that is not a usable DNS reply."""


class Reply(NamedTuple):
    flags: int
    rcode: int            # with EDNS extended bits (RFC 6891 §6.1.3)
    qkey: bytes           # lower-cased qname + qtype + qclass
    qend: int
    counts: tuple[int, int, int]  # answer, authority, additional (OPT excluded)
    tail: bytes           # records after the question, OPT removed
    ttl_offsets: tuple[int, ...]  # offsets of TTL fields inside tail
    ttls: tuple[int, ...]
    min_ttl: int | None   # lowest TTL over answer + authority
    negative_ttl: int | None  # RFC 2308 §5: min(SOA TTL, SOA MINIMUM)
    do: int = -1          # DO bit of the reply's OPT, -1 without OPT
    cacheable: bool = True  # False: pass on to the client, never store

    # A NamedTuple, not a frozen dataclass: one is built per cache miss, and a
    # frozen dataclass pays an object.__setattr__ per field to build.

    @property
    def truncated(self) -> bool:
        return bool(self.flags & TC)

    @property
    def answers(self) -> int:
        return self.counts[0]


def _name_end(data: bytes, i: int, limit: int) -> int:
    """Offset just past a (possibly compressed) name at i. Pointers are not
    followed: we only need the extent, which ends at the first pointer."""
    for _ in range(128):  # a name has at most 127 labels
        if i >= limit:
            raise MalformedReply("name runs past the message")
        length = data[i]
        if length == 0:
            return i + 1
        if length & 0xC0 == 0xC0:
            if i + 2 > limit:
                raise MalformedReply("truncated compression pointer")
            return i + 2
        if length & 0xC0:
            raise MalformedReply("reserved label type")
        i += length + 1
    raise MalformedReply("name has too many labels")


def _u16(data: bytes, i: int) -> int:
    return data[i] << 8 | data[i + 1]


def _u32(data: bytes, i: int) -> int:
    return int.from_bytes(data[i:i + 4], "big")


def analyse(data: bytes) -> Reply:
    """Read an upstream reply. Raises MalformedReply for anything unusable."""
    n = len(data)
    if n < 12:
        raise MalformedReply("shorter than a DNS header")
    flags = _u16(data, 2)
    if not flags & QR:
        raise MalformedReply("QR bit not set")
    qd, an, ns, ar = _u16(data, 4), _u16(data, 6), _u16(data, 8), _u16(data, 10)
    if qd != 1:
        raise MalformedReply(f"qdcount {qd}")
    i = _name_end(data, 12, n)
    if data[i - 1] != 0 or i + 4 > n:
        raise MalformedReply("bad question")
    qend = i + 4
    qkey = data[12:i].lower() + data[i:qend]
    offsets, ttls = [], []
    negative = []  # offsets (in data) of TTLs with the top bit set
    min_ttl = negative_ttl = None
    rcode = flags & 0xF
    opt_at = None
    do = -1
    i = qend
    for index in range(an + ns + ar):
        start = i
        i = _name_end(data, i, n)
        if i + 10 > n:
            raise MalformedReply("record header truncated")
        rtype = data[i] << 8 | data[i + 1]
        ttl = data[i + 4] << 24 | data[i + 5] << 16 | data[i + 6] << 8 | data[i + 7]
        rdlen = data[i + 8] << 8 | data[i + 9]
        rdata = i + 10
        if rdata + rdlen > n:
            raise MalformedReply("record data truncated")
        if rtype == TYPE_OPT:
            if index < an + ns or opt_at is not None:
                raise MalformedReply("misplaced or repeated OPT")
            opt_at = start
            rcode |= data[i + 4] << 4
            do = data[i + 6] >> 7
        else:
            if ttl & 0x80000000:
                ttl = 0  # RFC 2181 §8: a TTL with the top bit set is treated as zero
                negative.append(i + 4)
            offsets.append(i + 4 - qend)
            ttls.append(ttl)
            if index < an + ns:
                min_ttl = ttl if min_ttl is None else min(min_ttl, ttl)
            if rtype == TYPE_SOA and an <= index < an + ns:
                negative_ttl = min(ttl, _soa_minimum(data, rdata, rdata + rdlen))
        i = rdata + rdlen
    if i != n:
        raise MalformedReply(f"{n - i} bytes after the last record")
    if opt_at is not None and opt_at != _last_record_start(offsets, qend, opt_at):
        raise MalformedReply("records after OPT")
    tail = data[qend:opt_at] if opt_at is not None else data[qend:]
    if negative:  # ... and sent on as zero, cached or not (RFC 2181 §8)
        fixed = bytearray(tail)
        for at in negative:
            fixed[at - qend:at - qend + 4] = b"\x00\x00\x00\x00"
        tail = bytes(fixed)
    return Reply(flags, rcode, qkey, qend, (an, ns, ar - (opt_at is not None)),
                 tail, tuple(offsets), tuple(ttls), min_ttl, negative_ttl, do)


def _last_record_start(offsets: list[int], qend: int, opt_at: int) -> int:
    # OPT is last iff no TTL offset lies beyond it.
    return opt_at if not offsets or offsets[-1] + qend < opt_at else -1


def _soa_minimum(data: bytes, start: int, end: int) -> int:
    i = _name_end(data, start, end)  # MNAME
    i = _name_end(data, i, end)      # RNAME
    if i + 20 != end:
        raise MalformedReply("bad SOA rdata")
    return _u32(data, i + 16)
