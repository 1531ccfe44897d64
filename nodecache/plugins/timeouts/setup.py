"""``timeouts { read DURATION; write DURATION; idle DURATION }`` -> ``Timeouts``
(CoreDNS: each between 1s and 24h)."""
from __future__ import annotations

from dataclasses import dataclass

from ...config.corefile import Directive
from ..grammar import Ctx, parse_duration


@dataclass(frozen=True)
class Timeouts:
    read: float | None = None
    write: float | None = None
    idle: float | None = None

    def connection_idle(self, default: float) -> float:
        """nodecache keeps one timer per TCP connection (no complete query,
        or a reply not read, for this long closes it): the smallest given."""
        given = [t for t in (self.read, self.write, self.idle) if t is not None]
        return min(given) if given else default


def setup(ctx: Ctx, d: Directive) -> Timeouts:
    if d.args:
        raise ctx.error(d.line, "timeouts: takes no arguments, only a block")
    if not d.body:
        raise ctx.error(d.line, "timeouts: needs at least one of read, write, idle")
    values = {}
    for sub in d.body:
        if sub.name not in ("read", "write", "idle") or len(sub.args) != 1:
            raise ctx.error(sub.line, "timeouts: read|write|idle DURATION")
        value = parse_duration(ctx, sub.args[0])
        if not 1 <= value <= 86400:
            raise ctx.error(sub.line, f"timeouts: {sub.name} must be between 1s and 24h")
        values[sub.name] = value
    return Timeouts(**values)
