"""``hosts [FILE [ZONES...]] { [INLINE...]; ttl SECONDS; no_reverse; reload DURATION;
fallthrough [ZONES...] }`` -> ``HostsConfig``, with CoreDNS's defaults
(/etc/hosts, TTL 3600, reload every 5s). An inline line is ``IP NAME...``."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ...config.corefile import Directive
from ..grammar import Ctx, normalize_zone, parse_duration, parse_int

OPTIONS = ("ttl", "no_reverse", "reload", "fallthrough")


@dataclass(frozen=True)
class HostsConfig:
    file: str = "/etc/hosts"
    zones: tuple[str, ...] = ()                        # empty: the server block's zones
    inline: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (address, names)
    ttl: int = 3600
    reverse: bool = True                               # synthesise PTR records
    reload: float = 5.0                                # 0: never re-read the file
    fallthrough: tuple[str, ...] | None = None         # None: off; (): every name


def setup(ctx: Ctx, d: Directive) -> HostsConfig:
    args = list(d.args)
    file = args.pop(0).text if args else "/etc/hosts"
    zones = tuple(normalize_zone(ctx, t) for t in args)
    inline, ttl, reverse, reload, fall = [], 3600, True, 5.0, None
    for sub in d.body or ():
        if sub.name == "ttl":
            if len(sub.args) != 1:
                raise ctx.error(sub.line, "hosts: ttl SECONDS")
            ttl = parse_int(ctx, sub.args[0], "hosts ttl", 1, 2**31 - 1)
        elif sub.name == "no_reverse":
            reverse = False
        elif sub.name == "reload":
            if len(sub.args) != 1:
                raise ctx.error(sub.line, "hosts: reload DURATION")
            reload = parse_duration(ctx, sub.args[0])
        elif sub.name == "fallthrough":
            fall = tuple(normalize_zone(ctx, t) for t in sub.args)
        elif fall is None and sub.body is None:
            inline.append(_inline(ctx, sub))
        else:
            raise ctx.error(sub.line, f"hosts: unknown option or misplaced entry '{sub.name}'")
    return HostsConfig(file, zones, tuple(inline), ttl, reverse, reload, fall)


def _inline(ctx: Ctx, sub: Directive) -> tuple[str, tuple[str, ...]]:
    try:
        addr = str(ipaddress.ip_address(sub.name.split("%")[0]))
    except ValueError:
        raise ctx.error(sub.line, f"hosts: {sub.name!r} is neither an option ({', '.join(OPTIONS)}) "
                                  f"nor an IP address") from None
    if not sub.args:
        raise ctx.error(sub.line, f"hosts: {sub.name} has no name")
    return addr, tuple(normalize_zone(ctx, t) for t in sub.args)
