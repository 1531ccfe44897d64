"""A server block at run time: its stage chain at each of its speeds.

``front`` is the block's fast front (``plugins.chain.front_of``), which
the query path calls first, synchronously: a fresh hit is answered there
without a task, an await or a full parse. ``take`` is its callback speed
for a miss (``plugins.chain.link_takes``). Whether the front's replies may
be memoised is derived the same way, from the stages' declared
``Shortcuts``, never from other plugins' options. Everything else goes
through ``serve``, the stage chain, which always produces a reply:
failures below become SERVFAIL, anything unexpected is logged with its
traceback and answered SERVFAIL too, so no exception ever reaches a
transport.
"""
from __future__ import annotations

import logging
import time

from ..config.model import ServerBlock
from ..dns.wire import SERVFAIL, decode_name, error_reply
from ..observe.ratelog import Throttle
from ..upstream.forwarder import ForwardFailure
from ..plugins import bufsize, registry
from ..plugins.cache.stage import CacheStage
from ..plugins.chain import Request, Stage, chain, front_of, link_takes, render
from ..plugins.forward.stage import ForwardStage

log = logging.getLogger("nodecache.server")


class Block:
    def __init__(self, cfg: ServerBlock, clock=time.monotonic, budget=None, retry: bool = True, cork=None):
        self.cfg = cfg
        self.stages: list[Stage] = registry.stages(cfg.plugins, registry.Build(cfg.zones, clock, budget, retry, cork))
        # the two engines the agent reaches (the memo's budget, the
        # snapshot, status); for queries, every stage is only a link
        self.cache_stage = next((st for st in self.stages if isinstance(st, CacheStage)), None)
        self.forward_stage = next((st for st in self.stages if isinstance(st, ForwardStage)), None)
        self.handler = chain(self.stages)
        self._panics = 0
        self.throttle = Throttle(log)  # a panic's traceback: the query is a client's (observe.ratelog)
        self.down = False  # a stage went down (a forwarding loop): SERVFAIL for everything
        for stage in self.stages:
            stage.on_down = self._went_down
        # the stages with work of their own at start (the loop probe)
        self.starting = [st for st in self.stages if type(st).start is not Stage.start]
        # the largest UDP reply for this block's clients (bufsize; never above ours)
        self.max_udp = bufsize.max_udp(cfg)
        self._link_speeds()

    def _link_speeds(self) -> None:
        """The fast front, whether its replies may be memoised (by the last
        front stage that makes memos, the cache's, when it and every stage
        before it allow ``memo``), and the callback speed, from the stages
        and their declarations alone."""
        stages = self.stages
        fronts = front_of(stages)
        self.front = fronts[0].front if fronts else None
        memos = [st for st in fronts if type(st).memo_for is not Stage.memo_for]
        self.memo_stage = memos[-1] if memos else None
        upto = stages[:stages.index(self.memo_stage) + 1] if memos else []
        self.memoizable = bool(upto) and all(st.shortcuts().memo for st in upto)
        self.take = link_takes(stages)

    @property
    def panics(self) -> int:
        """coredns_panics_total: the chain's and its stages' callbacks'."""
        return self._panics + sum(st.panics for st in self.stages)

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
            self._panics += 1  # coredns_panics_total
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
        self.front = self.take = None
        self.memoizable = False

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

