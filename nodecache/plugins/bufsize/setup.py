"""``bufsize [SIZE]`` -> the largest UDP reply for this block's clients
(CoreDNS: default 1232, 512..4096)."""
from __future__ import annotations

from ...config.corefile import Directive
from ..grammar import Ctx, no_body, parse_int


def setup(ctx: Ctx, d: Directive) -> int:
    no_body(ctx, d)
    if len(d.args) > 1:
        raise ctx.error(d.line, "bufsize [SIZE]")
    return parse_int(ctx, d.args[0], "bufsize", 512, 4096) if d.args else 1232
