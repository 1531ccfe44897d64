"""A server block at run time: its stage chain, and the hot path into its cache.

``fast`` is the cache-hit path the transports call first, synchronously:
with a cache and no query log, a fresh hit is answered here without a
task, an await or a parse. Everything else goes through ``serve``, the
stage chain, which always produces a reply: failures below become
SERVFAIL, anything unexpected is logged with its traceback and answered
SERVFAIL too, so no exception ever reaches a transport.
"""
from __future__ import annotations

import logging
import time

from ..config.model import ServerBlock
from ..dns.wire import SERVFAIL, error_reply
from ..forward.forwarder import ForwardFailure
from ..stages.base import Request, Stage, chain, render
from ..stages.cache import CacheStage
from ..stages.errors import ErrorsStage
from ..stages.forward import ForwardStage
from ..stages.log import LogStage
from .loop import LoopDetector

log = logging.getLogger("nodecache.server")


class Block:
    def __init__(self, cfg: ServerBlock, clock=time.monotonic, budget=None, retry: bool = True):
        self.cfg = cfg
        self.stages: list[Stage] = []
        self.cache_stage = self.forward_stage = None
        if cfg.errors:
            self.stages.append(ErrorsStage())
        if cfg.log:
            self.stages.append(LogStage(cfg.log))
        if cfg.cache:
            self.cache_stage = CacheStage(cfg.cache, cfg.zones, clock, budget)
            self.stages.append(self.cache_stage)
        if cfg.forward:
            self.forward_stage = ForwardStage(cfg.forward, retry)
            self.stages.append(self.forward_stage)
        self.handler = chain(self.stages)
        self.panics = 0
        self.loop = LoopDetector(cfg.zones[0]) if cfg.loop and cfg.forward else None
        if self.loop is not None:
            self.forward_stage.loop = self.loop
        # The hot path is the cache's own hit method, unless every query
        # must be logged. (A cache limited to some zones holds only entries
        # of those zones, so a hit is always a hit it would serve.)
        cache = self.cache_stage
        self.fast = cache.cache.hit if cache and not cfg.log else _no_fast_path
        # UDP hits may be memoised (server.memo) unless each hit must be seen
        # (prefetch counts them, the log writes them)
        self.memoizable = self.fast is not _no_fast_path and not cfg.cache.prefetch
        # A plain UDP miss may skip the chain (server.direct) when the chain
        # would only cache and forward it: the cache covers every name the
        # block serves, the forwarder takes them all, nothing logs each query.
        fwd = self.forward_stage
        self.direct = bool(cache and fwd and not cfg.log and not cfg.cache.zones
                           and fwd.from_zone == b"\x00" and not fwd.except_zones)

    @property
    def cache(self):
        return self.cache_stage.cache if self.cache_stage else None

    async def serve(self, request: Request) -> tuple[bytes, str]:
        """(reply, name of the stage that produced it)."""
        q = request.query
        try:
            answer = await self.handler(request)
            return render(request, answer), answer.plugin
        except ForwardFailure:
            return error_reply(q.data, SERVFAIL, q.qend, q.edns), "forward"
        except Exception:
            self.panics += 1  # coredns_panics_total
            log.exception("unexpected error serving %r", q.data[:64])
            return error_reply(q.data, SERVFAIL, q.qend, q.edns), ""

    async def probe_loop(self) -> None:
        """Send the loop probe through our forwarder (see server.loop)."""
        if self.loop is None or self.loop.detected:
            return
        try:
            await self.forward_stage.forwarder.resolve(self.loop.key)
        except Exception as exc:  # the probe's own answer does not matter, only its echo
            log.debug("loop probe for %s: %s", self.loop.zone, exc)
        if self.loop.detected:
            self.fast = _no_fast_path  # no cached answers either: the zone is down
            self.memoizable = False    # (the agent empties the memo tables)

    def close(self) -> None:
        for stage in self.stages:
            stage.close()


def _no_fast_path(key, data, qend, flags, edns):
    return None
