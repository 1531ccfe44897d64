"""``forward FROM TO... { except ZONES; force_tcp; prefer_udp; expire; max_fails;
health_check DUR [no_rec] [domain FQDN]; policy; max_concurrent; read_timeout;
tls [CERT KEY] [CA]; tls_servername NAME; doh_method GET|POST; next RCODE...;
next_on_nodata; failover RCODE...; failfast_all_unhealthy_upstreams }`` -> ``upstream.options.ForwardConfig``.
TO is ``IP[:port]``, ``[v6]:port``, ``dns://...``, ``tls://...``,
``https://...`` or a resolv.conf file."""
from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

from ...config.corefile import Directive, Token
from ...upstream.options import DNS, HTTPS, TLS, ForwardConfig, TlsFiles, Upstream
from ...observe.families import RCODES
from ...upstream.tls import TlsSetupError, client_context
from ..grammar import DEFAULT_PORT, Ctx, normalize_zone, parse_duration, parse_int

POLICIES = ("random", "round_robin", "sequential")
# CoreDNS's forward options we do not take (README.md, "Not supported")
_NOT_SUPPORTED = {"max_idle_conns", "max_connect_attempts", "source_address", "resolver"}


_SCHEMES = {"dns://": (DNS, DEFAULT_PORT), "tls://": (TLS, 853), "https://": (HTTPS, 443)}


def parse_upstream(ctx: Ctx, tok: Token) -> list[Upstream]:
    """``IP``, ``IP:port``, ``[v6]:port``, ``dns://...``, a resolv.conf path,
    ``tls://IP[%NAME][:port]`` (RFC 7858; NAME: the certificate's, as
    CoreDNS writes it) or ``https://IP[:port][/path]`` (RFC 8484; the path
    defaults to /dns-query)."""
    text = tok.text
    proto, default_port = DNS, DEFAULT_PORT
    for scheme, (proto_of, port_of) in _SCHEMES.items():
        if text.startswith(scheme):
            text, proto, default_port = text[len(scheme):], proto_of, port_of
            break
    else:
        if "://" in text:
            raise ctx.error(tok.line, f"forward: unknown scheme in {text!r} (dns://, tls:// or https://)")
        if text.startswith("/") or text.startswith("."):
            return resolv_conf_upstreams(ctx, tok)
    path = "/dns-query"
    if proto == HTTPS and "/" in text:
        text, slash, rest = text.partition("/")
        path = slash + rest
    name = ""
    if proto == TLS and "%" in text:
        text, _, rest = text.partition("%")
        name, colon, port_text = rest.partition(":")
        text += colon + port_text
        if not name:
            raise ctx.error(tok.line, f"forward: an empty server name in {tok.text!r}")
    host, port = _host_port(ctx, tok, text, default_port)
    return [Upstream(host, port, proto, name, path)]


def _host_port(ctx: Ctx, tok: Token, text: str, port: int) -> tuple[str, int]:
    host = text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = parse_int(ctx, Token(rest.lstrip(":"), tok.line), "forward port", 1, 65535)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = parse_int(ctx, Token(port_text, tok.line), "forward port", 1, 65535)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ctx.error(tok.line, f"forward: {tok.text!r} is not an IP[:port] or a file (upstreams are "
                                  f"addresses: name a TLS upstream's certificate with tls_servername)") from None


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
    if cfg.tls_servername and any(u.server_name for u in cfg.to):
        raise ctx.error(d.line, "forward: tls_servername and a per-upstream name (tls://IP%NAME) both set")
    if any(u.encrypted for u in cfg.to):
        _check_tls(ctx, d, cfg)
    return cfg


def _check_tls(ctx: Ctx, d: Directive, cfg: ForwardConfig) -> None:
    """The TLS files load now, so a wrong path or key is an error at
    start, not a failed handshake later."""
    try:
        client_context(cfg.tls, alpn=None)
    except TlsSetupError as exc:
        raise ctx.error(d.line, f"forward: tls: {exc}") from None


