"""The cache key: one ``bytes`` object naming a question and the query bits
that change its answer. Everything that takes a key apart does it here.

Layout::

    lower-cased wire QNAME | QTYPE (2) | QCLASS (2) | bits (1)

The name is lower-cased because names compare case-insensitively (RFC 4343
§3); the client's own spelling is echoed from its query, never from the
key. ``bits`` holds DO (bit 1, RFC 3225) and CD (bit 0, RFC 4035 §3.2.2):
an upstream answers differently for each, so each gets its own entry. AD
and RD do not change what is stored (only the header we render), and
neither does a client's EDNS buffer size.

A ``bytes`` key is hashed once (CPython caches a bytes object's hash) and
built on the hot path by one slice, one ``lower`` and one concatenation
(``dns.wire.scan``), which is why it is not a class.

A client's EDNS state is not part of the key, but it decides how a reply is
rendered for that client: ``NO_EDNS`` (no OPT record), ``EDNS`` (an OPT
without DO), ``EDNS_DO``. These are the ``edns`` values used throughout.
"""
from __future__ import annotations

NO_EDNS, EDNS, EDNS_DO = -1, 0, 1
TRAILER = 5  # QTYPE, QCLASS, bits
BITS = (b"\x00", b"\x01", b"\x02", b"\x03")  # the last byte, indexed by DO << 1 | CD


def bits(do: int, cd: int) -> bytes:
    """The key's last byte for a query with these DO and CD bits (0 or 1)."""
    return BITS[do << 1 | cd]


def make(lname: bytes, qtype: int, qclass: int = 1, do: int = 0, cd: int = 0) -> bytes:
    """The key for lower-cased wire name ``lname``."""
    return lname + qtype.to_bytes(2, "big") + qclass.to_bytes(2, "big") + BITS[do << 1 | cd]


def name(key: bytes) -> bytes:
    """The lower-cased wire QNAME."""
    return key[:-TRAILER]


def question(key: bytes) -> bytes:
    """The question's wire bytes (name, QTYPE, QCLASS), lower-cased: what a
    query for this key asks, and what a reply to it must echo (0x20 aside)."""
    return key[:-1]


def qtype(key: bytes) -> int:
    return key[-5] << 8 | key[-4]


def do(key: bytes) -> int:
    """1 if the key's queries set DO (DNSSEC records wanted), else 0."""
    return key[-1] >> 1


def cd(key: bytes) -> int:
    """1 if the key's queries set CD (checking disabled), else 0."""
    return key[-1] & 1


def edns(key: bytes) -> int:
    """The EDNS state a query we send for this key on our own behalf
    (a refresh) uses: DO keys need an OPT with DO, the others need none."""
    return EDNS_DO if key[-1] & 2 else NO_EDNS
