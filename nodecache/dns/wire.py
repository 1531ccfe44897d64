"""Query side of the wire format: pure functions over bytes, no I/O.

Two readers of an incoming query exist on purpose:

* ``scan`` is the hot path. It accepts only the shape almost every stub
  resolver sends (QUERY opcode, one question, no answer/authority records,
  optionally one EDNS0 OPT of version 0 and nothing after it) and returns
  what the cache needs, reading the bytes in place. Anything else returns
  ``None`` and the caller takes the slow path.
* ``parse_query`` is the slow path. It accepts everything RFC 1035/6891
  allow, and for what it cannot accept it says which error the RFC asks
  for, so the transport can answer FORMERR/NOTIMP/REFUSED/BADVERS or drop.

Both produce the same cache key (``dns.key``) for the same query (a
property the tests check over generated queries).
"""
from __future__ import annotations

from typing import NamedTuple

from .key import BITS as KEY_BITS, NO_EDNS, TRAILER as KEY_TRAILER, bits as key_bits

# RCODEs (RFC 1035 §4.1.1, RFC 6891 §9 for BADVERS's extended value).
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
OPCODE_MASK = 0x7800

TYPE_SOA, TYPE_OPT = 6, 41
TYPE_IXFR, TYPE_AXFR = 251, 252
CLASS_IN = 1

# Our EDNS0 UDP payload size: the DNS flag day 2020 value, small enough to
# avoid IP fragmentation on any real path.
EDNS_SIZE = 1232
PLAIN_UDP_LIMIT = 512  # RFC 1035 §4.2.1, a client without OPT
MAX_MESSAGE = 65535

_COUNTS_PLAIN = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_COUNTS_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"


def opt_record(do: bool) -> bytes:
    """Our OPT pseudo-RR (RFC 6891 §6.1.2): root name, our size, DO echoed (RFC 3225 §3)."""
    return b"\x00\x00\x29" + EDNS_SIZE.to_bytes(2, "big") + (
        b"\x00\x00\x80\x00\x00\x00" if do else b"\x00\x00\x00\x00\x00\x00")


OPT_PLAIN, OPT_DO = opt_record(False), opt_record(True)


def udp_limit(has_opt: bool, size: int) -> int:
    """Largest UDP reply a client can take: 512 without OPT, else its size,
    at least 512 (RFC 6891 §6.2.3) and at most our own 1232."""
    if not has_opt:
        return PLAIN_UDP_LIMIT
    return min(max(size, PLAIN_UDP_LIMIT), EDNS_SIZE)


def scan(data: bytes):
    """Hot-path reader. Returns ``(key, qend, flags, limit, edns)`` or None.

    ``qend`` is the offset just past the question, ``edns`` the client's EDNS
    state (``dns.key``: NO_EDNS, EDNS or EDNS_DO, i.e. -1 or the DO bit),
    ``limit`` the client's UDP limit.

    The name ends at the first zero byte after the header: found by one C
    call instead of a walk over the labels. For a name with a zero inside a
    label (legal, never seen in practice) this cuts the name short, and the
    cut key is not a well-formed name, so it can never equal a stored key
    (every stored key comes from ``parse_query``, which walks the labels;
    lower-casing cannot turn a length octet, always < 64, into anything
    else). Such a query costs a cache miss and takes the slow path.
    """
    if len(data) < 17 or data[2] & 0xF8:  # QR set or opcode != QUERY
        return None
    z = data.find(0, 12)
    qend = z + 5
    n = len(data)
    counts = data[4:12]
    if counts == _COUNTS_PLAIN:
        if qend != n or z < 12:
            return None
        return (data[12:z + 1].lower() + data[z + 1:qend] + KEY_BITS[(data[3] >> 4) & 1],
                qend, data[2] << 8 | data[3], PLAIN_UDP_LIMIT, NO_EDNS)
    if counts != _COUNTS_OPT or z < 12:
        return None
    # One OPT of version 0 ending the message exactly (RFC 6891 §6.1.1).
    if n < qend + 11 or data[qend:qend + 3] != b"\x00\x00\x29" or data[qend + 6]:
        return None
    if qend + 11 + (data[qend + 9] << 8 | data[qend + 10]) != n:
        return None
    do = data[qend + 7] >> 7
    return (data[12:z + 1].lower() + data[z + 1:qend] + KEY_BITS[do << 1 | (data[3] >> 4) & 1],
            qend, data[2] << 8 | data[3], udp_limit(True, data[qend + 3] << 8 | data[qend + 4]), do)


