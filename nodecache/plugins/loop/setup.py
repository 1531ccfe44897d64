"""``loop`` (no arguments) -> True."""
from __future__ import annotations

from ...config.corefile import Directive
from ..grammar import Ctx, no_body


def setup(ctx: Ctx, d: Directive) -> bool:
    no_body(ctx, d)
    if d.args:
        raise ctx.error(d.line, "loop: takes no arguments")
    return True
