"""The subset of Go's text/template that CoreDNS's template plugin
answers are written in: ``{{ EXPR }}`` actions where EXPR is a field
(``.Name .Zone .Class .Type .Remote .Regex .Message .Question .Match
.Group`` and ``.Group.NAME``), a quoted string, a number, ``index X KEY``,
``parseInt S BASE BITS`` (strconv.ParseUint) or a parenthesised EXPR.
``compile`` checks a template once at setup (an unknown function or field
is a Corefile error there); ``Template.render`` fills it per query.
"""
from __future__ import annotations

import re

FIELDS = ("Name", "Zone", "Class", "Type", "Remote", "Regex", "Message", "Question", "Match", "Group")
FUNCTIONS = {"index": 2, "parseInt": 3}
_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_TOKEN = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|(\.[A-Za-z_][\w.]*|\.)|(-?\d+)|([A-Za-z_]\w*))')


class TemplateError(ValueError):
    pass


def _tokens(expr: str) -> list:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise TemplateError(f"cannot read {expr[pos:]!r}")
        pos = m.end()
        lp, rp, string, field, number, word = m.groups()
        if lp:
            out.append("(")
        elif rp:
            out.append(")")
        elif string is not None:
            out.append(("str", bytes(string, "utf-8").decode("unicode_escape")))
        elif field is not None:
            out.append(("field", field))
        elif number is not None:
            out.append(("num", int(number)))
        else:
            out.append(("word", word))
    return out


def _parse(tokens: list, i: int = 0, top: bool = True):
    """A command: function + arguments, or one operand. Returns (node, next index)."""
    args = []
    while i < len(tokens) and tokens[i] != ")":
        tok = tokens[i]
        if tok == "(":
            node, i = _parse(tokens, i + 1, top=False)
            if i >= len(tokens) or tokens[i] != ")":
                raise TemplateError("unclosed parenthesis")
            args.append(node)
            i += 1
            continue
        args.append(tok)
        i += 1
    if not args:
        raise TemplateError("empty action")
    head = args[0]
    if head[0] == "word":
        if head[1] not in FUNCTIONS:
            raise TemplateError(f"function {head[1]!r} not defined (only {', '.join(FUNCTIONS)})")
        if len(args) - 1 != FUNCTIONS[head[1]]:
            raise TemplateError(f"{head[1]} takes {FUNCTIONS[head[1]]} arguments")
        return ("call", head[1], args[1:]), i
    if len(args) != 1:
        raise TemplateError("an operand cannot take arguments")
    if head[0] == "field":
        path = head[1].lstrip(".").split(".")
        if path[0] not in FIELDS or (len(path) > 1 and path[0] != "Group") or len(path) > 2:
            raise TemplateError(f"can't evaluate field {head[1]}")
    return head, i


def _eval(node, data: dict):
    kind = node[0]
    if kind in ("str", "num"):
        return node[1]
    if kind == "field":
        path = node[1].lstrip(".").split(".")
        value = data.get(path[0], "")
        return value.get(path[1], "") if len(path) > 1 else value
    _, fn, args = node
    values = [_eval(a, data) for a in args]
    if fn == "index":
        container, key = values
        try:
            return container[key] if isinstance(container, (list, tuple)) else container.get(str(key), "")
        except (IndexError, TypeError) as exc:
            raise TemplateError(f"index {key}: {exc}") from None
    text, base, bits = values
    try:
        number = int(str(text), int(base))
    except ValueError:
        raise TemplateError(f"parseInt {text!r} base {base}: invalid syntax") from None
    if number < 0 or number >= 1 << int(bits):
        raise TemplateError(f"parseInt {text!r}: value out of range")
    return number


def _text(value) -> str:
    if isinstance(value, list):
        return "[" + " ".join(map(str, value)) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{v}" for k, v in sorted(value.items())) + "]"
    return str(value)


class Template:
    def __init__(self, source: str):
        self.source = source
        self.parts: list = []  # literal strings and parsed actions, in order
        pos = 0
        for m in _ACTION.finditer(source):
            self.parts.append(source[pos:m.start()])
            node, end = _parse(_tokens(m.group(1)))
            self.parts.append(node)
            pos = m.end()
        self.parts.append(source[pos:])

    def render(self, data: dict) -> str:
        return "".join(p if isinstance(p, str) else _text(_eval(p, data)) for p in self.parts)


def compile(source: str) -> Template:  # noqa: A001 (as re.compile)
    return Template(source)