class QueryError(Exception):
    """A query we must answer with an error RCODE, or drop (rcode None)."""

    def __init__(self, rcode: int | None, reason: str, qend: int = 0, edns: int = NO_EDNS):
        super().__init__(reason)
        self.rcode = rcode
        self.reason = reason
        self.qend = qend  # >0 when the question is intact and can be echoed
        self.edns = edns


class Query(NamedTuple):
    """A fully parsed query (slow path). A NamedTuple: cheap to build per miss."""
    data: bytes
    flags: int
    qend: int          # end of the question section
    qname: bytes       # wire name as the client sent it (its case)
    qtype: int
    qclass: int
    edns: int          # -1 no OPT, else DO bit
    limit: int         # UDP reply limit
    key: bytes

    @property
    def qid(self) -> bytes:
        return self.data[:2]

    @property
    def question(self) -> bytes:
        return self.data[12:self.qend]

    @property
    def cd(self) -> bool:
        return bool(self.flags & CD)


def refusal(qtype: int, qclass: int) -> int | None:
    """The one decision on which questions this cache serves: None for a
    question it may forward and cache, else the RCODE to answer. OPT is not
    a question (FORMERR, RFC 6891 §6.1.1); a cache serves no zone transfers
    and only the Internet class (REFUSED: a policy refusal, RFC 1035 §4.1.1).
    Every path that sends a question upstream or stores an answer asks this
    (through ``parse_query``, ``scan_servable`` or ``servable_key``)."""
    if qclass != CLASS_IN or qtype in (TYPE_OPT, TYPE_AXFR, TYPE_IXFR):
        return FORMERR if qtype == TYPE_OPT else REFUSED
    return None


def servable_key(key: bytes) -> bool:
    """Whether a cache key (``dns.key``) names a question this cache may
    forward and cache: a well-formed name ending exactly where the key's
    trailer starts, and a question ``refusal`` lets through. For keys that
    come from outside the query readers (a handed-over snapshot)."""
    end = len(key) - KEY_TRAILER
    try:
        if end < 1 or _read_qname(key, 0) != end:
            return False
    except QueryError:
        return False
    return refusal(key[end] << 8 | key[end + 1], key[end + 2] << 8 | key[end + 3]) is None


def _read_qname(data: bytes, i: int) -> int:
    """Offset past an uncompressed name starting at i; raises QueryError."""
    total = 0
    while True:
        if i >= len(data):
            raise QueryError(FORMERR, "question name runs past the message")
        length = data[i]
        if length == 0:
            return i + 1
        if length > 63:
            # A pointer or reserved label type has nothing to point back to in a question.
            raise QueryError(FORMERR, "compressed or invalid label in question")
        total += length + 1
        if total > 254:
            raise QueryError(FORMERR, "question name longer than 255 octets")
        i += length + 1


def question_end(data: bytes) -> int:
    """Offset just past the (uncompressed) question of message ``data``;
    raises QueryError."""
    return _read_qname(data, 12) + 4


def _skip_name(data: bytes, i: int) -> int:
    while True:
        if i >= len(data):
            raise QueryError(FORMERR, "record name runs past the message")
        length = data[i]
        if length == 0:
            return i + 1
        if length & 0xC0 == 0xC0:
            return i + 2
        if length > 63:
            raise QueryError(FORMERR, "invalid label type")
        i += length + 1


