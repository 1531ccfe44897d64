"""Directive meanings: Corefile syntax tree -> frozen ``model.Config``.

One ``_setup_*`` function per directive owns its grammar, CoreDNS's
defaults and its error messages (always ``file:line: message``). Checks
that span blocks (a zone served twice on one address) run at the end.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from pathlib import Path

from . import corefile
from .corefile import CorefileError, Directive, Token
from .model import (LOG_CLASSES, CacheClass, CacheConfig, Config, ForwardConfig, Health, LogConfig,
                    Prefetch, Reload, ServeStale, ServerBlock, Upstream)

DEFAULT_PORT = 53
POLICIES = ("random", "round_robin", "sequential")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


class _Ctx:
    def __init__(self, source: str):
        self.source = source

    def error(self, line: int, message: str) -> CorefileError:
        return CorefileError(self.source, line, message)


def read_corefile(path: str | Path) -> str:
    """A Corefile's text; raises CorefileError (unreadable, not UTF-8)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CorefileError(str(path), 0, f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise CorefileError(str(path), 0, f"not UTF-8 text: {exc}") from exc


def load(path: str | Path, env: dict[str, str] | None = None) -> Config:
    return parse_config(read_corefile(path), str(path), env)


def parse_config(text: str, source: str = "Corefile", env: dict[str, str] | None = None) -> Config:
    ctx = _Ctx(source)
    blocks = []
    for syntax in corefile.parse(text, source, env):
        blocks.extend(_server_blocks(ctx, syntax))
    _check_overlaps(ctx, blocks)
    listeners = sorted({(addr, b.port) for b in blocks for addr in (b.binds or ("::",))})
    return Config(tuple(blocks), source, tuple(listeners))


def parse_duration(ctx: _Ctx, tok: Token) -> float:
    """Go's time.ParseDuration syntax ("500ms", "1m30s"); a bare number is seconds."""
    text = tok.text
    try:
        value = float(text)
    except ValueError:
        pos, value = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise ctx.error(tok.line, f"invalid duration {text!r} (use e.g. 5s, 500ms, 1m)")
    if value < 0:
        raise ctx.error(tok.line, f"negative duration {text!r}")
    return value


def parse_int(ctx: _Ctx, tok: Token, what: str, low: int = 0, high: int = 2**31 - 1) -> int:
    try:
        value = int(tok.text)
    except ValueError:
        raise ctx.error(tok.line, f"{what}: {tok.text!r} is not a number") from None
    if not low <= value <= high:
        raise ctx.error(tok.line, f"{what}: {value} is outside {low}..{high}")
    return value


def normalize_zone(ctx: _Ctx, tok: Token, text: str | None = None) -> str:
    zone = (tok.text if text is None else text).lower()
    if zone.startswith("dns://"):
        zone = zone[6:]
    zone = zone.rstrip(".") + "."
    labels = zone[:-1].split(".") if zone != "." else []
    if not zone.isascii() or not zone.isprintable():
        raise ctx.error(tok.line, f"invalid zone {tok.text!r}: write a non-ASCII name in its IDNA form "
                                  f"(xn--...); control characters are not allowed")
    if "/" in zone or any(not 0 < len(label) < 64 for label in labels) or len(zone) > 254:
        raise ctx.error(tok.line, f"invalid zone {tok.text!r}")
    return zone


def _zone_key(ctx: _Ctx, tok: Token) -> tuple[str, int]:
    text = tok.text
    for scheme in ("tls://", "https://", "grpc://", "quic://"):
        if text.lower().startswith(scheme):
            raise ctx.error(tok.line, f"{scheme} servers are not supported: {text!r}")
    if text.lower().startswith("dns://"):
        text = text[6:]
    zone, sep, port = text.rpartition(":") if ":" in text else (text, "", "")
    port_num = parse_int(ctx, Token(port, tok.line), "port", 1, 65535) if sep else DEFAULT_PORT
    return normalize_zone(ctx, tok, zone), port_num


