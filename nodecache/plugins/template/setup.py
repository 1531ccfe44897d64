"""``template CLASS TYPE [ZONE...] { match REGEX...; answer RR; additional RR;
authority RR; rcode CODE; fallthrough [ZONE...]; upstream [ADDRESS] }`` ->
``TemplateConfig`` (one per directive; a block may have several). Regexes
(RE2, as CoreDNS's: ``plugins.regex``) and templates are compiled here, so a
broken one is a Corefile error."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from dnslib import CLASS, QTYPE, RCODE

from ...config.corefile import Directive
from ..grammar import Ctx, normalize_zone
from ..regex import RegexError, compile_regex
from .render import Template, TemplateError, compile as compile_template

log = logging.getLogger("nodecache.template")


@dataclass(frozen=True)
class TemplateConfig:
    qclass: int                       # 255: ANY
    qtype: int                        # 255: ANY
    zones: tuple[str, ...] = ()       # empty: the server block's zones
    regexes: tuple = ()               # RE2 patterns (plugins.regex)
    answer: tuple[Template, ...] = ()
    additional: tuple[Template, ...] = ()
    authority: tuple[Template, ...] = ()
    rcode: int = 0
    fallthrough: tuple[str, ...] | None = None


def _code(ctx: Ctx, table, tok, what: str) -> int:
    """A class, type or rcode by name (dnslib's tables; ANY is 255)."""
    text = tok.text.upper()
    value = int(text) if text.isdigit() else 255 if text == "ANY" and what != "rcode" else table.reverse.get(text)
    if value is None:
        raise ctx.error(tok.line, f"template: unknown {what} {tok.text!r}")
    return int(value)


def setup(ctx: Ctx, d: Directive) -> TemplateConfig:
    if len(d.args) < 2:
        raise ctx.error(d.line, "template CLASS TYPE [ZONE...]")
    qclass = _code(ctx, CLASS, d.args[0], "class")
    qtype = _code(ctx, QTYPE, d.args[1], "type")
    zones = tuple(normalize_zone(ctx, t) for t in d.args[2:])
    regexes, sections, rcode, fall = [], {"answer": [], "additional": [], "authority": []}, 0, None
    for sub in d.body or ():
        if sub.name == "match":
            for tok in sub.args:
                try:
                    regexes.append(compile_regex(tok.text))
                except RegexError as exc:
                    raise ctx.error(tok.line, f"template: match {tok.text!r}: {exc}") from None
        elif sub.name in sections:
            if not sub.args:
                raise ctx.error(sub.line, f"template: {sub.name} needs a template")
            for tok in sub.args:
                try:
                    sections[sub.name].append(compile_template(tok.text))
                except TemplateError as exc:
                    raise ctx.error(tok.line, f"template: {sub.name} {tok.text!r}: {exc}") from None
        elif sub.name == "rcode":
            if len(sub.args) != 1:
                raise ctx.error(sub.line, "template: rcode CODE")
            rcode = _code(ctx, RCODE, sub.args[0], "rcode")
        elif sub.name == "fallthrough":
            fall = tuple(normalize_zone(ctx, t) for t in sub.args)
        elif sub.name == "upstream":  # deprecated in CoreDNS, which ignores it too
            log.warning("%s:%d: template: 'upstream' is deprecated and ignored", ctx.source, sub.line)
        else:
            raise ctx.error(sub.line, f"template: unknown option '{sub.name}'")
    return TemplateConfig(qclass, qtype, zones, tuple(regexes) or (compile_regex(".*"),),
                          tuple(sections["answer"]), tuple(sections["additional"]),
                          tuple(sections["authority"]), rcode, fall)
