"""``reload [INTERVAL [JITTER]]`` -> ``Reload`` (CoreDNS: 30s, jitter 15s)."""
from __future__ import annotations

from dataclasses import dataclass

from ...config.corefile import Directive
from ..grammar import Ctx, no_body, parse_duration


@dataclass(frozen=True)
class Reload:
    interval: float = 30.0
    jitter: float = 15.0



def setup(ctx: Ctx, d: Directive) -> Reload:
    no_body(ctx, d)
    if len(d.args) > 2:
        raise ctx.error(d.line, "reload [INTERVAL [JITTER]]")
    interval = parse_duration(ctx, d.args[0]) if d.args else 30.0
    jitter = parse_duration(ctx, d.args[1]) if len(d.args) > 1 else min(15.0, interval / 2)
    if interval < 2 or jitter < 1 and len(d.args) > 1 or jitter > interval / 2:
        raise ctx.error(d.line, "reload: INTERVAL must be >= 2s and JITTER between 1s and INTERVAL/2")
    return Reload(interval, jitter)