def parse_query(data: bytes) -> Query:
    """Slow-path reader. Returns a Query or raises QueryError saying how to answer."""
    if len(data) < 12:
        raise QueryError(None, "shorter than a DNS header")
    flags = data[2] << 8 | data[3]
    if flags & QR:
        raise QueryError(None, "a response, not a query")  # never answer answers
    qd, an, ns, ar = (int.from_bytes(data[k:k + 2], "big") for k in (4, 6, 8, 10))
    if qd != 1:
        raise QueryError(FORMERR, f"qdcount {qd}", 0, _edns_if_readable(data, 12, qd, an + ns, ar))
    qend = _read_qname(data, 12) + 4
    if qend > len(data):
        raise QueryError(FORMERR, "question truncated")
    if flags & OPCODE_MASK:
        raise QueryError(NOTIMP, f"opcode {(flags & OPCODE_MASK) >> 11}", qend,
                         _edns_if_readable(data, qend, 0, an + ns, ar))
    if an or ns:
        raise QueryError(FORMERR, "answer or authority records in a query", qend,
                         _edns_if_readable(data, qend, 0, an + ns, ar))
    qtype = int.from_bytes(data[qend - 4:qend - 2], "big")
    qclass = int.from_bytes(data[qend - 2:qend], "big")
    edns, size, version = _read_additional(data, qend, ar)
    if version:
        raise QueryError(BADVERS, f"EDNS version {version}", qend, edns)  # RFC 6891 §6.1.3
    rcode = refusal(qtype, qclass)
    if rcode is not None:
        raise QueryError(rcode, f"qtype {qtype} class {qclass} not served", qend, edns)
    cd = (flags >> 4) & 1
    lname_end = qend - 4
    return Query(data, flags, qend, data[12:lname_end], qtype, qclass, edns,
                 udp_limit(edns != NO_EDNS, size),
                 data[12:lname_end].lower() + data[lname_end:qend] + key_bits(max(edns, 0), cd))


def scan_servable(data: bytes, qend: int) -> bool:
    """Whether a query ``scan`` read (its question ending at ``qend``) is
    one ``query_from_scan`` makes a Query of: its labels end where scan's
    zero byte is, and ``refusal`` lets its type and class through. The
    direct miss asks only this (it needs no Query)."""
    try:
        if _read_qname(data, 12) != qend - 4:
            return False
    except QueryError:
        return False
    return refusal(data[qend - 4] << 8 | data[qend - 3], data[qend - 2] << 8 | data[qend - 1]) is None


def query_from_scan(data: bytes, scanned) -> Query | None:
    """The slow path's Query for a query ``scan`` already read, without
    parsing it again; None when only ``parse_query`` may decide (see
    ``scan_servable``)."""
    key, qend, flags, limit, edns = scanned
    if not scan_servable(data, qend):
        return None
    return Query(data, flags, qend, data[12:qend - 4], data[qend - 4] << 8 | data[qend - 3], CLASS_IN, edns,
                 limit, key)


def _edns_if_readable(data: bytes, i: int, questions: int, records: int, ar: int) -> int:
    """The client's EDNS state for an error reply to a query we refuse for
    another reason (RFC 6891 §6.1.1: a reply to a query with OPT carries
    OPT): the additional section after ``questions`` questions and
    ``records`` answer and authority records from ``i``. NO_EDNS when it
    cannot be read; then the reply goes without OPT, as to a broken OPT."""
    try:
        for _ in range(questions):
            i = _skip_name(data, i) + 4
        for _ in range(records):
            i = _skip_name(data, i)
            if i + 10 > len(data):
                return NO_EDNS
            i += 10 + int.from_bytes(data[i + 8:i + 10], "big")
        edns, _, version = _read_additional(data, i, ar)
    except QueryError:
        return NO_EDNS
    return edns if version == 0 else NO_EDNS


def _read_additional(data: bytes, i: int, count: int) -> tuple[int, int, int]:
    """Walk the additional section; returns (edns DO or -1, size, version)."""
    edns, size, version = -1, 0, 0
    for _ in range(count):
        i = _skip_name(data, i)
        if i + 10 > len(data):
            raise QueryError(FORMERR, "additional record truncated")
        rtype = int.from_bytes(data[i:i + 2], "big")
        rdlen = int.from_bytes(data[i + 8:i + 10], "big")
        if rtype == TYPE_OPT:
            if edns != NO_EDNS:
                raise QueryError(FORMERR, "more than one OPT")  # RFC 6891 §6.1.1
            size = int.from_bytes(data[i + 2:i + 4], "big")
            version = data[i + 5]
            edns = data[i + 6] >> 7
        i += 10 + rdlen
        if i > len(data):
            raise QueryError(FORMERR, "additional record data truncated")
    return edns, size, version


