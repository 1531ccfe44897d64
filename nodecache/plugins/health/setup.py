"""``health [ADDRESS] { lameduck DURATION }`` -> ``Health``."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ...config.corefile import Directive
from ..grammar import Ctx, listen_address, parse_duration


@dataclass(frozen=True)
class Health:
    addr: str = ":8080"
    lameduck: float = 0.0   # keep answering (and /health OK) this long after SIGTERM



def setup(ctx: Ctx, d: Directive) -> Health:
    if len(d.args) > 1:
        raise ctx.error(d.line, "health [ADDRESS] { lameduck DURATION }")
    health = Health(listen_address(ctx, d.args[0], "health") if d.args else ":8080")
    for sub in d.body or ():
        if sub.name != "lameduck" or len(sub.args) != 1:
            raise ctx.error(sub.line, "health: only 'lameduck DURATION' is an option")
        health = replace(health, lameduck=parse_duration(ctx, sub.args[0]))
    return health
