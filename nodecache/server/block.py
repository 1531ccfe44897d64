"""A server block at run time: its stage chain, and the hot path into its cache.

``fresh`` is the cache lookup the query path makes first, synchronously,
when the block's stages allow it (their declared ``Shortcuts``): a fresh
hit is answered from it without a task, an await or a parse. Whether hits
may be memoised and plain misses forwarded directly is derived the same
way, from the stages, never from other plugins' options. Everything
else goes through ``serve``, the
stage chain, which always produces a reply: failures below become
SERVFAIL, anything unexpected is logged with its traceback and answered
SERVFAIL too, so no exception ever reaches a transport.
"""
from __future__ import annotations

import logging
import time

from ..config.model import ServerBlock
from ..dns.wire import SERVFAIL, decode_name, error_reply
from ..observe.ratelog import Throttle
from ..forward.forwarder import ForwardFailure
from ..plugins import bufsize, registry
from ..plugins.cache.stage import CacheStage
from ..plugins.chain import Request, Stage, chain, render
from ..plugins.forward.stage import ForwardStage

log = logging.getLogger("nodecache.server")


class Block:
    def __init__(self, cfg: ServerBlock, clock=time.monotonic, budget=None, retry: bool = True, cork=None):
        self.cfg = cfg
        self.stages: list[Stage] = registry.stages(cfg.plugins, registry.Build(cfg.zones, clock, budget, retry, cork))
        # the two engines the query path and the agent reach (hit path,
        # direct miss, snapshot, loop probe); any other stage is only a link
        self.cache_stage = next((st for st in self.stages if isinstance(st, CacheStage)), None)
        self.forward_stage = next((st for st in self.stages if isinstance(st, ForwardStage)), None)
        self.handler = chain(self.stages)
        self.panics = 0
        self.throttle = Throttle(log)  # a panic's traceback: the query is a client's (observe.ratelog)
        self.down = False  # a stage went down (a forwarding loop): SERVFAIL for everything
        for stage in self.stages:
            stage.on_down = self._went_down
        # the stages with work of their own at start (the loop probe), and
        # those that may refuse one direct miss (the loop's probe)
        self.starting = [st for st in self.stages if type(st).start is not Stage.start]
        self.refuses_direct = tuple(st.refuses_direct for st in self.stages
                                    if type(st).refuses_direct is not Stage.refuses_direct)
        # the largest UDP reply for this block's clients (bufsize; never above ours)
        self.max_udp = bufsize.max_udp(cfg)
        self._derive_shortcuts()

    def _derive_shortcuts(self) -> None:
        """The shortcuts this block allows, from its stages' declarations
        (``plugins.chain.Shortcuts``) and nothing else: ``fresh`` (the hit path
        answers from the cache without the chain: the cache and every stage
        before it allow ``hit``), ``memoizable`` (they all allow ``memo``
        too), ``direct`` (a cache and a forwarder, and every stage allows it)."""
        cache, stages = self.cache_stage, self.stages
        declared = [st.shortcuts() for st in stages]
        before = declared[:stages.index(cache) + 1] if cache is not None else []
        hit = bool(before) and all(d.hit for d in before)
        self.fresh = cache.cache.fresh if hit else _no_entry
        self.memoizable = hit and all(d.memo for d in before)
        self.direct = bool(cache and self.forward_stage) and all(d.direct for d in declared)

    @property
    def cache(self):
        return self.cache_stage.cache if self.cache_stage else None

    @property
    def forwarder(self):
        return self.forward_stage.forwarder if self.forward_stage else None

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
            self.throttle.error("panic", "unexpected error serving %s %s", decode_name(q.qname), q.qtype,
                                exc_info=True)
            return error_reply(q.data, SERVFAIL, q.qend, q.edns), ""

    async def start(self) -> None:
        """The stages' own work at start and after a reload (the loop probe)."""
        for stage in self.starting:
            await stage.start()

    def _went_down(self) -> None:
        """A stage says this block cannot answer (a forwarding loop): no
        cached answers either, no shortcut; the query path answers SERVFAIL
        (and the agent empties the memo tables)."""
        self.down = True
        self.fresh = _no_entry
        self.memoizable = self.direct = False

    def trouble(self, now: float) -> str | None:
        """Why this block cannot answer now, from its stages (for /ready)."""
        for stage in self.stages:
            why = stage.trouble(now)
            if why:
                return why
        return None

    def close(self) -> None:
        for stage in self.stages:
            stage.close()


def _no_entry(key: bytes, now: float):
    """``fresh`` of a block whose hits must go through the chain."""
    return None
