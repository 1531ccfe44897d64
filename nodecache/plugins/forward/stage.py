"""The ``forward`` stage: hand a miss for FROM (minus ``except`` zones) to
its forwarder; other names go on down the chain (to REFUSED).
A forwarder failure propagates as ``ForwardFailure`` so that ``errors``
can log it; the block turns it into SERVFAIL.

A block may have several ``forward`` directives (CoreDNS evaluates them in
the order written: put subdomains first). The first whose FROM takes the
name answers, unless its reply's rcode is one of its ``next`` rcodes and
another ``forward`` follows: then that one is asked (CoreDNS's ``next``:
"if the next plugin is not a forward, this setting is ignored"); the same
for NODATA (NOERROR, no answer) with ``next_on_nodata``.

At the callback speed (``take``) a miss is sent upstream from the receive
callback on a ready channel, or joins the exchange in flight for its key
(``upstream.direct``); ``on_done`` (the cache stage's) answers it. Only a
block with one ``forward`` of every name (FROM ``.``, no ``except``)
offers it.
"""
from __future__ import annotations

from ...upstream.options import ForwardConfig
from ...dns.key import name as key_name
from ...dns.wire import REFUSED, encode_name
from ...upstream import direct
from ...upstream.forwarder import Forwarder, Overloaded
from ..chain import Answer, Request, Shortcuts, Stage, in_zone


class Route:
    """One ``forward`` directive: its zones and its forwarder."""

    def __init__(self, cfg: ForwardConfig, retry: bool, cork):
        self.cfg = cfg
        self.forwarder = Forwarder(cfg, retry, cork)
        self.from_zone = encode_name(cfg.from_zone)
        self.except_zones = [encode_name(z) for z in cfg.except_zones]
        self.every_name = self.from_zone == b"\x00" and not self.except_zones

    def takes(self, key: bytes) -> bool:
        if self.every_name:
            return True
        lname = key_name(key)
        return in_zone(lname, self.from_zone) and not any(in_zone(lname, z) for z in self.except_zones)


class ForwardStage(Stage):
    name = "forward"

    def __init__(self, cfgs: tuple[ForwardConfig, ...], retry: bool = True, cork=None):
        """``cfgs``: each ``forward`` of the block, in the order written."""
        self.routes = [Route(cfg, retry, cork) for cfg in cfgs]
        self.forwarders = [route.forwarder for route in self.routes]
        self.forwarder = self.forwarders[0]  # the one of a block with one forward (the common case)

    def shortcuts(self) -> Shortcuts:
        # After the cache, so hits never reach it. A direct miss does this
        # stage's job only when one forwarder takes every name.
        return Shortcuts(direct=len(self.routes) == 1 and self.routes[0].every_name)

    def take(self, key: bytes, asker, on_done) -> bool:
        if on_done is None:
            return False  # nobody would store and render the reply: the slow path does
        return direct.start(self.forwarder, key, asker, on_done)

    async def handle(self, request: Request) -> Answer:
        key = request.query.key
        routes = self.routes
        for i, route in enumerate(routes):
            if not route.takes(key):
                continue
            try:
                if request.alone:
                    reply = await route.forwarder.resolve(key, coalesce=False)
                else:
                    reply = await route.forwarder.resolve(key, started=request.started)
            except Overloaded:
                return Answer(REFUSED, plugin="forward")
            if i + 1 < len(routes) and (reply.rcode in route.cfg.next_rcodes or (
                    route.cfg.next_on_nodata and reply.rcode == 0 and not reply.counts[0])):
                continue  # ``next``: the following forward is asked (whether it takes the name or passes it on)
            return Answer(reply.rcode, reply=reply, plugin="forward")
        return await self.next(request)

    def events(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for fwd in self.forwarders:
            for name, count in fwd.events().items():
                out[name] = out.get(name, 0) + count
        return out

    def close(self) -> None:
        for fwd in self.forwarders:
            fwd.close()