def _server_blocks(ctx: _Ctx, syntax: corefile.ServerBlockSyntax) -> list[ServerBlock]:
    if not syntax.keys:
        raise ctx.error(syntax.line, "server block without a zone")
    keys = [_zone_key(ctx, tok) for tok in syntax.keys]
    fields: dict = {}
    for d in syntax.directives:
        setup = _SETUP.get(d.name)
        if setup is None:
            raise ctx.error(d.line, f"unknown directive '{d.name}'")
        name = "binds" if d.name == "bind" else d.name
        if name in fields:
            raise ctx.error(d.line, f"'{d.name}' may appear only once per server block")
        fields[name] = setup(ctx, d)
    source = f"{ctx.source}:{syntax.line}"
    by_port: dict[int, list[str]] = {}
    for zone, port in keys:
        by_port.setdefault(port, []).append(zone)
    return [ServerBlock(zones=tuple(dict.fromkeys(zones)), port=port, source=source, **{
        "binds": (), **fields}) for port, zones in by_port.items()]


def _no_body(ctx: _Ctx, d: Directive) -> None:
    if d.body is not None:
        raise ctx.error(d.line, f"'{d.name}' takes no block")


def _setup_errors(ctx: _Ctx, d: Directive) -> bool:
    if d.args:
        raise ctx.error(d.line, "errors: takes no arguments")
    for sub in d.body or ():
        raise ctx.error(sub.line, f"errors: option '{sub.name}' is not supported")
    return True


def _setup_log(ctx: _Ctx, d: Directive) -> LogConfig:
    args = [a.text for a in d.args]
    names, fmt = [], None
    for i, tok in enumerate(d.args):
        if "{" in tok.text or i == len(args) - 1 and len(args) > 1 and tok.quoted:
            fmt = tok.text
            if i != len(args) - 1:
                raise ctx.error(tok.line, "log: the format must be the last argument")
        else:
            names.append(normalize_zone(ctx, tok))
    classes = set()
    for sub in d.body or ():
        if sub.name != "class":
            raise ctx.error(sub.line, f"log: unknown option '{sub.name}'")
        if not sub.args:
            raise ctx.error(sub.line, "log: class needs at least one of " + ", ".join(LOG_CLASSES))
        for tok in sub.args:
            if tok.text not in LOG_CLASSES:
                raise ctx.error(tok.line, f"log: unknown class {tok.text!r}")
            classes.add(tok.text)
    return LogConfig(tuple(names) or (".",), fmt, frozenset(classes or {"all"}))


def _setup_bind(ctx: _Ctx, d: Directive) -> tuple[str, ...]:
    _no_body(ctx, d)
    if not d.args:
        raise ctx.error(d.line, "bind: needs at least one address")
    out = []
    for tok in d.args:
        try:
            out.append(str(ipaddress.ip_address(tok.text.strip("[]"))))
        except ValueError:
            raise ctx.error(tok.line, f"bind: {tok.text!r} is not an IP address") from None
    return tuple(dict.fromkeys(out))


def _cache_class(ctx: _Ctx, sub: Directive, base: CacheClass) -> CacheClass:
    if not 1 <= len(sub.args) <= 3:
        raise ctx.error(sub.line, f"cache: {sub.name} CAPACITY [TTL [MINTTL]]")
    cap = parse_int(ctx, sub.args[0], f"cache {sub.name} capacity", 1)
    ttl = parse_int(ctx, sub.args[1], f"cache {sub.name} TTL", 1) if len(sub.args) > 1 else base.max_ttl
    minttl = parse_int(ctx, sub.args[2], f"cache {sub.name} MINTTL", 0) if len(sub.args) > 2 else base.min_ttl
    if minttl > ttl:
        raise ctx.error(sub.line, f"cache: {sub.name} MINTTL {minttl} exceeds TTL {ttl}")
    return CacheClass(cap, ttl, minttl)


def _setup_cache(ctx: _Ctx, d: Directive) -> CacheConfig:
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


