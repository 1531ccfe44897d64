"""``cache [TTL] [ZONES...] { success|denial CAPACITY [TTL [MINTTL]]; servfail DURATION;
prefetch AMOUNT [DURATION [PERCENTAGE%]]; serve_stale [DURATION [immediate|verify]] }``
-> ``ttlcache.options.CacheConfig``, with CoreDNS's defaults and limits."""
from __future__ import annotations

from dataclasses import replace

from ...ttlcache.options import CacheClass, CacheConfig, Prefetch, ServeStale
from ...config.corefile import Directive, Token
from ..grammar import Ctx, normalize_zone, parse_duration, parse_int


def _cache_class(ctx: Ctx, sub: Directive, base: CacheClass) -> CacheClass:
    if not 1 <= len(sub.args) <= 3:
        raise ctx.error(sub.line, f"cache: {sub.name} CAPACITY [TTL [MINTTL]]")
    cap = parse_int(ctx, sub.args[0], f"cache {sub.name} capacity", 1)
    ttl = parse_int(ctx, sub.args[1], f"cache {sub.name} TTL", 1) if len(sub.args) > 1 else base.max_ttl
    minttl = parse_int(ctx, sub.args[2], f"cache {sub.name} MINTTL", 0) if len(sub.args) > 2 else base.min_ttl
    if minttl > ttl:
        raise ctx.error(sub.line, f"cache: {sub.name} MINTTL {minttl} exceeds TTL {ttl}")
    return CacheClass(cap, ttl, minttl)


def setup(ctx: Ctx, d: Directive) -> CacheConfig:
    cfg = CacheConfig()
    args = list(d.args)
    if args and args[0].text.isdigit():
        ttl = parse_int(ctx, args.pop(0), "cache TTL", 1)
        cfg = replace(cfg, success=replace(cfg.success, max_ttl=ttl),
                      denial=replace(cfg.denial, max_ttl=ttl))
    cfg = replace(cfg, zones=tuple(normalize_zone(ctx, t) for t in args))
    for sub in d.body or ():
        if sub.name in ("success", "denial"):
            cfg = replace(cfg, **{sub.name: _cache_class(ctx, sub, getattr(cfg, sub.name))})
        elif sub.name == "servfail":
            if len(sub.args) != 1:
                raise ctx.error(sub.line, "cache: servfail DURATION")
            ttl = parse_duration(ctx, sub.args[0])
            if ttl > 300:
                raise ctx.error(sub.line, "cache: servfail duration may not exceed 5m")
            cfg = replace(cfg, servfail_ttl=ttl)
        elif sub.name == "prefetch":
            cfg = replace(cfg, prefetch=_prefetch(ctx, sub))
        elif sub.name == "serve_stale":
            cfg = replace(cfg, serve_stale=_serve_stale(ctx, sub))
        else:
            raise ctx.error(sub.line, f"cache: unknown option '{sub.name}'")
    return cfg


def _prefetch(ctx: Ctx, sub: Directive) -> Prefetch:
    if not 1 <= len(sub.args) <= 3:
        raise ctx.error(sub.line, "cache: prefetch AMOUNT [DURATION [PERCENTAGE%]]")
    amount = parse_int(ctx, sub.args[0], "cache prefetch amount", 1)
    duration, pct = 60.0, 10
    for tok in sub.args[1:]:
        if tok.text.endswith("%"):
            pct = parse_int(ctx, Token(tok.text[:-1], tok.line), "cache prefetch percentage", 10, 90)
        else:
            duration = parse_duration(ctx, tok)
    return Prefetch(amount, duration, pct)


def _serve_stale(ctx: Ctx, sub: Directive) -> ServeStale:
    if len(sub.args) > 2:
        raise ctx.error(sub.line, "cache: serve_stale [DURATION [immediate|verify]]")
    duration = parse_duration(ctx, sub.args[0]) if sub.args else 3600.0
    mode = sub.args[1].text if len(sub.args) > 1 else "immediate"
    if mode not in ("immediate", "verify"):
        raise ctx.error(sub.line, f"cache: serve_stale mode {mode!r} is not immediate or verify")
    return ServeStale(duration, mode == "verify")
