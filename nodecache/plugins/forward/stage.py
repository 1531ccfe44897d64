"""The ``forward`` stage: hand a miss for FROM (minus ``except`` zones) to
the forwarder; other names go on down the chain (to REFUSED).
A forwarder failure propagates as ``ForwardFailure`` so that ``errors``
can log it; the block turns it into SERVFAIL.

At the callback speed (``take``) a miss is sent upstream from the receive
callback on a ready channel, or joins the exchange in flight for its key
(``upstream.direct``); ``on_done`` (the cache stage's) answers it.
"""
from __future__ import annotations

from ...upstream.options import ForwardConfig
from ...dns.key import name as key_name
from ...dns.wire import REFUSED, encode_name
from ...upstream import direct
from ...upstream.forwarder import Forwarder, Overloaded
from ..chain import Answer, Request, Shortcuts, Stage, in_zone


class ForwardStage(Stage):
    name = "forward"

    def __init__(self, cfg: ForwardConfig, retry: bool = True, cork=None):
        self.cfg = cfg
        self.forwarder = Forwarder(cfg, retry, cork)
        self.from_zone = encode_name(cfg.from_zone)
        self.except_zones = [encode_name(z) for z in cfg.except_zones]

    def shortcuts(self) -> Shortcuts:
        # After the cache, so hits never reach it. A direct miss does this
        # stage's job only when the stage takes every name (FROM the root,
        # no except).
        return Shortcuts(direct=self.from_zone == b"\x00" and not self.except_zones)

    def take(self, key: bytes, asker, on_done) -> bool:
        if on_done is None:
            return False  # nobody would store and render the reply: the slow path does
        return direct.start(self.forwarder, key, asker, on_done)

    async def handle(self, request: Request) -> Answer:
        key = request.query.key
        if self.from_zone != b"\x00" or self.except_zones:
            lname = key_name(key)
            if not in_zone(lname, self.from_zone) or any(in_zone(lname, z) for z in self.except_zones):
                return await self.next(request)
        try:
            if request.alone:
                reply = await self.forwarder.resolve(key, coalesce=False)
            else:
                reply = await self.forwarder.resolve(key, started=request.started)
        except Overloaded:
            return Answer(REFUSED, plugin="forward")
        return Answer(reply.rcode, reply=reply, plugin="forward")

    def events(self) -> dict[str, int]:
        return self.forwarder.events()

    def close(self) -> None:
        self.forwarder.close()
