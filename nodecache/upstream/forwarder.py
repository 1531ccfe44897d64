"""The forward stage: resolve a cache miss at the upstreams.

Theory of operation:

* Coalescing: one upstream exchange per distinct cache key in flight. The
  first client asking runs the exchange in its own task (no task of its
  own per miss); every other client asking the same question meanwhile
  awaits the leader's future.
* The upstream query is ours, not the client's: the question in lower case,
  RD and AD set (RFC 6840 §5.7: AD tells us what the upstream validated),
  CD and DO as the cache key says, our OPT. So coalesced clients get an
  answer to exactly the question their key describes.
* Attempts, within an overall deadline (5 s) and never beyond it:
  - a query whose connection dies under it (reset, EOF, ICMP unreachable)
    is re-sent at once on a fresh connection to the same upstream, which
    kube-proxy may send to another endpoint: this is what a CoreDNS
    rollout or a killed replica looks like from here, and it is not held
    against the upstream's health;
  - a timeout (2 s per attempt) moves on to the next upstream;
  - a refused or unreachable connect, or a garbled reply, moves on too;
    after a round of upstreams that all failed that way we wait a short,
    doubling backoff (25 ms .. 500 ms) and go round again: a Service whose
    endpoints are being replaced refuses for a moment, then answers.
  Only the deadline ends the attempts (then the caller answers SERVFAIL):
  with one upstream (the usual case, a Service ClusterIP) there is no
  fail-fast, and when every upstream looks down we still try them, healthy
  ones first (CoreDNS does the same).
* Validation: a reply must parse, have QR set and our question (the ID is
  checked by the transport). Anything else counts as a failed attempt and
  is never returned, so it is never cached. A reply whose CD bit or DO bit
  (in its OPT) differs from our query's (RFC 4035 §3.2.2, RFC 3225 §3: both
  are copied from the query) answers the question but maybe not the
  variant the cache key names: it is passed on, never cached.
* Bounds: at most ``max_concurrent`` distinct exchanges in flight (CoreDNS's
  option; REFUSED beyond it). Without the option we still cap at
  ``DEFAULT_MAX_INFLIGHT`` so that a dead upstream cannot grow memory
  without bound.
* Health: ``max_fails`` consecutive failed attempts mark an upstream down;
  a probe (``. IN NS`` with RD, as CoreDNS asks; any well-formed reply
  counts) runs every
  ``health_check`` until it answers. ``down_for`` tells readiness how long
  every upstream has been down.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from bisect import bisect_left

from ..upstream.options import HTTPS, TLS, ForwardConfig, Upstream
from ..dns.key import cd, do, question
from ..dns.reply import MalformedReply, Reply, analyse
from ..dns.wire import AD, CD, RD, encode_name, make_query
from ..observe.stats import DURATION_BUCKETS
from .cork import Cork
from .direct import Deadlines, InFlight, Leader
from .doh import DohPool
from .tls import client_context, TlsPool
from .transport import TcpPool, UdpPool, UpstreamClosed, exchange_on

log = logging.getLogger("nodecache.forward")
DEFAULT_MAX_INFLIGHT = 20000
_HARD_ERRORS = (OSError, MalformedReply, UpstreamClosed)
MAX_RESENDS = 3          # re-sends of one query after its connection died, per attempt
BACKOFF_FIRST, BACKOFF_MAX = 0.025, 0.5


def _query_parts(bits: int) -> tuple[bytes, bytes]:
    """``query_for``'s parts for a key whose last byte is ``bits`` (DO << 1 |
    CD, dns.key.BITS): make_query's header under ID 0, and the OPT record
    (DO as the key says) it puts after the question."""
    query = make_query(0, b"", RD | AD | (CD if bits & 1 else 0), bits >> 1)
    return query[:12], query[12:]


_QUERY_PARTS = tuple(_query_parts(bits) for bits in range(4))  # by the key's last byte


class ForwardFailure(Exception):
    """No upstream produced a usable reply within the deadline."""


class Overloaded(Exception):
    """Too many exchanges in flight (REFUSED)."""


def _pool(addr: Upstream, cfg: ForwardConfig, cork: Cork, contexts: dict):
    """The stream pool for ``addr``: plain TCP, TLS or HTTP/2 over TLS
    (one client context per forwarder and ALPN, made on first use)."""
    if addr.proto == TLS:
        if TLS not in contexts:
            contexts[TLS] = client_context(cfg.tls, alpn=None)
        return TlsPool(addr.host, addr.port, cfg.expire, cork, contexts[TLS], cfg.server_name(addr), str(addr))
    if addr.proto == HTTPS:
        if HTTPS not in contexts:
            contexts[HTTPS] = client_context(cfg.tls, alpn=["h2"])
        return DohPool(addr.host, addr.port, cfg.expire, cork, contexts[HTTPS], cfg.server_name(addr), str(addr),
                       addr.path, cfg.doh_method)
    return TcpPool(addr.host, addr.port, cfg.expire, cork)


class UpstreamState:
    def __init__(self, addr: Upstream, cfg: ForwardConfig, cork: Cork, contexts: dict | None = None):
        self.addr = addr
        self.cfg = cfg
        self.pool = _pool(addr, cfg, cork, {} if contexts is None else contexts)
        # TLS and HTTPS upstreams take every query on their stream (RFC 7858
        # has no UDP); a plain one goes over UDP first unless force_tcp
        self.tcp = cfg.force_tcp or addr.encrypted
        self.udp = None if addr.encrypted else UdpPool(addr.host, addr.port, cfg.expire)
        self.fails = 0
        self.down_since: float | None = None
        self.probe: asyncio.Task | None = None
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
        if tcp:  # (always, for a TLS or HTTPS upstream: callers pass ``self.tcp``)
            return await self.pool.exchange(query, timeout)
        return await self.udp.exchange(query, timeout)

    def succeeded(self) -> None:
        self.fails = 0
        self.down_since = None

    def failed(self) -> None:
        self.failures += 1
        self.fails += 1
        if not self.healthy:
            if self.down_since is None:
                self.down_since = time.monotonic()
            if self.probe is None:
                self.probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        # CoreDNS's probe: DOMAIN (default the root) IN NS, RD unless no_rec
        question = encode_name(self.cfg.health_domain) + b"\x00\x02\x00\x01"
        query = make_query(0, question, flags=RD if self.cfg.health_rd else 0)
        log.warning("upstream %s is down after %d failures; health-checking every %.1fs",
                    self.addr, self.fails, self.cfg.health_check)
        try:
            while not self.healthy:
                await asyncio.sleep(self.cfg.health_check)
                try:
                    # over the queries' own transport: a TLS upstream is checked over TLS
                    analyse(await self.exchange(query, self.cfg.attempt_timeout, self.tcp))
                except (asyncio.TimeoutError, *_HARD_ERRORS):
                    self.healthcheck_failures += 1
                    continue
                self.succeeded()
                log.info("upstream %s is healthy again", self.addr)
        finally:
            self.probe = None

    def close(self) -> None:
        if self.probe is not None:
            self.probe.cancel()
        self.pool.close()
        if self.udp is not None:
            self.udp.close()


class Forwarder:
    def __init__(self, cfg: ForwardConfig, retry: bool = True, cork: Cork | None = None):
        """``cork``: the agent's (upstream.cork); without one, a forwarder's
        writes go out at once (nobody polls)."""
        self.cfg = cfg
        cork = cork if cork is not None else Cork()
        contexts: dict = {}
        self.upstreams = [UpstreamState(u, cfg, cork, contexts) for u in cfg.to]
        # key -> the exchange in flight for it, slow-path or direct (one
        # table: coalescing in one place; upstream.direct)
        self.inflight: dict[bytes, InFlight] = {}
        self.deadlines: Deadlines | None = None  # the direct exchanges' timeouts (made on first use)
        self.max_inflight = cfg.max_concurrent or DEFAULT_MAX_INFLIGHT
        self._rr = 0
        self.coalesced = 0
        self.resent = 0      # queries re-sent after their connection died
        self.backoffs = 0    # rounds where every upstream refused or broke at once
        self.mismatched = 0  # replies passed on uncached: CD/DO differ from our query
        # False (-forward-retry=false): no re-send, and a failure as soon as
        # every upstream failed outright; for diagnosis, and the resilience
        # tests' negative control
        self.retry = retry
        self.rejected = 0   # coredns_forward_max_concurrent_rejects_total
        self.all_down = 0   # coredns_forward_healthcheck_broken_total

    def events(self) -> dict[str, int]:
        ups = self.upstreams
        return {"coalesced": self.coalesced, "upstream_resent": self.resent, "upstream_retry_round": self.backoffs,
                "upstream_reply_mismatch": self.mismatched,
                "upstream_reply_unmatched": sum(u.pool.unmatched + (u.udp.unmatched if u.udp else 0) for u in ups),
                "upstream_attempt_failed": sum(u.failures for u in ups)}

    async def resolve(self, key: bytes, coalesce: bool = True, started: float | None = None) -> Reply:
        """The upstream reply for ``key``. ``started`` (time.monotonic): when
        the client's query arrived, if earlier than now; the deadline counts
        from then (a direct miss handed over, see upstream.direct)."""
        if not coalesce:  # the loop probe coming back: it must go round again
            return await self._exchange(key)
        pending = self.inflight.get(key)
        while pending is not None:  # follow it; None: a direct exchange fell back
            self.coalesced += 1
            reply = await pending.follow()
            if reply is not None:
                return reply
            pending = self.inflight.get(key)
        if len(self.inflight) >= self.max_inflight:
            self.rejected += 1
            raise Overloaded(f"{len(self.inflight)} queries in flight")
        shared = asyncio.get_running_loop().create_future()
        leader = self.inflight[key] = Leader(shared)
        try:
            reply = await self._exchange(key, started)
        except BaseException as exc:
            if not shared.done():
                shared.set_exception(exc if isinstance(exc, Exception) else ForwardFailure("cancelled"))
                shared.exception()  # retrieved: there may be no other waiter
            raise
        else:
            shared.set_result(reply)
            return reply
        finally:
            if self.inflight.get(key) is leader:
                del self.inflight[key]

    def down_for(self, now: float) -> float:
        """Seconds every upstream has been down (0 while any is healthy)."""
        if not self.upstreams or any(u.healthy for u in self.upstreams):
            return 0.0
        return now - max(u.down_since or now for u in self.upstreams)

    def order(self) -> list[UpstreamState]:
        """The upstreams to try, in policy order, healthy ones first; none
        when every one is down and ``failfast_all_unhealthy_upstreams``."""
        if len(self.upstreams) == 1:  # the usual case: one Service ClusterIP
            if not self.upstreams[0].healthy:
                self.all_down += 1
                if self.cfg.failfast_all_unhealthy_upstreams:
                    return []
            return self.upstreams
        ups = list(self.upstreams)
        if self.cfg.policy == "random":
            random.shuffle(ups)
        elif self.cfg.policy == "round_robin":
            self._rr = (self._rr + 1) % len(ups)
            ups = ups[self._rr:] + ups[:self._rr]
        healthy = [u for u in ups if u.healthy]
        if not healthy:
            self.all_down += 1  # every upstream is down: try them anyway, unless told to fail fast
            if self.cfg.failfast_all_unhealthy_upstreams:
                return []
        return healthy + [u for u in ups if not u.healthy]

    def query_for(self, key: bytes) -> bytes:
        """The query we send upstream for ``key``, under ID 0 (the channel
        sends it under an ID of its own). AD asks for the AD bit (RFC 6840 §5.7).
        (``make_query``'s bytes, from a table by the key's DO/CD byte: one
        concatenation per miss.)"""
        head, opt = _QUERY_PARTS[key[-1]]
        return head + key[:-1] + opt

    def ready_channel(self):
        """(upstream, channel) a query can go out on at once: the first
        upstream in policy order, healthy, with an open channel that takes
        more queries. None when anything needs waiting or deciding (the
        slow path does that)."""
        if len(self.inflight) >= self.max_inflight:
            return None
        ups = self.order()
        if not ups or not ups[0].healthy:
            return None
        up = ups[0]
        channel = (up.pool if up.tcp else up.udp).usable()
        return None if channel is None else (up, channel)

    def accepted(self, raw: bytes, key: bytes, up: UpstreamState, seconds: float) -> Reply | None:
        """``raw`` from ``up`` as the final reply for ``key``, counted as a
        success; None when it needs more (truncated over UDP: retry over TCP).
        Raises MalformedReply."""
        reply = self._validated(raw, key, up)
        if reply.truncated and not up.tcp:
            return None
        if reply.rcode in self.cfg.failover_rcodes and len(self.upstreams) > 1:
            return None  # the slow path tries the other upstreams (``failover``)
        up.succeeded()
        up.observe(reply.rcode, seconds)
        return reply

    async def _exchange(self, key: bytes, started: float | None = None) -> Reply:
        query = self.query_for(key)
        loop = asyncio.get_running_loop()
        spent = time.monotonic() - started if started is not None else 0.0
        deadline = loop.time() + max(self.cfg.deadline - spent, self.cfg.attempt_timeout / 4)
        last = "no attempt"
        backoff = BACKOFF_FIRST
        failovers = 0
        while True:
            timed_out = False
            ups = self.order()
            if not ups:
                raise ForwardFailure("every upstream is down (failfast_all_unhealthy_upstreams)")
            for up in ups:
                if deadline - loop.time() <= 0.001:
                    raise ForwardFailure(f"no reply within {self.cfg.deadline:g}s: {last}")
                try:
                    reply = await self._attempt(up, query, key, deadline)
                except asyncio.TimeoutError:
                    timed_out = True
                    last = f"{up.addr}: timed out"
                except _HARD_ERRORS as exc:
                    # a message, not the exception: its traceback holds this frame (a cycle)
                    last = f"{up.addr}: {exc}"
                else:
                    # ``failover``: these rcodes try the next upstream, as a
                    # failed attempt would, until each has answered once;
                    # then the last one's reply stands (CoreDNS's rule)
                    if reply.rcode not in self.cfg.failover_rcodes:
                        return reply
                    failovers += 1
                    if failovers >= len(self.upstreams):
                        return reply
                    last = f"{up.addr}: rcode {reply.rcode}"
                    continue
                up.failed()
            if not timed_out:  # every upstream refused or broke at once: give them a moment
                if not self.retry:
                    raise ForwardFailure(f"every upstream failed: {last}")
                remaining = deadline - loop.time()
                if remaining <= 0.001:
                    raise ForwardFailure(f"no reply within {self.cfg.deadline:g}s: {last}")
                self.backoffs += 1
                await asyncio.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _attempt(self, up: UpstreamState, query: bytes, key: bytes, deadline: float) -> Reply:
        """One attempt at ``up``: re-sent on a fresh connection when the
        connection dies under it, at most MAX_RESENDS times."""
        loop = asyncio.get_running_loop()
        tcp = up.tcp
        for resend in range(MAX_RESENDS + 1):
            timeout = min(self.cfg.attempt_timeout, deadline - loop.time())
            t0 = loop.time()
            try:
                channel = (up.pool if tcp else up.udp).usable()
                if channel is not None:  # the common case: no extra frames
                    raw = await exchange_on(channel, query, timeout)
                else:
                    raw = await up.exchange(query, timeout, tcp)
                reply = self._validated(raw, key, up)
                if reply.truncated and not tcp:  # RFC 7766 §5: retry over TCP
                    raw = await up.exchange(query, max(deadline - loop.time(), 0.001), True)
                    reply = self._validated(raw, key, up)
            except UpstreamClosed:
                if not self.retry or resend == MAX_RESENDS or deadline - loop.time() <= 0.001:
                    raise
                self.resent += 1
                continue
            up.succeeded()
            up.observe(reply.rcode, loop.time() - t0)
            return reply
        raise AssertionError("unreachable")

    def _validated(self, raw: bytes, key: bytes, up: UpstreamState) -> Reply:
        reply = analyse(raw)
        if reply.qkey != question(key):
            raise MalformedReply(f"{up.addr} answered another question")
        want_cd, want_do = cd(key), do(key)
        if bool(reply.flags & CD) != bool(want_cd) or (reply.do >= 0 and reply.do != want_do):
            self.mismatched += 1  # right question, maybe not the variant the key names
            return reply._replace(cacheable=False)
        return reply

    def close(self) -> None:
        for pending in list(self.inflight.values()):
            pending.cancel()
        for up in self.upstreams:
            up.close()

