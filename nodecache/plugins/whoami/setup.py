"""``whoami`` (no arguments) -> True."""
from __future__ import annotations

from ...config.corefile import Directive
from ..grammar import Ctx, no_args, no_body


def setup(ctx: Ctx, d: Directive) -> bool:
    no_args(ctx, d)
    no_body(ctx, d)
    return True
