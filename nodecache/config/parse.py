"""Corefile text -> frozen ``model.Config``.

Server block keys (zones and ports) are read here; each directive is read
by its plugin's ``setup`` (``plugins.registry``: grammar, CoreDNS's
defaults, errors always ``file:line: message``), and the block keeps the
options in the registry's chain order. Checks that span blocks (a zone
served twice on one address) run at the end.
"""
from __future__ import annotations

from pathlib import Path

from ..plugins import registry
from ..plugins.grammar import DEFAULT_PORT, Ctx, normalize_zone, parse_int
from . import corefile
from .corefile import CorefileError, Token
from .model import Config, ServerBlock


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
    ctx = Ctx(source)
    blocks = []
    for syntax in corefile.parse(text, source, env):
        blocks.extend(_server_blocks(ctx, syntax))
    _check_overlaps(ctx, blocks)
    listeners = sorted({(addr, b.port) for b in blocks for addr in (b.binds or ("::",))})
    return Config(tuple(blocks), source, tuple(listeners))


def _zone_key(ctx: Ctx, tok: Token) -> tuple[str, int]:
    text = tok.text
    for scheme in ("tls://", "https://", "grpc://", "quic://"):
        if text.lower().startswith(scheme):
            raise ctx.error(tok.line, f"{scheme} servers are not supported: {text!r}")
    if text.lower().startswith("dns://"):
        text = text[6:]
    zone, sep, port = text.rpartition(":") if ":" in text else (text, "", "")
    port_num = parse_int(ctx, Token(port, tok.line), "port", 1, 65535) if sep else DEFAULT_PORT
    return normalize_zone(ctx, tok, zone), port_num


def _server_blocks(ctx: Ctx, syntax: corefile.ServerBlockSyntax) -> list[ServerBlock]:
    if not syntax.keys:
        raise ctx.error(syntax.line, "server block without a zone")
    keys = [_zone_key(ctx, tok) for tok in syntax.keys]
    ctx.zones = tuple(dict.fromkeys(zone for zone, _ in keys))
    options: dict[str, object] = {}
    for d in syntax.directives:
        plugin = registry.lookup(d.name)
        if plugin is None:
            raise ctx.error(d.line, f"unknown directive '{d.name}'")
        if plugin.repeatable:
            options[d.name] = options.get(d.name, ()) + (plugin.setup(ctx, d),)
            continue
        if d.name in options:
            raise ctx.error(d.line, f"'{d.name}' may appear only once per server block")
        options[d.name] = plugin.setup(ctx, d)
    plugins = tuple(sorted(options.items(), key=lambda item: registry.position(item[0])))
    source = f"{ctx.source}:{syntax.line}"
    by_port: dict[int, list[str]] = {}
    for zone, port in keys:
        by_port.setdefault(port, []).append(zone)
    return [ServerBlock(zones=tuple(dict.fromkeys(zones)), port=port, source=source, plugins=plugins)
            for port, zones in by_port.items()]


def _check_overlaps(ctx: Ctx, blocks: list[ServerBlock]) -> None:
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