def error_reply(data: bytes, rcode: int, qend: int = 0, edns: int = -1) -> bytes:
    """An error reply to ``data``: ID, opcode, RD and CD echoed; the question
    echoed when intact; our OPT when the client sent one (carrying the
    upper bits of an extended RCODE such as BADVERS)."""
    flags = QR | RA | ((data[2] << 8 | data[3]) & (OPCODE_MASK | RD | CD)) | (rcode & 0xF)
    question = data[12:qend] if qend else b""
    header = data[:2] + flags.to_bytes(2, "big") + (b"\x00\x01" if qend else b"\x00\x00")
    if edns == NO_EDNS:
        return header + b"\x00\x00\x00\x00\x00\x00" + question
    opt = bytearray(OPT_DO if edns else OPT_PLAIN)
    opt[5] = rcode >> 4
    return header + b"\x00\x00\x00\x00\x00\x01" + question + bytes(opt)


def truncated_reply(data: bytes, qend: int, flags: int, edns: int) -> bytes:
    """TC=1 and no records, the other form RFC 2181 §9 allows (what
    ``dns.truncate.fit`` sends when not even the question fits, or the reply
    cannot be walked)."""
    header = data[:2] + (flags | TC).to_bytes(2, "big")
    if edns == NO_EDNS:
        return header + _COUNTS_PLAIN + data[12:qend]
    return header + _COUNTS_OPT + data[12:qend] + (OPT_DO if edns else OPT_PLAIN)


def make_query(qid: int, question: bytes, flags: int = RD, do: int = -1) -> bytes:
    """Build a query from raw question bytes (our upstream queries, tests, bench)."""
    if do < 0:
        return qid.to_bytes(2, "big") + flags.to_bytes(2, "big") + _COUNTS_PLAIN + question
    return (qid.to_bytes(2, "big") + flags.to_bytes(2, "big") + _COUNTS_OPT + question
            + (OPT_DO if do else OPT_PLAIN))


def encode_name(name: str) -> bytes:
    """Presentation name -> uncompressed wire name, reading RFC 1035 §5.1
    escapes (``\\DDD`` and ``\\X``), so ``decode_name``'s output comes back
    to the same bytes (a dot or any byte inside a label included). Raises
    ValueError."""
    if "\\" in name:
        parts = _escaped_labels(name)
    else:
        bare = name.rstrip(".")
        if not bare.isascii():
            raise ValueError(f"not an ASCII name: {name!r} (use its IDNA form)")
        parts = [label.encode("ascii") for label in bare.split(".")] if bare else []
    out = bytearray()
    for raw in parts:
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)


def _escaped_labels(name: str) -> list[bytes]:
    parts, label, i = [], bytearray(), 0
    while i < len(name):
        c = name[i]
        if c == "\\":
            digits = name[i + 1:i + 4]
            if len(digits) == 3 and digits.isdigit():
                if int(digits) > 255:
                    raise ValueError(f"bad escape \\{digits} in {name!r}")
                label.append(int(digits))
                i += 4
                continue
            if i + 1 >= len(name):
                raise ValueError(f"name ends in a backslash: {name!r}")
            c, i = name[i + 1], i + 1
        elif c == ".":
            parts.append(bytes(label))
            label = bytearray()
            i += 1
            continue
        if not c.isascii():
            raise ValueError(f"not an ASCII name: {name!r} (use its IDNA form)")
        label.append(ord(c))
        i += 1
    if label:
        parts.append(bytes(label))
    return parts


_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*/+=@#$%&!?~^:,;'`|<>[]{}()")


def decode_name(wire: bytes) -> str:
    """Uncompressed wire name -> presentation form with trailing dot. Any
    byte that is not printable, and ``.`` or ``\\`` inside a label, is
    escaped as ``\\DDD`` (RFC 1035 §5.1), so a name can never carry a
    newline or a control character into a log line."""
    return ".".join("".join(chr(b) if b in _PLAIN else f"\\{b:03d}" for b in label) for label in labels(wire)) + "."


def labels(wire: bytes) -> list[bytes]:
    """The labels of an uncompressed wire name, as bytes."""
    out, i = [], 0
    while i < len(wire) and wire[i]:
        out.append(wire[i + 1:i + 1 + wire[i]])
        i += wire[i] + 1
    return out


def question_bytes(name: str, qtype: int, qclass: int = CLASS_IN) -> bytes:
    return encode_name(name) + qtype.to_bytes(2, "big") + qclass.to_bytes(2, "big")
