"""From query bytes to reply bytes, for any transport.

``fast`` is the synchronous cache-hit path (scan in place, route, cache
hit, count; over UDP it also memoises the finished reply, see
``server.memo``, which the UDP transport looks up before calling it);
``answer`` is the slow path (full parse, RFC error replies,
the block's stage chain, count). Transports call ``fast`` first and
schedule ``answer`` as a task (``start_slow``, which applies admission)
only when it returns None. Both fit UDP
replies to the client's size (TC=1 when too big, RFC 1035 §4.2.1, RFC 6891
§7) and both record the query in ``stats`` for the metrics. Background
tasks are tracked so shutdown can drain them.

Loop detection (the ``loop`` directive) also sits here: a block's probe
name arriving at one of our own listeners means our upstream sent our own
query back to us.
"""
from __future__ import annotations

import asyncio
import time
from functools import partial

from ..dns.key import EDNS_DO, qtype as key_qtype
from ..dns.wire import (MAX_MESSAGE, REFUSED, SERVFAIL, QueryError, error_reply, fit, parse_query, query_from_scan,
                        scan, truncated_reply)
from ..observe.stats import ListenerStats
from .admission import Admission
from . import direct
from .memo import MEMO_BYTES, Memo, MemoTable
from ..stages.base import Request
from .router import Router

_clock = time.monotonic


class Dispatcher:
    def __init__(self, router: Router, stats: ListenerStats, admission: Admission | None = None,
                 clock=time.monotonic):
        self.memo = MemoTable()
        self._router = router
        self.stats = stats
        self.clock = clock  # the caches' clock: what a memo's expiry is measured on
        self.admission = admission or Admission()
        self.tasks: set[asyncio.Task] = set()
        # what fast() read of the datagram it just declined (None: not the
        # common shape), so the transport's slow-path call does not read it again
        self.scanned = None
        # the block fast() routed its last query to, when it was a cache miss
        # there (the direct miss path starts from it, see server.direct); the
        # start_slow that always follows a declined fast() takes it
        self.miss_block = self.miss_zone = None
        self.direct_pending = 0  # misses in flight without a task
        self.dropped = 0       # queries we could not even answer with an error
        self.error_replies = 0
        self.truncated = 0

    def fast(self, data: bytes, proto: str) -> bytes | None:
        """The reply for a cache hit, else None."""
        t0 = _clock()
        s = self.scanned = scan(data)
        if s is None:
            return None
        key, qend, flags, limit, edns = s
        routed = self.router.block_for(key)
        if routed is None:
            return None
        block, zone = routed
        reply = block.fast(key, data, qend, flags, edns)
        if reply is None:
            self.miss_block, self.miss_zone = block, zone
            return None
        truncated = proto == "udp" and len(reply) > limit
        if truncated:
            self.truncated += 1
            reply = truncated_reply(data, qend, reply[2] << 8 | reply[3], edns)
        seconds = _clock() - t0
        self.stats.record(zone, proto, key_qtype(key), reply[3] & 0xF, edns == EDNS_DO,
                          len(data), len(reply), seconds, "cache")
        if proto == "udp" and block.memoizable and len(reply) <= MEMO_BYTES:
            self._memoise(data, reply, block.cache, zone, key, edns, seconds, truncated, qend)
        return reply

    def _memoise(self, data: bytes, reply: bytes, cache, zone: str, key: bytes, edns: int, seconds: float,
                 truncated: bool, qend: int) -> None:
        entry = cache.hit_entry
        if len(entry.tail) > MEMO_BYTES:  # (a big answer truncated for this client)
            return
        until = entry.next_tick if entry.next_tick < entry.expires else entry.expires
        acc = self.stats.series(zone, "udp", key_qtype(key), reply[3] & 0xF, edns == EDNS_DO, len(data),
                                len(reply), 0.0, "cache")
        self.memo.put(data[2:], Memo(until, reply[2:], entry, cache, acc, len(data), len(reply), seconds,
                                     truncated, qend))

    @property
    def router(self) -> Router:
        return self._router

    @router.setter
    def router(self, router: Router) -> None:
        """A reload changed what this listener serves: no memo survives it."""
        self._router = router
        self.memo.clear()

    async def answer(self, data: bytes, proto: str, client, scanned, started: float | None = None) -> bytes | None:
        """The reply to any query, or None to drop it. ``scanned``: what
        ``fast`` read of ``data`` (``self.scanned`` right after it declined),
        so the common shape is not parsed twice."""
        t0 = _clock()
        try:
            q = query_from_scan(data, scanned) if scanned is not None else None
            if q is None:
                q = parse_query(data)
        except QueryError as exc:
            if exc.rcode is None:
                self.dropped += 1
                return None
            self.error_replies += 1
            return error_reply(data, exc.rcode, exc.qend, exc.edns)
        routed = self.router.block_for(q.key)
        if routed is None:
            reply, zone, plugin = error_reply(data, REFUSED, q.qend, q.edns), ".", ""
        else:
            block, zone = routed
            if block.loop is not None and block.loop.sighted(q.key):
                reply, plugin = error_reply(data, SERVFAIL, q.qend, q.edns), "loop"
            else:
                reply, plugin = await block.serve(Request(q, proto, client, started or time.monotonic()))
        limit = q.limit if proto == "udp" else MAX_MESSAGE
        if len(reply) > limit:
            self.truncated += 1
            reply = fit(reply, data, limit, q.qend, q.edns)
        self.stats.record(zone, proto, q.qtype, reply[3] & 0xF, q.edns == EDNS_DO, len(data), len(reply),
                          _clock() - t0, plugin)
        return reply

    def start_slow(self, coro_fn, data: bytes, peer, *args, server=None) -> bytes | None:
        """Run ``coro_fn(data, *args)`` as a slow-path task if admission allows
        (see server.admission: ``peer``, the client's socket address, says
        whose share it takes); else the REFUSED reply to send at once (None:
        nothing to send). Given the UDP ``server`` (args: the client's
        address and what ``fast`` scanned), a plain miss is sent upstream
        without a task when it can be (``server.direct``)."""
        block, self.miss_block = self.miss_block, None
        admission = self.admission
        client = admission.client(peer)
        if not admission.admit(client):
            scanned = self.scanned
            self.error_replies += 1
            return error_reply(data, REFUSED, scanned[1], scanned[4]) if scanned is not None else None
        if server is not None and block is not None and block.direct \
                and direct.start(self, block, self.miss_zone, server, data, args[0], client, args[1]):
            return None
        self.start_task(coro_fn, data, client, *args)
        return None

    def start_task(self, coro_fn, data: bytes, client, *args) -> None:
        """Run already admitted work as a slow-path task; its end gives the slot back."""
        task = asyncio.get_running_loop().create_task(coro_fn(data, *args))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(partial(self.admission.release, client))

    async def drain(self, timeout: float) -> int:
        """Wait for in-flight slow-path work; returns how many were cut off."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.direct_pending and loop.time() < deadline:  # their fallbacks become tasks
            await asyncio.sleep(0.005)
        if not self.tasks:
            return self.direct_pending
        done, pending = await asyncio.wait(set(self.tasks), timeout=max(0.0, deadline - loop.time()))
        for task in pending:
            task.cancel()
        return len(pending)
