"""``rewrite [continue|stop] FIELD ...`` -> ``Rule`` (one per directive; a
block may have several, applied in order). FIELD is one of:

* ``name [exact|prefix|suffix|substring|regex] FROM TO [answer auto | answer name FROM TO
  | answer value FROM TO]`` (CoreDNS's default match type is exact);
* ``type FROM TO``, ``class FROM TO``;
* ``ttl [exact|prefix|suffix|substring|regex] NAME SECONDS|MIN-MAX``.

``edns0``, ``cname`` and ``rcode`` rules are rejected with a clear error.
"""
from __future__ import annotations

from dataclasses import dataclass

from dnslib import CLASS, QTYPE

from ...config.corefile import Directive
from ..grammar import Ctx
from ..regex import RegexError, compile_regex

MATCH_TYPES = ("exact", "prefix", "suffix", "substring", "regex")


@dataclass(frozen=True)
class Rule:
    field: str                     # name | type | class | ttl
    stop: bool = True
    match: str = "exact"
    source: str = ""               # FROM (a name, lower-case and absolute for exact/suffix; a regex)
    target: str = ""               # TO
    answer: str = "auto"           # auto | name | value | none
    answer_from: str = ""
    answer_to: str = ""
    ttl: tuple[int, int] = (0, 0)  # (min, max) for ttl rules
    pattern: object = None         # ``source`` compiled (RE2, plugins.regex) for regex matches
    answer_pattern: object = None  # ``answer_from`` compiled, for answer name/value


def _absolute(text: str) -> str:
    return text.lower().rstrip(".") + "."


def _code(ctx: Ctx, table, text: str, line: int, what: str) -> int:
    value = 255 if text.upper() == "ANY" else table.reverse.get(text.upper())
    if value is None:
        raise ctx.error(line, f"rewrite: unknown {what} {text!r}")
    return value


def setup(ctx: Ctx, d: Directive) -> Rule:
    args = [t.text for t in d.args]
    if d.body is not None:
        raise ctx.error(d.line, "rewrite: the block form is not supported; write one rule per directive")
    stop = True
    if args and args[0] in ("continue", "stop"):
        stop = args.pop(0) == "stop"
    if not args:
        raise ctx.error(d.line, "rewrite: needs a rule (name, type, class, ttl)")
    field, rest = args[0], args[1:]
    if field == "name":
        return _name(ctx, d.line, stop, rest)
    if field in ("type", "class"):
        if len(rest) != 2:
            raise ctx.error(d.line, f"rewrite {field} FROM TO")
        table = QTYPE if field == "type" else CLASS
        for text in rest:
            _code(ctx, table, text, d.line, field)
        return Rule(field, stop, source=rest[0].upper(), target=rest[1].upper(), answer="none")
    if field == "ttl":
        return _ttl(ctx, d.line, stop, rest)
    if field in ("edns0", "cname", "rcode", "answer"):
        raise ctx.error(d.line, f"rewrite: {field} rules are not supported")
    raise ctx.error(d.line, f"rewrite: unknown field {field!r}")


def _matcher(ctx: Ctx, line: int, rest: list[str]) -> tuple[str, list[str]]:
    match = rest.pop(0) if rest and rest[0] in MATCH_TYPES else "exact"
    return match, rest


def _name(ctx: Ctx, line: int, stop: bool, rest: list[str]) -> Rule:
    match, rest = _matcher(ctx, line, list(rest))
    if len(rest) < 2:
        raise ctx.error(line, "rewrite name [exact|prefix|suffix|substring|regex] FROM TO [answer ...]")
    source, target, tail = rest[0], rest[1], rest[2:]
    pattern = answer_pattern = None
    if match == "regex":
        pattern = _regex(ctx, line, source, "regex")
    elif match in ("exact", "suffix"):
        source, target = _absolute(source), _absolute(target)
    else:
        source, target = source.lower(), target.lower()
    answer, a_from, a_to = ("none" if match == "regex" else "auto"), "", ""
    if tail:
        if tail[0] != "answer" or len(tail) < 2:
            raise ctx.error(line, f"rewrite: unexpected {' '.join(tail)!r}")
        if tail[1] == "auto" and len(tail) == 2:
            if match == "regex":
                raise ctx.error(line, "rewrite: answer auto needs a non-regex match (write answer name FROM TO)")
            answer = "auto"
        elif tail[1] in ("name", "value") and len(tail) == 4:
            answer, a_from, a_to = tail[1], tail[2], tail[3]
            answer_pattern = _regex(ctx, line, a_from, "answer regex")
        else:
            raise ctx.error(line, "rewrite: answer auto | answer name FROM TO | answer value FROM TO")
    return Rule("name", stop, match, source, target, answer, a_from, a_to, pattern=pattern,
                answer_pattern=answer_pattern)


def _regex(ctx: Ctx, line: int, text: str, what: str):
    try:
        return compile_regex(text)
    except RegexError as exc:
        raise ctx.error(line, f"rewrite: {what} {text!r}: {exc}") from None


def _ttl(ctx: Ctx, line: int, stop: bool, rest: list[str]) -> Rule:
    match, rest = _matcher(ctx, line, list(rest))
    if len(rest) != 2:
        raise ctx.error(line, "rewrite ttl [exact|prefix|suffix|substring|regex] NAME SECONDS|MIN-MAX")
    source, value = rest
    low, _, high = value.partition("-")
    try:
        bounds = (int(low), int(high)) if high else (int(low), int(low))
    except ValueError:
        raise ctx.error(line, f"rewrite: ttl {value!r} is not SECONDS or MIN-MAX") from None
    if bounds[0] < 0 or bounds[1] < bounds[0]:
        raise ctx.error(line, f"rewrite: ttl {value!r} is not SECONDS or MIN-MAX")
    if match in ("exact", "suffix"):
        source = _absolute(source)
    pattern = _regex(ctx, line, source, "regex") if match == "regex" else None
    return Rule("ttl", stop, match, source, ttl=bounds, answer="none", pattern=pattern)
