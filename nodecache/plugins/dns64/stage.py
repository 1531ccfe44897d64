"""The ``dns64`` stage (RFC 6147, as CoreDNS's dns64): an AAAA question
from an IPv6 client (any client with ``allow_ipv4``) whose answer is
NOERROR without AAAA records (or any NOERROR answer with
``translate_all``) is asked again as A through the rest of the chain, and
each A record becomes an AAAA record inside the prefix (RFC 6052 §2.2:
the IPv4 address embedded, skipping bits 64-71); CNAMEs are kept. If the
A question has no address either, the original answer stands.

It is before the cache in the chain and must see every AAAA answer, the
cached ones too: it declares no shortcut, so a block with dns64 answers
its hits through the chain.
"""
from __future__ import annotations

import ipaddress

from dnslib import AAAA, QTYPE, RR, DNSRecord

from ...dns.key import name as key_name
from ...dns.wire import CD, NOERROR, RD, make_query, parse_query
from ..answer import reply
from ..chain import Answer, Request, Stage, render
from .setup import Dns64Config


def synthesize(prefix: ipaddress.IPv6Network, v4: str) -> str:
    """RFC 6052 §2.2: the IPv4 address in the prefix (u octet, bits 64-71, zero)."""
    plen, addr = prefix.prefixlen, int(ipaddress.IPv4Address(v4))
    base = int(prefix.network_address)
    if plen == 96:
        return str(ipaddress.IPv6Address(base | addr))
    v4_bytes = addr.to_bytes(4, "big")
    out = bytearray(prefix.network_address.packed)
    at = plen // 8
    for b in v4_bytes:
        if at == 8:  # the u octet
            at += 1
        out[at] = b
        at += 1
    return str(ipaddress.IPv6Address(bytes(out)))


class Dns64Stage(Stage):
    name = "dns64"

    def __init__(self, cfg: Dns64Config):
        self.cfg = cfg
        self.translated = 0

    def _wanted(self, request: Request) -> bool:
        q = request.query
        if q.qtype != QTYPE.AAAA or q.qclass != 1 or request.proto == "internal":
            return False
        if self.cfg.allow_ipv4:
            return True
        host = str(request.client[0]) if request.client else ""
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        return ip.version == 6 and ip.ipv4_mapped is None

    async def handle(self, request: Request) -> Answer:
        answer = await self.next(request)
        if not self._wanted(request) or answer.rcode != NOERROR:
            return answer
        q = request.query
        wire = render(request, answer)
        rec = DNSRecord.parse(wire)
        if not self.cfg.translate_all and any(rr.rtype == QTYPE.AAAA for rr in rec.rr):
            return answer
        a_question = key_name(q.key) + QTYPE.A.to_bytes(2, "big") + b"\x00\x01"
        a_query = parse_query(make_query(0, a_question, RD | (q.flags & CD), q.edns))
        a_request = Request(a_query, "internal", request.client, request.started)
        a_wire = render(a_request, await self.next(a_request))
        a_rec = DNSRecord.parse(a_wire)
        addrs = [rr for rr in a_rec.rr if rr.rtype == QTYPE.A]
        if not addrs:
            return answer
        rrs = [rr for rr in a_rec.rr if rr.rtype != QTYPE.A] + [
            RR(rr.rname, QTYPE.AAAA, ttl=rr.ttl, rdata=AAAA(synthesize(self.cfg.prefix, str(rr.rdata))))
            for rr in addrs]
        self.translated += 1
        return Answer(NOERROR, wire=reply(q, NOERROR, rrs, authoritative=False), plugin=answer.plugin or "dns64")
