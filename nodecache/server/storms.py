"""Failing-question storms, contained at the node.

A fleet of pods polling a deleted Service (coredns/coredns#7922), or one
pod retrying a name that does not resolve in a tight loop, asks the same
question again and again and gets NXDOMAIN or SERVFAIL each time. The
negative cache absorbs most of it, but not a denial without an SOA (not
cacheable, RFC 2308 §5), nor the next exchange after each short negative
TTL, nor a SERVFAIL cache turned off: each of those goes upstream, per
pod. So per (client, question), the failing answers a client got from
upstream are counted over ``WINDOW``; from the ``threshold``-th on, the
rest of that window is answered here over UDP without going upstream:
a short synthesized denial with the last RCODE seen (REFUSED's cousin:
counted in ``nodecache_refused_total{reason="storm"}`` and named in
``nodecache top``), and, as DNS response rate limiting does (RRL's
"slip"), every ``SLIP``-th of them a truncated empty reply instead, so a
real client retries over TCP and gets its answer from upstream while a
spoofed source gets nothing. When the window ends the next query goes
upstream again: at most ``threshold`` + 1 upstream exchanges per window
for one client's question, and a client asking many different names is
not a storm. TCP is never contained (its source is proven).
"""
from __future__ import annotations

import time

from .. import defaults

WINDOW = 5.0        # seconds a storm's count runs over (node-cache's denial TTL)
SLIP = 2            # while contained, every SLIP-th reply is TC=1, empty (RRL's slip)
MAX_TRACKED = 8192  # (client, question) pairs followed at most; the oldest go first


class StormGuard:
    __slots__ = ("threshold", "clock", "tracked", "contained")

    def __init__(self, threshold: int = defaults.STORM_THRESHOLD, clock=time.monotonic):
        self.threshold = threshold  # 0: off
        self.clock = clock
        self.tracked: dict[tuple, list] = {}  # (client, key) -> [failures, window start, rcode, contained]
        self.contained = 0  # nodecache_refused_total{reason="storm"}

    def failed(self, client, key: bytes, rcode: int) -> None:
        """Upstream's answer to ``client``'s question ``key`` was a failure."""
        if not self.threshold:
            return
        now = self.clock()
        rec = self.tracked.get((client, key))
        if rec is None or now - rec[1] >= WINDOW:
            if rec is None and len(self.tracked) >= MAX_TRACKED:
                del self.tracked[next(iter(self.tracked))]
            self.tracked[(client, key)] = [1, now, rcode, 0]
            return
        rec[0] += 1
        rec[2] = rcode

    def storming(self, client, key: bytes) -> tuple[int, bool] | None:
        """(RCODE, slip) to answer a contained question with, or None."""
        if not self.tracked:
            return None
        rec = self.tracked.get((client, key))
        if rec is None or rec[0] < self.threshold:
            return None
        if self.clock() - rec[1] >= WINDOW:
            del self.tracked[(client, key)]
            return None
        self.contained += 1
        rec[3] += 1
        return rec[2], rec[3] % SLIP == 0