def _forward_option(ctx: Ctx, cfg: ForwardConfig, sub: Directive) -> ForwardConfig:
    name, args = sub.name, sub.args
    flags = {"force_tcp", "prefer_udp", "failfast_all_unhealthy_upstreams", "next_on_nodata"}
    single = {"expire", "max_fails", "policy", "max_concurrent", "tls_servername", "doh_method", "read_timeout"}
    if name in flags and not args:
        return replace(cfg, **{name: True})
    if name == "except" and args:
        return replace(cfg, except_zones=tuple(normalize_zone(ctx, t) for t in args))
    if name == "health_check" and args:
        return _health_check(ctx, cfg, sub)
    if name in ("next", "failover") and args:
        codes = tuple(_rcode(ctx, tok, name) for tok in args)
        return replace(cfg, **{f"{name}_rcodes": codes})
    if name == "tls" and len(args) <= 3:
        files = [t.text for t in args]
        if len(files) == 1:
            return replace(cfg, tls=TlsFiles(ca=files[0]))
        return replace(cfg, tls=TlsFiles(*files))
    if name in single and len(args) == 1:
        return _single_option(ctx, cfg, name, args[0])
    if name in flags | single | {"except", "next", "failover", "tls", "health_check"}:
        raise ctx.error(sub.line, f"forward: wrong arguments for '{name}'")
    if name in _NOT_SUPPORTED:
        raise ctx.error(sub.line, f"forward: option '{name}' is not supported (plugins/forward/README.md says why)")
    raise ctx.error(sub.line, f"forward: unknown option '{name}'")


def _single_option(ctx: Ctx, cfg: ForwardConfig, name: str, tok: Token) -> ForwardConfig:
    if name == "expire":
        return replace(cfg, expire=parse_duration(ctx, tok))
    if name == "max_fails":
        return replace(cfg, max_fails=parse_int(ctx, tok, "forward max_fails"))
    if name == "read_timeout":  # each attempt's wait for a reply (CoreDNS's, default 2s)
        return replace(cfg, attempt_timeout=min(parse_duration(ctx, tok) or 2.0, cfg.deadline))
    if name == "policy":
        if tok.text not in POLICIES:
            raise ctx.error(tok.line, f"forward: unknown policy {tok.text!r}")
        return replace(cfg, policy=tok.text)
    if name == "tls_servername":
        return replace(cfg, tls_servername=tok.text)
    if name == "doh_method":
        if tok.text.upper() not in ("GET", "POST"):
            raise ctx.error(tok.line, f"forward: doh_method is GET or POST, not {tok.text!r}")
        return replace(cfg, doh_method=tok.text.upper())
    return replace(cfg, max_concurrent=parse_int(ctx, tok, "forward max_concurrent", 1))


def _health_check(ctx: Ctx, cfg: ForwardConfig, sub: Directive) -> ForwardConfig:
    """``health_check DURATION [no_rec] [domain FQDN]``."""
    args = list(sub.args)
    cfg = replace(cfg, health_check=parse_duration(ctx, args.pop(0)) or 0.5)
    while args:
        tok = args.pop(0)
        if tok.text == "no_rec":
            cfg = replace(cfg, health_rd=False)
        elif tok.text == "domain" and args:
            cfg = replace(cfg, health_domain=normalize_zone(ctx, args.pop(0)))
        else:
            raise ctx.error(tok.line, f"forward: health_check DURATION [no_rec] [domain FQDN], not {tok.text!r}")
    return cfg


def _rcode(ctx: Ctx, tok: Token, option: str) -> int:
    """An rcode by its name (miekg/dns's StringToRcode, which CoreDNS reads)."""
    text = tok.text.upper()
    names = {n: i for i, n in enumerate(RCODES)} | {"NOTIMPL": 4}
    if text not in names:
        raise ctx.error(tok.line, f"forward: {tok.text} is not a valid rcode")
    if option == "failover" and names[text] == 0:
        raise ctx.error(tok.line, "forward: NOERROR cannot be used in failover")
    return names[text]
