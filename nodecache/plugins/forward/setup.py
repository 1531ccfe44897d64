"""``forward FROM TO... { except ZONES; force_tcp; prefer_udp; expire; max_fails;
health_check; policy; max_concurrent }`` -> ``upstream.options.ForwardConfig``.
TO is ``IP[:port]``, ``[v6]:port``, ``dns://...`` or a resolv.conf file."""
from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

from ...config.corefile import Directive, Token
from ...upstream.options import ForwardConfig, Upstream
from ..grammar import DEFAULT_PORT, Ctx, normalize_zone, parse_duration, parse_int

POLICIES = ("random", "round_robin", "sequential")


def parse_upstream(ctx: Ctx, tok: Token) -> list[Upstream]:
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


def resolv_conf_upstreams(ctx: Ctx, tok: Token) -> list[Upstream]:
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


def setup(ctx: Ctx, d: Directive) -> ForwardConfig:
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


def _forward_option(ctx: Ctx, cfg: ForwardConfig, sub: Directive) -> ForwardConfig:
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
