"""Admission of slow-path work: a global cap and a per-client share.

Every query that is not a cache hit becomes a task (full parse, the stage
chain, maybe an upstream exchange), which holds memory for as long as it
runs. One client flooding names that are not cached, or whose upstream is
slow, could otherwise hold them all and push the agent towards its memory
limit while every other pod waits. So at most ``total`` slow queries run
at once in the whole agent, and at most ``per_client`` for one client
address; beyond either the query is answered REFUSED at once (a policy
refusal, RFC 1035 §4.1.1), without a task. While one client is over its
share, other clients' misses are still admitted and forwarded.

Concurrency is not the only way to hog a single-threaded agent: one client
sending thousands of distinct misses a second saturates its CPU (and the
cluster DNS behind it) even if each finishes quickly. So each client also
has a token bucket of ``rate`` slow-path starts per second (burst of one
second's worth); beyond it, REFUSED too. Buckets of clients that have been
quiet for a second are full and are forgotten when the table grows, so
spoofed source addresses cannot grow it without bound.

A client is its source address, except on the node's own addresses
(``local``: the agent's network namespace's addresses, refreshed while it
runs). Every host-network pod reaches the agent from one of those, so
keyed by address one busy host-network pod would use up the share and
the rate of all of them (a kubelet, an ingress controller, a CNI agent).
There a client is a socket: (address, port). Stub resolvers open a socket
per lookup (glibc, musl, Go), so for them this is a limit per lookup; a
client that keeps one socket (c-ares, a daemon, a load generator) is
limited as a pod is. A host-network process spreading its misses over
fresh sockets escapes the per-client limits, so every host-network client
together holds at most ``LOCAL_SHARES`` clients' shares in flight
(REFUSED beyond, ``reason="host_share"``): it can crowd out other
host-network clients, never the pods. (A host-network pod can flood the
cluster DNS directly anyway; the cap bounds what it costs the agent.) The
same holds for the rate: every host-network socket together starts at most
``LOCAL_SHARES`` clients' rate of slow-path work a second (REFUSED beyond,
``reason="host_rate"``), so a host process spraying fresh sockets cannot
take the CPU from the pods' misses either.
"""
from __future__ import annotations

import time

from .. import defaults
from .storms import StormGuard

DEFAULT_TOTAL = defaults.MAX_INFLIGHT
DEFAULT_PER_CLIENT = defaults.MAX_INFLIGHT_PER_CLIENT
# Slow-path starts per second per client. Sized from the measured cost of a
# miss (bench/RESULTS.md, "Cost of a cache miss": one core forwards on the
# order of 10,000-20,000 misses/s): one client may take about a quarter of
# a core, far above what a pod asks in normal operation (its misses are its
# new names, a few per second to hundreds), yet a flood of distinct names
# from one client cannot starve the others.
DEFAULT_RATE = defaults.MISS_RATE_PER_CLIENT
MAX_BUCKETS = 8192     # then buckets that are full again are forgotten
LOCAL_SHARES = 4       # every host-network client together: this many clients' in-flight shares and rates
HOST_NETWORK = ("host network",)  # the bucket every host-network socket's misses also take from


class Admission:
    __slots__ = ("total", "per_client", "rate", "running", "by_client", "buckets", "clock", "local",
                 "local_total", "local_running", "refused_share", "refused_capacity", "refused_rate",
                 "refused_host", "refused_host_rate", "host_bucket", "storms")

    def __init__(self, total: int = DEFAULT_TOTAL, per_client: int = DEFAULT_PER_CLIENT,
                 rate: float = DEFAULT_RATE, clock=time.monotonic, storm_threshold: int = defaults.STORM_THRESHOLD):
        self.total, self.per_client = total, min(per_client, total)
        self.rate = rate  # 0: no rate limit
        self.clock = clock
        self.running = 0
        self.local: frozenset[str] = frozenset()  # the node's own addresses (see the top)
        self.local_total = min(self.per_client * LOCAL_SHARES, self.total)
        self.local_running = 0
        self.by_client: dict[str | tuple, int] = {}
        self.buckets: dict[str | tuple, list] = {}  # client -> [tokens, time of last refill]
        self.refused_share = 0     # nodecache_refused_total{reason="client_share"}
        self.refused_capacity = 0  # nodecache_refused_total{reason="capacity"}
        self.refused_rate = 0      # nodecache_refused_total{reason="client_rate"}
        self.refused_host = 0      # nodecache_refused_total{reason="host_share"}
        self.refused_host_rate = 0  # nodecache_refused_total{reason="host_rate"}
        self.host_bucket = [self.rate * LOCAL_SHARES, clock()]  # every host-network socket's misses together
        self.storms = StormGuard(storm_threshold, clock)  # one client's same failing question, again and again

    def refusals(self) -> dict[str, int]:
        """``nodecache_refused_total`` by reason."""
        return {"client_share": self.refused_share, "capacity": self.refused_capacity,
                "client_rate": self.refused_rate, "host_share": self.refused_host,
                "host_rate": self.refused_host_rate, "storm": self.storms.contained}

    def client(self, peer) -> str | tuple:
        """The client a query from ``peer`` (a socket address tuple) counts
        against: its address, or (address, port) on the node's own addresses."""
        if not peer:
            return ""
        host = peer[0]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]  # an IPv4 client of a dual-stack socket is that IPv4 client
        return (host, peer[1]) if host in self.local else host

    def _take_token(self, client: str | tuple) -> bool:
        now = self.clock()
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= MAX_BUCKETS:
                self._forget_full(now)
            bucket = self.buckets[client] = [self.rate, now]
        return _take(bucket, self.rate, now)

    def _forget_full(self, now: float) -> None:
        self.buckets = {c: b for c, b in self.buckets.items() if b[0] + (now - b[1]) * self.rate < self.rate}

    def admit(self, client: str | tuple) -> bool:
        held = self.by_client.get(client, 0)
        if held >= self.per_client:
            self.refused_share += 1
            return False
        if self.rate and not self._take_token(client):
            self.refused_rate += 1
            return False
        if self.running >= self.total:
            self.refused_capacity += 1
            return False
        if type(client) is tuple:
            if self.local_running >= self.local_total:
                self.refused_host += 1
                return False
            if self.rate and not _take(self.host_bucket, self.rate * LOCAL_SHARES, self.clock()):
                self.refused_host_rate += 1
                return False
            self.local_running += 1
        self.by_client[client] = held + 1
        self.running += 1
        return True

    def release(self, client: str | tuple, _task=None) -> None:
        self.running -= 1
        if type(client) is tuple:
            self.local_running -= 1
        held = self.by_client[client] - 1
        if held:
            self.by_client[client] = held
        else:
            del self.by_client[client]


def _take(bucket: list, rate: float, now: float) -> bool:
    """Take a token from ``bucket`` ([tokens, last refill], a second's burst at ``rate``)."""
    tokens = min(rate, bucket[0] + (now - bucket[1]) * rate)
    bucket[1] = now
    if tokens < 1.0:
        bucket[0] = tokens
        return False
    bucket[0] = tokens - 1.0
    return True
