"""``trace [ENDPOINT-TYPE] [ENDPOINT] {`` -> None: accepted with whatever arguments,
and ignored with one warning (README.md says why)."""
from __future__ import annotations

import logging

from ...config.corefile import Directive
from ..grammar import Ctx

log = logging.getLogger("nodecache.trace")


def setup(ctx: Ctx, d: Directive) -> None:
    log.warning("%s:%d: %s is accepted and ignored: nodecache cannot export traces (nodecache/plugins/trace/README.md)",
                ctx.source, d.line, d.name)
    return None
