"""Fitting a reply into a client's UDP size: keep every whole record that fits.

A reply longer than the client's UDP limit (512 bytes without EDNS, its
advertised size with it; RFC 1035 §4.2.1, RFC 6891 §6.2.3) is sent with
TC=1. RFC 2181 §9 lets a server either drop every record or keep the ones
that fit; clients differ in what they can use. glibc, Go and dig retry
over TCP either way, but musl before 1.2.4 and busybox's nslookup never do:
they use what the truncated reply carries. CoreDNS (miekg/dns
``Msg.Truncate``), and so node-cache, keeps the records that fit, so that
is what a drop-in must do: the records are kept in wire order, answer
section first, stopping at the first one that does not fit (a later,
smaller one is not slipped in after a gap), and the client's OPT is kept
at the end with its room reserved (RFC 6891 §7).

Cutting after a whole record keeps name compression valid: a pointer
refers to a prior occurrence of a name (RFC 1035 §4.1.4), and everything
before the cut is kept byte for byte.

Pure bytes, no I/O. A reply this module cannot walk (it never happens to
replies we render, which come from analysed upstream replies) falls back to
the other RFC 2181 form: no records, TC=1.
"""
from __future__ import annotations

from .wire import TC, TYPE_OPT, truncated_reply

HEADER = 12


def _name_end(data: bytes, i: int) -> int:
    """Offset just past a (possibly compressed) name; raises IndexError or
    ValueError for one that runs past the message."""
    for _ in range(128):
        length = data[i]
        if length == 0:
            return i + 1
        if length & 0xC0 == 0xC0:
            return i + 2
        if length & 0xC0:
            raise ValueError("reserved label type")
        i += length + 1
    raise ValueError("name has too many labels")


def records(reply: bytes, qend: int):
    """(start, end, section, is_opt) for each record after the question,
    ``section`` 0/1/2 for answer/authority/additional. Raises ValueError
    for a message that does not hold its counts of records."""
    counts = (reply[6] << 8 | reply[7], reply[8] << 8 | reply[9], reply[10] << 8 | reply[11])
    out = []
    i, n = qend, len(reply)
    try:
        for section, count in enumerate(counts):
            for _ in range(count):
                start = i
                i = _name_end(reply, i)
                rtype = reply[i] << 8 | reply[i + 1]
                i += 10 + (reply[i + 8] << 8 | reply[i + 9])
                if i > n:
                    raise ValueError("record data runs past the message")
                out.append((start, i, section, rtype == TYPE_OPT))
    except IndexError:
        raise ValueError("record runs past the message") from None
    if i != n:
        raise ValueError("bytes after the last record")
    return out


def truncate(reply: bytes, limit: int, qend: int, empty: bytes) -> bytes:
    """``reply`` cut to at most ``limit`` bytes with TC=1: the header, the
    question, every whole record that fits (in order, up to the first that
    does not) and the reply's OPT record. ``empty`` is the no-record form,
    sent when the reply cannot be walked or when not even its question and
    OPT fit."""
    try:
        recs = records(reply, qend)
    except ValueError:
        return empty
    opt = b"".join(reply[s:e] for s, e, _, is_opt in recs if is_opt)
    room = limit - len(opt)
    kept = [0, 0, 0]
    end = qend
    for start, stop, section, is_opt in recs:
        if is_opt:
            continue
        if start != end or stop > room:
            # stop at the first record that does not fit, and never keep a
            # record after a gap (the OPT we take out stands only last)
            break
        kept[section] += 1
        end = stop
    if end > room:
        return empty
    flags = (reply[2] << 8 | reply[3]) | TC
    arcount = kept[2] + (1 if opt else 0)
    header = (reply[:2] + flags.to_bytes(2, "big") + reply[4:6] + kept[0].to_bytes(2, "big")
              + kept[1].to_bytes(2, "big") + arcount.to_bytes(2, "big"))
    return b"".join((header, reply[HEADER:end], opt))


def fit(reply: bytes, data: bytes, limit: int, qend: int, edns: int) -> bytes:
    """``reply`` to query ``data`` (its question ending at ``qend``, its
    EDNS state ``edns``), or its truncated form when longer than the
    client's ``limit``. A reply that fits is never touched."""
    if len(reply) <= limit:
        return reply
    return truncate(reply, limit, qend, truncated_reply(data, qend, reply[2] << 8 | reply[3], edns))