def _prefetch(ctx: _Ctx, sub: Directive) -> Prefetch:
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


def _serve_stale(ctx: _Ctx, sub: Directive) -> ServeStale:
    if len(sub.args) > 2:
        raise ctx.error(sub.line, "cache: serve_stale [DURATION [immediate|verify]]")
    duration = parse_duration(ctx, sub.args[0]) if sub.args else 3600.0
    mode = sub.args[1].text if len(sub.args) > 1 else "immediate"
    if mode not in ("immediate", "verify"):
        raise ctx.error(sub.line, f"cache: serve_stale mode {mode!r} is not immediate or verify")
    return ServeStale(duration, mode == "verify")


def parse_upstream(ctx: _Ctx, tok: Token) -> list[Upstream]:
    """``IP``, ``IP:port``, ``[v6]:port``, ``dns://...``, or a resolv.conf path."""
    text = tok.text
    if text.startswith("dns://"):
        text = text[6:]
    elif "://" in text:
        raise ctx.error(tok.line, f"forward: only plain DNS upstreams are supported, not {text!r}")
    if text.startswith("/") or text.startswith("."):
        return resolv_conf_upstreams(ctx, tok)
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = parse_int(ctx, Token(rest.lstrip(":"), tok.line), "forward port", 1, 65535)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = parse_int(ctx, Token(port_text, tok.line), "forward port", 1, 65535)
    try:
        return [Upstream(str(ipaddress.ip_address(host)), port)]
    except ValueError:
        raise ctx.error(tok.line, f"forward: {tok.text!r} is not an IP[:port] or a file") from None


def resolv_conf_upstreams(ctx: _Ctx, tok: Token) -> list[Upstream]:
    try:
        lines = Path(tok.text).read_text(errors="replace").splitlines()
    except OSError as exc:
        raise ctx.error(tok.line, f"forward: cannot read {tok.text}: {exc.strerror}") from None
    except ValueError:  # a NUL in the path
        raise ctx.error(tok.line, f"forward: {tok.text!r} is not a file name") from None
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                out.append(Upstream(str(ipaddress.ip_address(fields[1].split("%")[0]))))
            except ValueError:
                continue
    if not out:
        raise ctx.error(tok.line, f"forward: no nameserver in {tok.text}")
    return out


def _setup_forward(ctx: _Ctx, d: Directive) -> ForwardConfig:
    if len(d.args) < 2:
        raise ctx.error(d.line, "forward: FROM TO... (at least one upstream)")
    to: list[Upstream] = []
    for tok in d.args[1:]:
        to.extend(parse_upstream(ctx, tok))
    cfg = ForwardConfig(normalize_zone(ctx, d.args[0]), tuple(dict.fromkeys(to)))
    for sub in d.body or ():
        cfg = _forward_option(ctx, cfg, sub)
    if cfg.force_tcp and cfg.prefer_udp:
        raise ctx.error(d.line, "forward: force_tcp and prefer_udp are mutually exclusive")
    return cfg


def _forward_option(ctx: _Ctx, cfg: ForwardConfig, sub: Directive) -> ForwardConfig:
    name, args = sub.name, sub.args
    flags = {"force_tcp", "prefer_udp"}
    single = {"expire", "max_fails", "health_check", "policy", "max_concurrent"}
    if name in flags and not args:
        return replace(cfg, **{name: True})
    if name == "except" and args:
        return replace(cfg, except_zones=tuple(normalize_zone(ctx, t) for t in args))
    if name in single and args:
        tok = args[0]
        if name == "expire":
            return replace(cfg, expire=parse_duration(ctx, tok))
        if name == "max_fails":
            return replace(cfg, max_fails=parse_int(ctx, tok, "forward max_fails"))
        if name == "health_check":
            return replace(cfg, health_check=parse_duration(ctx, tok) or 0.5)
        if name == "policy":
            if tok.text not in POLICIES:
                raise ctx.error(tok.line, f"forward: unknown policy {tok.text!r}")
            return replace(cfg, policy=tok.text)
        return replace(cfg, max_concurrent=parse_int(ctx, tok, "forward max_concurrent", 1))
    if name in ("tls", "tls_servername", "next", "failfast_all_unhealthy_upstreams", "failover"):
        raise ctx.error(sub.line, f"forward: option '{name}' is not supported")
    if name in flags | single | {"except"}:
        raise ctx.error(sub.line, f"forward: wrong arguments for '{name}'")
    raise ctx.error(sub.line, f"forward: unknown option '{name}'")


