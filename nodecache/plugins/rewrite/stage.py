"""The ``rewrite`` stage: change a query's name, type or class before the
rest of the chain sees it, and the reply back for the client, as CoreDNS's
rewrite does for those fields (and ``ttl``).

Rules run in Corefile order; a rule that applies and says ``stop`` (the
default) ends the list, ``continue`` goes on to the next. The rewritten
query goes down the chain (the forwarder asks the new name); the reply
comes back with the client's question (its ID, name and case, type and
class) and, for name rules, the record names turned back (``answer
auto``: the reverse of the rule; ``answer name FROM TO``: a regex on
owner names; ``answer value FROM TO``: on names inside records). ``ttl``
rules clamp the TTLs of a reply whose question matches. Names keep their
exact bytes through a rule (RFC 1035 escapes both ways); a reply whose
records dnslib cannot read (a label that is not UTF-8) is SERVFAIL with
one log line a minute at most. Regexes are RE2
(``plugins.regex``): linear in the name, as CoreDNS's Go regexps.

The reply is handed to the cache (before it in the chain) as an analysed
reply to the client's own question, so a rewritten name is cached under
the name the client asked and later hits take the hit path. It declares
no direct shortcut: a block with rewrite sends misses through the chain.
"""
from __future__ import annotations

import logging
import re

from dnslib import CLASS, DNSError, DNSLabel, DNSQuestion, DNSRecord, QTYPE

from ...dns.reply import MalformedReply, analyse
from ...dns.wire import SERVFAIL, QueryError, decode_name, encode_name, labels, make_query, parse_query
from ...observe.ratelog import Throttle
from ..chain import Answer, Request, Shortcuts, Stage, render

log = logging.getLogger("nodecache.rewrite")

_GROUP = re.compile(r"\{(\d+)\}")
_NAME_RDATA = {QTYPE.CNAME: "label", QTYPE.DNAME: "label", QTYPE.NS: "label", QTYPE.PTR: "label",
               QTYPE.MX: "label", QTYPE.SRV: "target"}


def _expand(template: str, m) -> str:
    return _GROUP.sub(lambda g: m.group(int(g.group(1))) or "", template)


def rename(rule, name: str) -> str | None:
    """``name`` (lower-case, absolute) as ``rule`` rewrites it, else None."""
    src, dst, how = rule.source, rule.target, rule.match
    if how == "exact":
        return dst if name == src else None
    if how == "prefix":
        return dst + name[len(src):] if name.startswith(src) else None
    if how == "suffix":
        return name[:-len(src)] + dst if name.endswith(src) else None
    if how == "substring":
        return name.replace(src, dst, 1) if src in name else None
    m = rule.pattern.search(name)
    return (_expand(dst, m).lower().rstrip(".") + ".") if m else None


def _matches(rule, name: str) -> bool:
    how, src = rule.match, rule.source
    return {"exact": name == src, "prefix": name.startswith(src), "suffix": name.endswith(src),
            "substring": src in name}.get(how) if how != "regex" else rule.pattern.search(name) is not None


def _unrename(rule, name: str) -> str:
    """The reverse of a name rule (``answer auto``) for a record's name."""
    src, dst, how = rule.source, rule.target, rule.match
    if how == "exact":
        return src if name == dst else name
    if how == "prefix":
        return src + name[len(dst):] if name.startswith(dst) else name
    if how == "suffix":
        return name[:-len(dst)] + src if name.endswith(dst) else name
    return name.replace(dst, src, 1) if dst in name else name


def _label(wire: bytes) -> DNSLabel:
    """A dnslib name of exactly these wire labels (its text parser would
    read escapes its own way)."""
    return DNSLabel(labels(wire))


def _regex_name(pattern, template: str, name: str) -> str:
    m = pattern.search(name)
    return _expand(template, m) if m else name


class RewriteStage(Stage):
    name = "rewrite"

    def __init__(self, rules):
        self.rules = rules
        self.unrestorable = 0  # replies answered SERVFAIL: their names could not be turned back
        self.throttle = Throttle(log)

    def shortcuts(self) -> Shortcuts:
        return Shortcuts(hit=True, memo=True)  # after the cache: a fresh hit never reaches it

    async def handle(self, request: Request) -> Answer:
        q = request.query
        name = decode_name(q.qname.lower())
        qtype, qclass, applied = q.qtype, q.qclass, []
        for rule in self.rules:
            if rule.field == "name":
                new = rename(rule, name)
                if new is None:
                    continue
                name = new
            elif rule.field == "type":
                if QTYPE.get(qtype) != rule.source and not (rule.source == "ANY" and qtype == 255):
                    continue
                qtype = 255 if rule.target == "ANY" else QTYPE.reverse[rule.target]
            elif rule.field == "class":
                if CLASS.get(qclass) != rule.source:
                    continue
                qclass = 255 if rule.target == "ANY" else CLASS.reverse[rule.target]
            elif not _matches(rule, name):
                continue
            applied.append(rule)
            if rule.stop:
                break
        if not applied:
            return await self.next(request)
        try:
            question = encode_name(name) + qtype.to_bytes(2, "big") + qclass.to_bytes(2, "big")
            inner = parse_query(q.data[:2] + make_query(0, question, q.flags, q.edns)[2:])
        except ValueError:  # the new name is not a name (too long): nothing to ask
            return Answer(SERVFAIL, plugin="rewrite")
        except QueryError as exc:  # a type or class we do not serve (dns.wire.refusal)
            return Answer(exc.rcode if exc.rcode is not None else SERVFAIL, plugin="rewrite")
        inner_request = Request(inner, request.proto, request.client, request.started)
        answer = await self.next(inner_request)
        try:
            out = self._restore(q, render(inner_request, answer), applied)
        except (DNSError, BufferError, ValueError) as exc:
            # dnslib reads no label that is not UTF-8: such a name cannot be turned back here
            self.unrestorable += 1
            self.throttle.warning("restore", "rewrite: the reply for %s cannot be turned back (%s): SERVFAIL",
                                  decode_name(q.qname), exc)
            return Answer(SERVFAIL, plugin="rewrite")
        try:
            reply = analyse(out)
        except MalformedReply:
            return Answer(answer.rcode, wire=out, plugin=answer.plugin)
        return Answer(answer.rcode, reply=reply, plugin=answer.plugin)

    def _restore(self, q, wire: bytes, applied) -> bytes:
        rec = DNSRecord.parse(wire)
        rec.questions = [DNSQuestion(_label(q.qname), q.qtype, q.qclass)]  # the client's bytes exactly
        for rr in rec.rr + rec.auth + rec.ar:
            if rr.rtype == QTYPE.OPT:
                continue
            owner = str(rr.rname).lower()
            for rule in applied:
                if rule.field == "name" and rule.answer == "auto":
                    owner = _unrename(rule, owner)
                elif rule.field == "name" and rule.answer == "name":
                    owner = _regex_name(rule.answer_pattern, rule.answer_to, owner)
                elif rule.field == "name" and rule.answer == "value" and rr.rtype in _NAME_RDATA:
                    attr = _NAME_RDATA[rr.rtype]
                    value = str(getattr(rr.rdata, attr))
                    setattr(rr.rdata, attr, _label(encode_name(_regex_name(rule.answer_pattern, rule.answer_to,
                                                                           value))))
                elif rule.field == "ttl":
                    low, high = rule.ttl
                    rr.ttl = min(max(rr.ttl, low), high)
            rr.rname = _label(encode_name(owner))
        packed = rec.pack()
        return q.data[:2] + packed[2:12] + q.data[12:q.qend] + packed[q.qend:]
