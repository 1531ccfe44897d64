"""What a plugin is to the registry, and what its stage is built from."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Plugin:
    name: str                           # the directive
    setup: Callable                     # (grammar.Ctx, corefile.Directive) -> frozen options
    stage: Callable | None = None       # (options, Build) -> chain.Stage; None: no stage
    summary: str = ""                   # one line for docs and ``check``
    metrics: Callable | None = None     # [(server, zones, stage)] -> metric families it owns
    repeatable: bool = False            # may appear more than once per block: options is a tuple of each
    support: str = "supported"          # supported | differs | ignored (``nodecache check``)
    note: str = ""                      # the difference from CoreDNS, or why it is ignored, in one line


@dataclass(frozen=True)
class Build:
    """What a stage factory may use of the block it is built for."""
    zones: tuple[str, ...]
    clock: Callable[[], float]
    budget: object = None   # ttlcache.store.ByteBudget shared by every cache
    retry: bool = True      # -forward-retry
    cork: object = None     # upstream.cork.Cork: the agent's, for its forwarders' connections


def ignored(name: str, what: str) -> Callable:
    """The setup of a directive nodecache accepts and ignores (``debug``,
    ``pprof``, ``trace``): any arguments, one warning saying why, no options."""
    log = logging.getLogger(f"nodecache.{name}")

    def setup(ctx, d) -> None:
        log.warning("%s:%d: %s is accepted and ignored: nodecache cannot %s (nodecache/plugins/%s/README.md)",
                    ctx.source, d.line, d.name, what, name)
    return setup

