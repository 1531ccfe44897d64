"""The forward stage: resolve a cache miss at the upstreams.

Theory of operation:

* Coalescing: one upstream exchange per distinct cache key in flight;
  every other client asking the same question awaits the same task.
* The upstream query is ours, not the client's: the question in lower case,
  RD and AD set (RFC 6840 §5.7: AD tells us what the upstream validated),
  CD and DO as the cache key says, our OPT. So coalesced clients get an
  answer to exactly the question their key describes.
* Attempts: upstreams in policy order, healthy ones first. Each attempt is
  bounded (2 s); a timeout moves on to the next upstream, cycling while the
  overall deadline (5 s) lasts; if every upstream failed outright (refused,
  reset, garbage) there is nothing to wait for and we fail at once. The
  caller answers SERVFAIL.
* Validation: a reply must parse, have QR set and our question (the ID is
  checked by the transport). Anything else counts as a failed attempt and
  is never returned, so it is never cached.
* Bounds: at most ``max_concurrent`` distinct exchanges in flight (CoreDNS's
  option; REFUSED beyond it). Without the option we still cap at
  ``DEFAULT_MAX_INFLIGHT`` so that a dead upstream cannot grow memory
  without bound.
* Health: ``max_fails`` consecutive failures mark an upstream down; a
  probe (``. IN NS``, any well-formed reply counts) runs every
  ``health_check`` until it answers.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from bisect import bisect_left

from ..config.model import ForwardConfig, Upstream
from ..dns.reply import MalformedReply, Reply, analyse
from ..dns.wire import AD, CD, RD, make_query
from ..observe.stats import DURATION_BUCKETS
from .transport import TcpPool, UpstreamClosed, udp_exchange

log = logging.getLogger("nodecache.forward")
DEFAULT_MAX_INFLIGHT = 20000
_HEALTH_QUESTION = b"\x00\x00\x02\x00\x01"  # . IN NS
_HARD_ERRORS = (OSError, MalformedReply, UpstreamClosed)


class ForwardFailure(Exception):
    """No upstream produced a usable reply within the deadline."""


class Overloaded(Exception):
    """Too many exchanges in flight (REFUSED)."""


class UpstreamState:
    def __init__(self, addr: Upstream, cfg: ForwardConfig):
        self.addr = addr
        self.cfg = cfg
        self.pool = TcpPool(addr.host, addr.port, cfg.expire)
        self.fails = 0
        self.probe: asyncio.Task | None = None
        self.requests = 0
        self.failures = 0
        self.healthcheck_failures = 0
        # rcode -> [bucket counts (DURATION_BUCKETS + Inf), sum of seconds]
        self.durations: dict[int, list] = {}

    def observe(self, rcode: int, seconds: float) -> None:
        entry = self.durations.get(rcode)
        if entry is None:
            entry = self.durations[rcode] = [[0] * (len(DURATION_BUCKETS) + 1), 0.0]
        entry[0][bisect_left(DURATION_BUCKETS, seconds)] += 1
        entry[1] += seconds

    @property
    def healthy(self) -> bool:
        return self.cfg.max_fails == 0 or self.fails < self.cfg.max_fails

    async def exchange(self, query: bytes, timeout: float, tcp: bool) -> bytes:
        if tcp:
            return await self.pool.exchange(query, timeout)
        return await udp_exchange(self.addr.host, self.addr.port, query, timeout)

    def succeeded(self) -> None:
        self.fails = 0

    def failed(self) -> None:
        self.failures += 1
        self.fails += 1
        if not self.healthy and self.probe is None:
            self.probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        query = make_query(0, _HEALTH_QUESTION, flags=0)
        log.warning("upstream %s is down after %d failures; health-checking every %.1fs",
                    self.addr, self.fails, self.cfg.health_check)
        try:
            while not self.healthy:
                await asyncio.sleep(self.cfg.health_check)
                try:
                    analyse(await self.exchange(query, self.cfg.attempt_timeout, self.cfg.force_tcp))
                except (asyncio.TimeoutError, *_HARD_ERRORS):
                    self.healthcheck_failures += 1
                    continue
                self.fails = 0
                log.info("upstream %s is healthy again", self.addr)
        finally:
            self.probe = None

    def close(self) -> None:
        if self.probe is not None:
            self.probe.cancel()
        self.pool.close()


class Forwarder:
    def __init__(self, cfg: ForwardConfig):
        self.cfg = cfg
        self.upstreams = [UpstreamState(u, cfg) for u in cfg.to]
        self.inflight: dict[bytes, asyncio.Task] = {}
        self.max_inflight = cfg.max_concurrent or DEFAULT_MAX_INFLIGHT
        self._rr = 0
        self.coalesced = 0
        self.rejected = 0   # coredns_forward_max_concurrent_rejects_total
        self.all_down = 0   # coredns_forward_healthcheck_broken_total

    async def resolve(self, key: bytes) -> Reply:
        task = self.inflight.get(key)
        if task is not None:
            self.coalesced += 1
        else:
            if len(self.inflight) >= self.max_inflight:
                self.rejected += 1
                raise Overloaded(f"{len(self.inflight)} queries in flight")
            task = asyncio.get_running_loop().create_task(self._exchange(key))
            self.inflight[key] = task
            task.add_done_callback(lambda t, k=key: self._done(k, t))
        return await asyncio.shield(task)

    def _done(self, key: bytes, task: asyncio.Task) -> None:
        if self.inflight.get(key) is task:
            del self.inflight[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: waiters may all have gone

    def order(self) -> list[UpstreamState]:
        ups = list(self.upstreams)
        if self.cfg.policy == "random":
            random.shuffle(ups)
        elif self.cfg.policy == "round_robin":
            self._rr = (self._rr + 1) % len(ups)
            ups = ups[self._rr:] + ups[:self._rr]
        healthy = [u for u in ups if u.healthy]
        if not healthy:
            self.all_down += 1  # every upstream is down: try them anyway
        return healthy + [u for u in ups if not u.healthy]

    async def _exchange(self, key: bytes) -> Reply:
        flags = RD | AD | (CD if key[-1] & 1 else 0)
        query = make_query(random.getrandbits(16), key[:-1], flags, key[-1] >> 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.deadline
        last: Exception | None = None
        while True:
            hard = 0
            order = self.order()
            for up in order:
                remaining = deadline - loop.time()
                if remaining <= 0.001:
                    raise ForwardFailure(f"no reply within {self.cfg.deadline:g}s: {last}")
                try:
                    return await self._attempt(up, query, key, min(self.cfg.attempt_timeout, remaining))
                except asyncio.TimeoutError:
                    last = TimeoutError(f"{up.addr}: timed out")
                except _HARD_ERRORS as exc:
                    hard += 1
                    last = exc if isinstance(exc, MalformedReply) else UpstreamClosed(f"{up.addr}: {exc}")
                up.failed()
            if hard == len(order):
                raise ForwardFailure(f"every upstream failed: {last}")

    async def _attempt(self, up: UpstreamState, query: bytes, key: bytes, timeout: float) -> Reply:
        up.requests += 1
        tcp = self.cfg.force_tcp
        t0 = time.monotonic()
        raw = await up.exchange(query, timeout, tcp)
        reply = _validated(raw, key, up)
        if reply.truncated and not tcp:  # RFC 7766 §5: retry over TCP
            reply = _validated(await up.exchange(query, timeout, True), key, up)
        up.succeeded()
        up.observe(reply.rcode, time.monotonic() - t0)
        return reply

    def close(self) -> None:
        for task in self.inflight.values():
            task.cancel()
        for up in self.upstreams:
            up.close()


def _validated(raw: bytes, key: bytes, up: UpstreamState) -> Reply:
    reply = analyse(raw)
    if reply.qkey != key[:-1]:
        raise MalformedReply(f"{up.addr} answered another question")
    return reply
