"""The ``errors`` stage: turns a failure further down the chain into SERVFAIL
and logs it in CoreDNS's format (``[ERROR] plugin/errors: 2 NAME. TYPE: why``).
Without this stage failures still become SERVFAIL, silently, as in CoreDNS.

The log is throttled (``Throttle``: a burst of 20 lines, then 5 a second):
a flood of failing queries must not become a flood of log lines. Lines held
back are counted and said in the next line that is written. Names are
logged escaped (``decode_name``), so a query cannot forge a log line.
"""
from __future__ import annotations

import logging

import time

from dnslib import QTYPE

from ...dns.wire import SERVFAIL, decode_name
from ...upstream.forwarder import ForwardFailure
from ..chain import Answer, Request, Shortcuts, Stage

log = logging.getLogger("nodecache.errors")


class Throttle:
    """A token bucket for log lines; ``allow`` says whether to write one and
    how many were held back since the last one written."""

    def __init__(self, burst: int = 20, rate: float = 5.0, clock=time.monotonic):
        self.burst, self.rate, self.clock = burst, rate, clock
        self.tokens, self.last, self.held = float(burst), clock(), 0

    def allow(self) -> tuple[bool, int]:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            self.held += 1
            return False, 0
        self.tokens -= 1
        held, self.held = self.held, 0
        return True, held


class ErrorsStage(Stage):
    name = "errors"

    def __init__(self):
        self.throttle = Throttle()

    def shortcuts(self) -> Shortcuts:
        # only failures concern this stage: a fresh hit cannot fail, and a
        # direct miss that fails goes to the slow path, which runs this stage
        return Shortcuts(hit=True, memo=True, direct=True)

    async def handle(self, request: Request) -> Answer:
        try:
            return await self.next(request)
        except ForwardFailure as exc:
            q = request.query
            write, held = self.throttle.allow()
            if write:
                log.error("plugin/errors: %d %s %s: %s%s", SERVFAIL, decode_name(q.qname), type_name(q.qtype),
                          exc, f" ({held} similar lines suppressed)" if held else "")
            return Answer(SERVFAIL, plugin="errors")


def type_name(qtype: int) -> str:
    return QTYPE.get(qtype, f"TYPE{qtype}")
