"""Replies written by the plugins that answer on their own (hosts,
template, whoami): a header for the client's query, the client's question
bytes as they came (RFC 1035 §7.3: its ID, its case), the records, and an
OPT record when the query had one (RFC 6891 §7). Slow path only: records
are dnslib RRs, packed once per reply.
"""
from __future__ import annotations

from dnslib import DNSHeader, DNSQuestion, DNSRecord, RR

from ..dns.wire import AA, CD, OPT_DO, OPT_PLAIN, QR, RA, RD, Query, decode_name


def reply(q: Query, rcode: int = 0, answer: tuple[RR, ...] | list = (), authority=(), additional=(),
          authoritative: bool = True) -> bytes:
    """The wire reply to ``q`` carrying these records."""
    rec = DNSRecord(DNSHeader(id=0, qr=1), q=DNSQuestion(decode_name(q.qname.lower()), q.qtype, q.qclass))
    for rr in answer:
        rec.add_answer(rr)
    for rr in authority:
        rec.add_auth(rr)
    for rr in additional:
        rec.add_ar(rr)
    wire = rec.pack()
    flags = QR | (AA if authoritative else 0) | RA | (q.flags & (RD | CD)) | (rcode & 0xF)
    counts = bytearray(wire[4:12])
    opt = b""
    if q.edns >= 0:
        opt = OPT_DO if q.edns else OPT_PLAIN
        counts[6:8] = (int.from_bytes(counts[6:8], "big") + 1).to_bytes(2, "big")
    # the packed question has the client's length (only the case differs):
    # every compression pointer into it stays valid
    return q.data[:2] + flags.to_bytes(2, "big") + bytes(counts) + q.data[12:q.qend] + wire[q.qend:] + opt
