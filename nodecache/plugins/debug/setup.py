"""``debug`` -> None: accepted with whatever arguments,
and ignored with one warning (README.md says why)."""
from __future__ import annotations

import logging

from ...config.corefile import Directive
from ..grammar import Ctx

log = logging.getLogger("nodecache.debug")


def setup(ctx: Ctx, d: Directive) -> None:
    log.warning("%s:%d: %s is accepted and ignored: nodecache cannot turn off panic recovery (nodecache/plugins/debug/README.md)",
                ctx.source, d.line, d.name)
    return None
