"""``prometheus [ADDRESS]`` -> the listen address of ``/metrics`` (default :9253)."""
from __future__ import annotations

from ...config.corefile import Directive
from ..grammar import Ctx, listen_address, no_body


def setup(ctx: Ctx, d: Directive) -> str:
    no_body(ctx, d)
    if len(d.args) > 1:
        raise ctx.error(d.line, "prometheus [ADDRESS]")
    return listen_address(ctx, d.args[0], "prometheus") if d.args else ":9253"
