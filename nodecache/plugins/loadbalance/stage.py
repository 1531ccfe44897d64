"""The ``loadbalance`` stage: shuffle the A, AAAA and MX records of every
answer (CoreDNS's round_robin), other records (a CNAME chain) first in
their order, so clients that take the first address spread over all.

Every answer means cached ones too: the stage declares no shortcut, so a
block with *loadbalance* answers its hits through the chain (the cost of
this plugin: see bench/RESULTS.md), and nothing is memoised there.
"""
from __future__ import annotations

import random

from dnslib import QTYPE, DNSRecord

from ..chain import Answer, Request, Stage, render

SHUFFLED = (QTYPE.A, QTYPE.AAAA, QTYPE.MX)


def shuffle(wire: bytes, rng=random) -> bytes:
    try:
        rec = DNSRecord.parse(wire)
    except Exception:  # not ours to judge: pass it on as it is
        return wire
    moving = [rr for rr in rec.rr if rr.rtype in SHUFFLED]
    if len(moving) < 2:
        return wire
    rng.shuffle(moving)
    rec.rr = [rr for rr in rec.rr if rr.rtype not in SHUFFLED] + moving
    return wire[:2] + rec.pack()[2:]


class LoadbalanceStage(Stage):
    name = "loadbalance"

    async def handle(self, request: Request) -> Answer:
        answer = await self.next(request)
        wire = render(request, answer)
        return Answer(answer.rcode, wire=shuffle(wire), plugin=answer.plugin)
