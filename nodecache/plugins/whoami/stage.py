"""The ``whoami`` stage: tell a client its address, port and transport.

As CoreDNS's whoami: the answer section is empty; the additional section
holds an A (or AAAA) record of the client's address under the query name
and an SRV record ``_udp.NAME`` (or ``_tcp.NAME``) with its port, both
with TTL 0. It answers every query that reaches it; it is the end of the
chain, so it needs no shortcut declared (a block of whoami has no cache,
hence no hit path, and no forward, hence no direct miss).
"""
from __future__ import annotations

import ipaddress

from dnslib import AAAA, QTYPE, RR, SRV, A

from ...dns.wire import decode_name
from ..answer import reply
from ..chain import Answer, Request, Stage


class WhoamiStage(Stage):
    name = "whoami"

    async def handle(self, request: Request) -> Answer:
        q = request.query
        name = decode_name(q.qname)
        host = str(request.client[0]) if request.client else ""
        port = int(request.client[1]) if request.client and len(request.client) > 1 else 0
        extra = []
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            ip = None
        if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip is not None:
            if ip.version == 6:
                extra.append(RR(name, QTYPE.AAAA, ttl=0, rdata=AAAA(str(ip))))
            else:
                extra.append(RR(name, QTYPE.A, ttl=0, rdata=A(str(ip))))
        proto = "tcp" if request.proto == "tcp" else "udp"
        extra.append(RR(f"_{proto}.{name}", QTYPE.SRV, ttl=0, rdata=SRV(0, 0, port, name)))
        return Answer(0, wire=reply(q, 0, additional=extra), plugin="whoami")
