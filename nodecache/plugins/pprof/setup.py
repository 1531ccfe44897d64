"""``pprof [ADDRESS] {`` -> None: accepted with whatever arguments,
and ignored with one warning (README.md says why)."""
from __future__ import annotations

import logging

from ...config.corefile import Directive
from ..grammar import Ctx

log = logging.getLogger("nodecache.pprof")


def setup(ctx: Ctx, d: Directive) -> None:
    log.warning("%s:%d: %s is accepted and ignored: nodecache cannot serve Go's pprof profiles (nodecache/plugins/pprof/README.md)",
                ctx.source, d.line, d.name)
    return None
