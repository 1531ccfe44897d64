"""argparse the way node-cache's users type flags.

node-cache uses Go's ``flag`` package: ``-localip X``, ``-localip=X``,
``--localip X`` and ``--localip=X`` all mean the same, booleans are
``-flag``, ``-flag=true`` or ``-flag=false``, durations are ``60s`` or
``1m``. ``Flags.add`` registers every long flag under both its single-
and double-dash spelling; abbreviations are off (Go has none, and a
prefix could silently pick another flag).

An operator's mistake is one line on stderr and exit 2 (``Parser.error``),
never the whole usage; ``--help`` shows each flag's default. Values are
checked where they are parsed, so ``-max-inflight 0`` or ``-dns.port
70000`` is refused at start rather than misbehaving later.
"""
from __future__ import annotations

import argparse
import ipaddress
import sys


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", Formatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _get_option_tuples(self, option_string):
        # Python 3.11 still matches prefixes of single-dash options with
        # allow_abbrev off (-local would be -localip): no abbreviations at all
        return []

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see: {self.prog} --help)\n")
        raise SystemExit(2)


class Formatter(argparse.HelpFormatter):
    """Help with each flag's default, unless its text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS, "") or action.nargs == 0:
            return text
        return f"{text} (default %(default)s)" if text else "default %(default)s"


def flag(parser: argparse.ArgumentParser, name: str, *aliases: str, **kwargs) -> argparse.Action:
    """``-name`` and ``--name`` (and each alias both ways), one destination."""
    spellings = []
    for spelling in (name, *aliases):
        bare = spelling.lstrip("-")
        spellings += [f"-{bare}", f"--{bare}"] if len(bare) > 1 else [f"-{bare}"]
    return parser.add_argument(*dict.fromkeys(spellings), **kwargs)


def go_bool(text: str) -> bool:
    """Go's flag package booleans: -flag, -flag=true, -flag=false, 1, 0."""
    value = str(text).lower()
    if value in ("1", "t", "true"):
        return True
    if value in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (true or false)")


def go_seconds(text: str) -> float:
    """Seconds, as a number ("60") or a Go duration ("60s", "1m"); never negative."""
    from .config.corefile import CorefileError, Token
    from .plugins.grammar import Ctx as _Ctx, parse_duration
    try:
        value = parse_duration(_Ctx("flag"), Token(str(text), 0))
    except CorefileError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 60, 60s, 1m30s)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"negative duration {text!r}")
    return value


def positive_seconds(text: str) -> float:
    value = go_seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0")
    return value


def coalesce_window(text: str) -> float:
    """-udp-coalesce: 0 (off), or a window the loop's millisecond timers can keep."""
    from .defaults import UDP_COALESCE_MAX, UDP_COALESCE_MIN
    value = go_seconds(text)
    if value and not UDP_COALESCE_MIN - 1e-12 <= value <= UDP_COALESCE_MAX + 1e-12:
        raise argparse.ArgumentTypeError(f"{text!r}: 0 (off) or {UDP_COALESCE_MIN * 1000:g}ms.."
                                         f"{UDP_COALESCE_MAX * 1000:g}ms")
    return value


def size(text: str) -> int:
    """A byte count above 0: 65536, 64Ki, 64Mi, 1Gi (Kubernetes' binary suffixes) or k/M/G."""
    units = {"ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "k": 1000, "m": 1000**2, "g": 1000**3}
    t = text.strip().lower()
    value = None
    for suffix in sorted(units, key=len, reverse=True):
        if t.endswith(suffix) and t[:-len(suffix)].isdigit():
            value = int(t[:-len(suffix)]) * units[suffix]
            break
    if value is None and t.isdigit():
        value = int(t)
    if not value:
        raise argparse.ArgumentTypeError(f"not a byte count above 0: {text!r} (e.g. 65536, 64Ki, 64Mi)")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 1..65535")
    return value


def listen_address(text: str) -> str:
    """``HOST:PORT`` for an HTTP listener (``[V6]:PORT``, ``:PORT`` for every
    address, ``localhost``), or "" (off): checked at start, so a typo stops
    the start with one line instead of failing after DNS is already served."""
    if text == "":
        return text
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: want HOST:PORT (empty: off)")
    port(port_text)
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host.startswith("[") != host.endswith("]") or (host.startswith("[") and ":" not in bare):
        raise argparse.ArgumentTypeError(f"{text!r}: a bracketed host is an IPv6 address, [ADDR]:PORT")
    if bare not in ("", "localhost"):
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {bare!r} is not an IP address") from None
        if ":" in bare and not host.startswith("["):
            raise argparse.ArgumentTypeError(f"{text!r}: write an IPv6 host in brackets, [{bare}]:PORT")
    return text


def at_least(low: float, kind=int):
    """A number of ``kind`` that is at least ``low``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text}: must be at least {low:g}")
        return value
    parse.__name__ = f"number >= {low:g}"
    return parse
