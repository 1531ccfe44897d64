"""What every directive's grammar shares: the error context and the
value parsers (durations, numbers, zones, listen addresses), with
CoreDNS's syntax. A leaf module: the probe's command line imports it.
"""
from __future__ import annotations

import ipaddress
import re

from ..config.corefile import CorefileError, Directive, Token

DEFAULT_PORT = 53
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


class Ctx:
    """Where a directive came from, for its ``file:line: message`` errors."""

    def __init__(self, source: str):
        self.source = source
        self.zones: tuple[str, ...] = ()  # the server block being read (a default some directives take)

    def error(self, line: int, message: str) -> CorefileError:
        return CorefileError(self.source, line, message)


def parse_duration(ctx: Ctx, tok: Token) -> float:
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


def parse_int(ctx: Ctx, tok: Token, what: str, low: int = 0, high: int = 2**31 - 1) -> int:
    try:
        value = int(tok.text)
    except ValueError:
        raise ctx.error(tok.line, f"{what}: {tok.text!r} is not a number") from None
    if not low <= value <= high:
        raise ctx.error(tok.line, f"{what}: {value} is outside {low}..{high}")
    return value


def normalize_zone(ctx: Ctx, tok: Token, text: str | None = None) -> str:
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


def listen_address(ctx: Ctx, tok: Token, what: str) -> str:
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


def no_body(ctx: Ctx, d: Directive) -> None:
    if d.body is not None:
        raise ctx.error(d.line, f"'{d.name}' takes no block")


def no_args(ctx: Ctx, d: Directive) -> None:
    if d.args:
        raise ctx.error(d.line, f"{d.name}: takes no arguments")
