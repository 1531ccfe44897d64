"""``log [NAMES...] [FORMAT] { class success|denial|error|all... }`` -> ``LogConfig``."""
from __future__ import annotations

from dataclasses import dataclass

from ...config.corefile import Directive
from ..grammar import Ctx, normalize_zone

LOG_CLASSES = ("success", "denial", "error", "all")


@dataclass(frozen=True)
class LogConfig:
    names: tuple[str, ...] = (".",)
    format: str | None = None   # None: CoreDNS's common format
    classes: frozenset[str] = frozenset({"all"})



def setup(ctx: Ctx, d: Directive) -> LogConfig:
    args = [a.text for a in d.args]
    names, fmt = [], None
    for i, tok in enumerate(d.args):
        if "{" in tok.text or i == len(args) - 1 and len(args) > 1 and tok.quoted:
            fmt = tok.text
            if i != len(args) - 1:
                raise ctx.error(tok.line, "log: the format must be the last argument")
        else:
            names.append(normalize_zone(ctx, tok))
    classes = set()
    for sub in d.body or ():
        if sub.name != "class":
            raise ctx.error(sub.line, f"log: unknown option '{sub.name}'")
        if not sub.args:
            raise ctx.error(sub.line, "log: class needs at least one of " + ", ".join(LOG_CLASSES))
        for tok in sub.args:
            if tok.text not in LOG_CLASSES:
                raise ctx.error(tok.line, f"log: unknown class {tok.text!r}")
            classes.add(tok.text)
    return LogConfig(tuple(names) or (".",), fmt, frozenset(classes or {"all"}))
