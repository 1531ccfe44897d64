"""The ``loop`` stage, as CoreDNS's loop plugin is one: the probe of
``detector`` goes out through the rest of the chain (``start``: at start
and after every reload), and its echoes are counted where they arrive, in
``handle``. Below the threshold an echo is forwarded again on its own
(``Request.alone``: never coalesced with an exchange in flight, or the
loop would not bring it back). At the threshold the block is down
(``Stage.down``): it answers SERVFAIL for its zones, cached answers
included, and says why in /ready, until the configuration changes.

A direct miss (``take``, the callback speed) skips ``handle``, so it must
not take the probe (its echo would never be counted) nor any query once
the block is down: those take the slow path.
"""
from __future__ import annotations

import logging

from ...dns.key import question
from ...dns.wire import RD, SERVFAIL, make_query, parse_query
from ..chain import Answer, Request, Shortcuts, Stage
from .detector import LoopDetector

log = logging.getLogger("nodecache.loop")


class LoopStage(Stage):
    name = "loop"

    def __init__(self, zone: str):
        self.detector = LoopDetector(zone)

    def shortcuts(self) -> Shortcuts:
        # after the cache: hits never reach it; a direct miss passes ``take``
        return Shortcuts(hit=True, memo=True, direct=True)

    def take(self, key: bytes, asker, on_done) -> bool:
        if self.down or self.detector.is_probe(key):
            return False
        return self.next_take(key, asker, on_done)

    async def handle(self, request: Request) -> Answer:
        detector = self.detector
        key = request.query.key
        if detector.sighted(key):
            self.go_down()
            return Answer(SERVFAIL, plugin="loop")
        if detector.is_probe(key):
            request.alone = True
        return await self.next(request)

    async def start(self) -> None:
        """Send the probe through the rest of the chain; its answer does not
        matter, only its echoes."""
        detector = self.detector
        if detector.detected:
            return
        query = make_query(0, question(detector.key), RD)
        try:
            await self.next(Request(parse_query(query), proto="internal", alone=True))
        except Exception as exc:
            log.debug("loop probe for %s: %s", detector.zone, exc)

    def trouble(self, now: float) -> str | None:
        return "forwarding loop detected" if self.down else None

    def go_down(self) -> None:
        if not self.down:
            self.down = True
            self.on_down()
