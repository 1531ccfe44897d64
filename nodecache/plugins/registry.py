"""The plugins nodecache has, in chain order: CoreDNS's ``plugin.cfg``.

``ORDER`` is the one list: a server block's directives are kept in this
order (``config.parse``), its stages are chained in it (``server.block``)
and ``nodecache check`` describes it. The order is CoreDNS's (plugin.cfg,
restricted to these names), so a Corefile chains the same in both.

A ``Plugin`` is a directive's grammar (``setup``: syntax tree to frozen
options, errors as ``file:line: message``) and, for the directives that
act on queries, its ``stage`` factory. Directives without a stage
(``bind``, ``health``, ``ready``, ``prometheus``, ``reload``, ``timeouts``,
``bufsize``) configure the server around the chain; ``debug``, ``pprof`` and
``trace`` are accepted and ignored with a warning (their READMEs say why).
"""
from __future__ import annotations

from . import (bind, bufsize, cache, debug, dns64, errors, forward, health, hosts, k8s_schema, loadbalance, log, loop,
               pprof, prometheus, ready, reload, rewrite, template, timeouts, trace, whoami)
from .plugin import Build, Plugin

__all__ = ["Build", "Plugin", "ORDER", "PLUGINS", "lookup", "position", "stages"]


# CoreDNS's plugin.cfg order (the names nodecache has); k8s_schema, ours,
# sits where CoreDNS's autopath does (after the cache, before template)
_ALL = (timeouts.PLUGIN, reload.PLUGIN, bufsize.PLUGIN, bind.PLUGIN, debug.PLUGIN, trace.PLUGIN, ready.PLUGIN, health.PLUGIN, pprof.PLUGIN,
        prometheus.PLUGIN, errors.PLUGIN, log.PLUGIN, dns64.PLUGIN, loadbalance.PLUGIN, cache.PLUGIN, rewrite.PLUGIN,
        k8s_schema.PLUGIN, template.PLUGIN, hosts.PLUGIN, loop.PLUGIN, forward.PLUGIN, whoami.PLUGIN)
ORDER: tuple[str, ...] = tuple(p.name for p in _ALL)
PLUGINS: dict[str, Plugin] = {p.name: p for p in _ALL}


def lookup(name: str) -> Plugin | None:
    return PLUGINS.get(name)


def position(name: str) -> int:
    return ORDER.index(name)


def stages(directives, build: Build) -> list:
    """The stages for a block's (name, options) pairs, in chain order."""
    out = []
    for name, options in sorted(directives, key=lambda d: position(d[0])):
        plugin = PLUGINS[name]
        if plugin.stage is not None:
            out.append(plugin.stage(options, build))
    return out
