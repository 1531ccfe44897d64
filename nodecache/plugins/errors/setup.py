"""``errors`` (no arguments, no options here) -> True."""
from __future__ import annotations

from ...config.corefile import Directive
from ..grammar import Ctx


def setup(ctx: Ctx, d: Directive) -> bool:
    if d.args:
        raise ctx.error(d.line, "errors: takes no arguments")
    for sub in d.body or ():
        raise ctx.error(sub.line, f"errors: option '{sub.name}' is not supported")
    return True
