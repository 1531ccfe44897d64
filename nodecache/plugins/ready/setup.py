"""``ready [ADDRESS]`` -> the listen address of ``/ready`` (default :8181)."""
from __future__ import annotations

from ...config.corefile import Directive
from ..grammar import Ctx, listen_address, no_body


def setup(ctx: Ctx, d: Directive) -> str:
    no_body(ctx, d)
    if len(d.args) > 1:
        raise ctx.error(d.line, "ready [ADDRESS]")
    return listen_address(ctx, d.args[0], "ready") if d.args else ":8181"
