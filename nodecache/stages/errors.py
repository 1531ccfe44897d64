"""The ``errors`` stage: turns a failure further down the chain into SERVFAIL
and logs it in CoreDNS's format (``[ERROR] plugin/errors: 2 NAME. TYPE: why``).
Without this stage failures still become SERVFAIL, silently, as in CoreDNS.
"""
from __future__ import annotations

import logging

from dnslib import QTYPE

from ..dns.wire import SERVFAIL, decode_name
from ..forward.forwarder import ForwardFailure
from .base import Answer, Request, Stage

log = logging.getLogger("nodecache.errors")


class ErrorsStage(Stage):
    name = "errors"

    def __init__(self):
        self.logged = 0

    async def handle(self, request: Request) -> Answer:
        try:
            return await self.next(request)
        except ForwardFailure as exc:
            q = request.query
            self.logged += 1
            log.error("plugin/errors: %d %s %s: %s", SERVFAIL, decode_name(q.qname),
                      type_name(q.qtype), exc)
            return Answer(SERVFAIL, plugin="errors")


def type_name(qtype: int) -> str:
    return QTYPE.get(qtype, f"TYPE{qtype}")
