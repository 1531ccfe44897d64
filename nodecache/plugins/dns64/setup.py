"""``dns64 [PREFIX] { prefix IPV6/LEN; translate_all; allow_ipv4 }`` ->
``Dns64Config`` (RFC 6147; CoreDNS's defaults: 64:ff9b::/96, translate
only when there is no AAAA, only for clients over IPv6)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ...config.corefile import Directive, Token
from ..grammar import Ctx


@dataclass(frozen=True)
class Dns64Config:
    prefix: ipaddress.IPv6Network = ipaddress.IPv6Network("64:ff9b::/96")
    translate_all: bool = False   # synthesise even when AAAA records exist
    allow_ipv4: bool = False      # translate for clients over IPv4 too


def _prefix(ctx: Ctx, tok: Token) -> ipaddress.IPv6Network:
    try:
        net = ipaddress.IPv6Network(tok.text)
    except ValueError:
        raise ctx.error(tok.line, f"dns64: {tok.text!r} is not an IPv6 prefix") from None
    if net.prefixlen not in (32, 40, 48, 56, 64, 96):  # RFC 6052 §2.2
        raise ctx.error(tok.line, f"dns64: prefix length {net.prefixlen} is not 32, 40, 48, 56, 64 or 96")
    return net


def setup(ctx: Ctx, d: Directive) -> Dns64Config:
    if len(d.args) > 1:
        raise ctx.error(d.line, "dns64 [PREFIX]")
    prefix = _prefix(ctx, d.args[0]) if d.args else Dns64Config.prefix
    translate_all = allow_ipv4 = False
    for sub in d.body or ():
        if sub.name == "prefix" and len(sub.args) == 1:
            prefix = _prefix(ctx, sub.args[0])
        elif sub.name == "translate_all" and not sub.args:
            translate_all = True
        elif sub.name == "allow_ipv4" and not sub.args:
            allow_ipv4 = True
        else:
            raise ctx.error(sub.line, f"dns64: unknown option or wrong arguments '{sub.name}'")
    return Dns64Config(prefix, translate_all, allow_ipv4)
