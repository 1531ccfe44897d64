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
error: logged (throttled by the errors stage if present) and SERVFAIL.
Its answers are not cached (CoreDNS's cache keeps them). It sits after the
cache, so hits may skip it; it declares no direct shortcut.
"""
from __future__ import annotations

import logging

from dnslib import CLASS, QTYPE, RR, DNSRecord

from ...dns.wire import NXDOMAIN, SERVFAIL, decode_name, encode_name
from ..answer import reply
from ..chain import Answer, Request, Shortcuts, Stage, in_zone

log = logging.getLogger("nodecache.template")
ANY = 255


class TemplateStage(Stage):
    name = "template"

    def __init__(self, configs, block_zones: tuple[str, ...]):
        self.templates = [(cfg, [encode_name(z) for z in (cfg.zones or block_zones)],
                           None if cfg.fallthrough is None else [encode_name(z) for z in cfg.fallthrough or (".",)])
                          for cfg in configs]
        self.failures = 0

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
                log.error("template for %s: %s", name, exc)
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
    groups = {str(i): g or "" for i, g in enumerate((m.group(0),) + m.groups())}
    groups.update({k: v or "" for k, v in m.groupdict().items()})
    qclass = q.qclass if q.qclass != ANY else cfg.qclass
    qtype = q.qtype if q.qtype != ANY else cfg.qtype
    try:
        message = str(DNSRecord.parse(q.data))
    except Exception:
        message = ""
    return {"Name": name, "Zone": zone, "Class": CLASS.get(qclass, str(qclass)), "Type": QTYPE.get(qtype, str(qtype)),
            "Remote": str(request.client[0]) if request.client else "", "Regex": regex.pattern,
            "Match": [m.group(0), *[g or "" for g in m.groups()]], "Group": groups,
            "Question": f";{name}\t{CLASS.get(q.qclass, q.qclass)}\t {QTYPE.get(q.qtype, q.qtype)}",
            "Message": message}
