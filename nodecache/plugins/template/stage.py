"""The ``template`` stage: answers written as templates, as CoreDNS's
template plugin does (its handler and match logic, in order):

* a query outside every template's zones goes down the chain;
* templates are tried in Corefile order; one whose zone, class or type
  does not fit is skipped; for one that fits, the first regex matching
  the (lower-case, absolute) name selects it: its answer, additional and
  authority templates are filled (``.Name .Zone .Class .Type .Remote
  .Regex .Message .Question .Match .Group``) and parsed as zone-file
  records, and the reply carries its ``rcode``, authoritative;
* when no regex of a fitting template matches: the next template if its
  ``fallthrough`` covers the name, else NXDOMAIN;
* when every template was skipped: down the chain.

A template that fills into something that is not a record is a runtime
error: SERVFAIL, and one log line per minute at most (``observe.ratelog``:
the name is the client's choice). The client's name reaches the zone text
escaped (RFC 1035 §5.1): characters the zone format gives a meaning
(``;`` a comment, ``(`` ``)`` grouping, ``$`` a directive, white space,
quotes) as ``\\DDD``, so it reads back as the name asked, never as more
zone text. A name the zone parser here cannot read back (a dot or a byte
of 0x80 or more inside a label: dnslib splits the one and IDNA-encodes
the other) is answered SERVFAIL, counted, rather than with another name.
Its answers are not cached (CoreDNS's cache keeps them). It sits after the
cache, so hits may skip it; it declares no direct shortcut.
"""
from __future__ import annotations

import logging

from dnslib import CLASS, QTYPE, RR, DNSRecord

from ...dns.wire import NXDOMAIN, SERVFAIL, decode_name, encode_name, labels
from ...observe.ratelog import Throttle
from ..answer import reply
from ..chain import Answer, Request, Shortcuts, Stage, in_zone

log = logging.getLogger("nodecache.template")
ANY = 255
_ZONE_TEXT = str.maketrans({";": "\\059", "(": "\\040", ")": "\\041", "$": "\\036"})


def zone_safe(text: str) -> str:
    """``decode_name`` output (already escaping white space, quotes and
    backslashes) with the zone format's other special characters escaped."""
    return text.translate(_ZONE_TEXT)


def representable(lname: bytes) -> bool:
    """Whether the zone parser reads this wire name back as itself."""
    return not any(b"." in label or any(b >= 0x80 for b in label) for label in labels(lname))


class TemplateStage(Stage):
    name = "template"

    def __init__(self, configs, block_zones: tuple[str, ...]):
        self.templates = [(cfg, [encode_name(z) for z in (cfg.zones or block_zones)],
                           None if cfg.fallthrough is None else [encode_name(z) for z in cfg.fallthrough or (".",)])
                          for cfg in configs]
        self.failures = 0
        self.unrepresentable = 0  # names answered SERVFAIL: the zone parser cannot write them back
        self.throttle = Throttle(log)

    def shortcuts(self) -> Shortcuts:
        return Shortcuts(hit=True, memo=True)  # after the cache: a fresh hit never reaches it

    async def handle(self, request: Request) -> Answer:
        q = request.query
        lname = q.qname.lower()
        if not any(in_zone(lname, z) for _, zones, _ in self.templates for z in zones):
            return await self.next(request)
        name = decode_name(lname)
        for cfg, zones, fall in self.templates:
            zone = _longest(lname, zones)
            if zone is None or not _fits(cfg.qclass, q.qclass) or not _fits(cfg.qtype, q.qtype):
                continue
            if not representable(lname):
                self.unrepresentable += 1
                self.throttle.warning("unrepresentable", "template: %s cannot be written as zone text here: "
                                      "SERVFAIL", name)
                return Answer(SERVFAIL, plugin="template")
            data = None
            for regex in cfg.regexes:
                m = regex.search(name)
                if m is not None:
                    data = _data(cfg, q, request, name, decode_name(zone), regex, m)
                    break
            if data is None:
                if fall is not None and any(in_zone(lname, z) for z in fall):
                    continue
                return Answer(NXDOMAIN, plugin="template")
            try:
                sections = [[rr for t in ts for rr in RR.fromZone(t.render(data))]
                            for ts in (cfg.answer, cfg.authority, cfg.additional)]
            except Exception as exc:  # TemplateError, or any of the kinds dnslib raises on bad zone text
                self.failures += 1
                self.throttle.error("render", "template for %s: %s", name, exc)
                return Answer(SERVFAIL, plugin="template")
            return Answer(cfg.rcode, wire=reply(q, cfg.rcode, *sections), plugin="template")
        return await self.next(request)


def _fits(want: int, got: int) -> bool:
    return want == ANY or got == ANY or want == got


def _longest(lname: bytes, zones: list[bytes]) -> bytes | None:
    best = None
    for z in zones:
        if in_zone(lname, z) and (best is None or len(z) > len(best)):
            best = z
    return best


def _data(cfg, q, request: Request, name: str, zone: str, regex, m) -> dict:
    groups = {str(i): zone_safe(g or "") for i, g in enumerate((m.group(0),) + m.groups())}
    groups.update({k: zone_safe(v or "") for k, v in m.groupdict().items()})
    qclass = q.qclass if q.qclass != ANY else cfg.qclass
    qtype = q.qtype if q.qtype != ANY else cfg.qtype
    try:
        message = str(DNSRecord.parse(q.data))
    except Exception:
        message = ""
    return {"Name": zone_safe(name), "Zone": zone, "Class": CLASS.get(qclass, str(qclass)), "Type": QTYPE.get(qtype, str(qtype)),
            "Remote": str(request.client[0]) if request.client else "", "Regex": regex.pattern,
            "Match": [zone_safe(m.group(0)), *[zone_safe(g or "") for g in m.groups()]], "Group": groups,
            "Question": f";{name}\t{CLASS.get(q.qclass, q.qclass)}\t {QTYPE.get(q.qtype, q.qtype)}",
            "Message": message}