def listen_address(ctx: _Ctx, tok: Token, what: str) -> str:
    """``[HOST]:PORT`` (CoreDNS style, host optional) -> ``host:port``."""
    host, sep, port = tok.text.rpartition(":")
    if not sep:
        raise ctx.error(tok.line, f"{what}: {tok.text!r} is not [HOST]:PORT")
    parse_int(ctx, Token(port, tok.line), f"{what} port", 0, 65535)
    host = host.strip("[]")
    if host and host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ctx.error(tok.line, f"{what}: {host!r} is not an IP address") from None
    return f"{host}:{port}"


def _setup_prometheus(ctx: _Ctx, d: Directive) -> str:
    _no_body(ctx, d)
    if len(d.args) > 1:
        raise ctx.error(d.line, "prometheus [ADDRESS]")
    return listen_address(ctx, d.args[0], "prometheus") if d.args else ":9253"


def _setup_ready(ctx: _Ctx, d: Directive) -> str:
    _no_body(ctx, d)
    if len(d.args) > 1:
        raise ctx.error(d.line, "ready [ADDRESS]")
    return listen_address(ctx, d.args[0], "ready") if d.args else ":8181"


def _setup_health(ctx: _Ctx, d: Directive) -> Health:
    if len(d.args) > 1:
        raise ctx.error(d.line, "health [ADDRESS] { lameduck DURATION }")
    health = Health(listen_address(ctx, d.args[0], "health") if d.args else ":8080")
    for sub in d.body or ():
        if sub.name != "lameduck" or len(sub.args) != 1:
            raise ctx.error(sub.line, "health: only 'lameduck DURATION' is an option")
        health = replace(health, lameduck=parse_duration(ctx, sub.args[0]))
    return health


def _setup_reload(ctx: _Ctx, d: Directive) -> Reload:
    _no_body(ctx, d)
    if len(d.args) > 2:
        raise ctx.error(d.line, "reload [INTERVAL [JITTER]]")
    interval = parse_duration(ctx, d.args[0]) if d.args else 30.0
    jitter = parse_duration(ctx, d.args[1]) if len(d.args) > 1 else min(15.0, interval / 2)
    if interval < 2 or jitter < 1 and len(d.args) > 1 or jitter > interval / 2:
        raise ctx.error(d.line, "reload: INTERVAL must be >= 2s and JITTER between 1s and INTERVAL/2")
    return Reload(interval, jitter)


def _setup_loop(ctx: _Ctx, d: Directive) -> bool:
    _no_body(ctx, d)
    if d.args:
        raise ctx.error(d.line, "loop: takes no arguments")
    return True


_SETUP = {"errors": _setup_errors, "log": _setup_log, "bind": _setup_bind,
          "cache": _setup_cache, "forward": _setup_forward, "prometheus": _setup_prometheus,
          "ready": _setup_ready, "health": _setup_health, "reload": _setup_reload, "loop": _setup_loop}


def _check_overlaps(ctx: _Ctx, blocks: list[ServerBlock]) -> None:
    seen: dict[tuple[str, str, int], str] = {}
    for b in blocks:
        for zone in b.zones:
            for addr in b.binds or ("*",):
                key = (zone, addr, b.port)
                if key in seen:
                    line = int(b.source.rsplit(":", 1)[1])
                    raise ctx.error(line, f"zone {zone} on {addr}:{b.port} is already "
                                          f"served by the block at {seen[key]}")
                seen[key] = b.source
