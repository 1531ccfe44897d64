"""The ``log`` stage: one line per query in CoreDNS's formats.

Default (``{common}``):
``{remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}" {rcode} {>rflags} {rsize} {duration}``
``{combined}`` adds ``"{>opcode}"``. A custom format may use the same
placeholders. ``class`` filters by response class as CoreDNS classifies
them: success (NOERROR with data), denial (NXDOMAIN, NODATA), error (the
rest), all. Logging is the operator's explicit choice, so when this stage
is configured cache hits also come through the chain to be logged. The
stage renders the answer itself, since it logs what the client receives.
"""
from __future__ import annotations

import logging
import re
import time

from dnslib import CLASS, RCODE

from .setup import LogConfig
from ...dns.key import EDNS_DO
from ...dns.wire import NOERROR, NXDOMAIN, SERVFAIL, decode_name, encode_name
from ...upstream.forwarder import ForwardFailure
from ..chain import Answer, Request, Stage, in_zone, render
from ..errors.stage import type_name

log = logging.getLogger("nodecache.log")
COMMON = ('{remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}" '
          '{rcode} {>rflags} {rsize} {duration}')
FORMATS = {"{common}": COMMON, "{combined}": COMMON + ' "{>opcode}"'}
_PLACEHOLDER = re.compile(r"\{[>]?[a-z]+\}")
_FLAG_NAMES = ((0x8000, "qr"), (0x0400, "aa"), (0x0200, "tc"), (0x0100, "rd"),
               (0x0080, "ra"), (0x0020, "ad"), (0x0010, "cd"))


def classify(wire: bytes) -> str:
    rcode = wire[3] & 0xF
    if rcode == NXDOMAIN:
        return "denial"
    if rcode != NOERROR:
        return "error"
    return "success" if wire[6:8] != b"\x00\x00" else "denial"


class LogStage(Stage):
    name = "log"

    def __init__(self, cfg: LogConfig):
        self.cfg = cfg
        self.zones = [encode_name(n) for n in cfg.names]
        self.format = FORMATS.get(cfg.format or "{common}", cfg.format or COMMON)

    async def handle(self, request: Request) -> Answer:
        try:
            answer = await self.next(request)
        except ForwardFailure:
            self.record(request, render(request, Answer(SERVFAIL)))
            raise  # the errors stage (or the block) answers it
        wire = render(request, answer)
        self.record(request, wire)
        return Answer(answer.rcode, wire=wire, plugin=answer.plugin)

    def wants(self, request: Request) -> bool:
        name = request.query.qname.lower()
        return any(in_zone(name, z) for z in self.zones)

    def record(self, request: Request, wire: bytes) -> None:
        if not self.wants(request):
            return
        if "all" not in self.cfg.classes and classify(wire) not in self.cfg.classes:
            return
        log.info("%s", self.render(request, wire))

    def render(self, request: Request, wire: bytes) -> str:
        q = request.query
        flags = wire[2] << 8 | wire[3] if len(wire) >= 4 else 0
        values = {
            "{remote}": str(request.client[0]), "{port}": str(request.client[1]),
            "{>id}": str(q.data[0] << 8 | q.data[1]), "{type}": type_name(q.qtype),
            "{class}": CLASS.get(q.qclass, f"CLASS{q.qclass}"), "{name}": decode_name(q.qname),
            "{proto}": request.proto, "{size}": str(len(q.data)),
            "{>do}": "true" if q.edns == EDNS_DO else "false", "{>bufsize}": str(q.limit),
            "{rcode}": RCODE.get(flags & 0xF, str(flags & 0xF)),
            "{>rflags}": ",".join(n for bit, n in _FLAG_NAMES if flags & bit),
            "{rsize}": str(len(wire)), "{>opcode}": "QUERY",
            "{duration}": f"{time.monotonic() - request.started:.9f}s".rstrip("0"),
        }
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(0), m.group(0)), self.format)
