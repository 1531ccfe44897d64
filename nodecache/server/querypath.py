"""The one path a query takes, whatever transport brought it.

A transport moves bytes and calls two things, as hypercorn's protocols
call their ``send``:

* ``fast(data)`` (UDP) / ``fast_tcp(data)``: the reply for a cache hit,
  else a ``Missed`` saying what was seen. Synchronous, no task, no await:
  the memo of finished replies first (``server.memo``, UDP only), then the
  block's cache (``from_cache``: scan in place, route by zone, one lookup,
  render).
* ``miss(missed, data, addr, send)``: for what ``fast`` did not answer,
  admission (``server.admission``),
  then, over UDP, the direct miss (``forward.direct``: sent upstream from
  this callback), else the slow path as a task. Returns a reply to send at
  once (REFUSED when admission says no) or None.

The slow path is one coroutine, ``answer_and_send``: full parse, RFC
error replies, the block's stage chain, and then ``send(reply, addr)``,
called exactly once (reply None: nothing to send, the query is dropped),
so a transport learns when its query is done whatever happened.
Fitting a reply to the client's UDP size (TC=1 and the whole records
that fit when too big, ``dns.truncate``) and recording it for the metrics happen in one
place, ``_fit_and_count``, for the hit, the slow and the direct path.
Nothing one call saw is kept on this object for the next: the scan and
the block a miss routed to travel in the ``Missed`` value.

Which shortcuts a block allows (hit without the chain, memo, direct miss)
its stages declare (``server.block``); this module only asks the block.
Loop detection (the ``loop`` directive) also sits here: a block's probe
name arriving at one of our own listeners means our upstream sent our
own query back to us.
"""
from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from ..cache.entry import render_uncached
from ..dns.key import EDNS_DO, TRAILER as KEY_TRAILER, qtype as key_qtype
from ..dns.truncate import fit
from ..dns.wire import (MAX_MESSAGE, REFUSED, SERVFAIL, QueryError, decode_name, error_reply, parse_query,
                        query_from_scan, scan, scan_servable)
from ..forward import direct
from ..observe.stats import ListenerStats
from ..plugins.chain import Request
from .admission import Admission
from .memo import MEMO_BYTES, Memo, MemoTable
from .router import Router

log = logging.getLogger("nodecache.server")
_clock = time.monotonic  # durations (the metrics); ``QueryPath.clock`` is the caches' clock


class Missed:
    """What the hit path saw of a query it could not answer. ``scan``:
    ``dns.wire.scan``'s (key, qend, flags, limit, edns), None when the query
    is not of the common shape; ``block`` and ``zone``: where it routed
    when that block had no fresh entry (None: not routed)."""
    __slots__ = ("scan", "block", "zone")

    def __init__(self, scan, block, zone: str):
        self.scan, self.block, self.zone = scan, block, zone


NOT_SCANNED = Missed(None, None, "")


class Asker:
    """One client's query waiting on a direct exchange (``forward.direct``):
    whose path it came through, where its reply goes, and what the hit path
    saw of it (``scan``: ``dns.wire.scan``'s tuple) and when."""
    __slots__ = ("path", "send", "data", "addr", "client", "scan", "zone", "t0")

    def __init__(self, path: "QueryPath", send, data: bytes, addr, client, scan, zone: str, t0: float):
        self.path, self.send, self.data, self.addr, self.client = path, send, data, addr, client
        self.scan, self.zone, self.t0 = scan, zone, t0


class QueryPath:
    def __init__(self, router: Router, stats: ListenerStats, admission: Admission | None = None,
                 clock=time.monotonic):
        self.memo = MemoTable()
        self._memo = self.memo.get
        self._router = router
        self._bind_memo()
        self.stats = stats
        self.clock = clock  # the caches' clock: what a memo's expiry is measured on
        self.admission = admission or Admission()
        self.tasks: set[asyncio.Task] = set()
        self.direct_pending = 0  # askers of direct exchanges, not yet answered or handed over
        self.dropped = 0         # queries we could not even answer with an error
        self.error_replies = 0
        self.truncated = 0

    def events(self) -> dict[str, int]:
        """Its counts for ``nodecache_events_total`` (run.metrics)."""
        return {"dropped": self.dropped, "error_reply": self.error_replies,
                "truncated": self.truncated + self.memo.truncated}

    @property
    def router(self) -> Router:
        return self._router

    @router.setter
    def router(self, router: Router) -> None:
        """A reload changed what this listener serves: no memo survives it."""
        self._router = router
        self._bind_memo()

    def _bind_memo(self) -> None:
        """Size the memo to the caches whose hits it may hold (server.memo)."""
        caches = list(dict.fromkeys(b.cache for b in self._router.blocks
                                     if b.memoizable and b.cache is not None))
        self.memo.bind(caches, caches[0].budget if caches else None)

    # -- hits ---------------------------------------------------------------
    def fast(self, data: bytes):
        """A datagram's reply (bytes) if it is a hit, else a ``Missed``."""
        m = self._memo(data[2:])
        if m is not None:
            now = self.clock()
            if now < m.until or m.refresh(now):
                m.hits += 1
                return data[:2] + m.after_id
        return self.from_cache(data, "udp")

    def fast_tcp(self, data: bytes):
        return self.from_cache(data, "tcp")

    def from_cache(self, data: bytes, proto: str):
        t0 = _clock()
        s = scan(data)
        if s is None:
            return NOT_SCANNED
        key, qend, flags, limit, edns = s
        routed = self._router.block_for(key)
        if routed is None:
            return Missed(s, None, "")
        block, zone = routed
        now = self.clock()
        entry = block.fresh(key, now)
        if entry is None:
            return Missed(s, block, zone)
        reply = entry.render(data, qend, flags, edns, now)
        if proto != "udp":
            limit = MAX_MESSAGE
        elif limit > block.max_udp:  # bufsize
            limit = block.max_udp
        sent = self._fit_and_count(data, reply, limit, qend, edns, zone, proto, key_qtype(key), t0, "cache")
        if proto == "udp" and block.memoizable and len(sent) <= MEMO_BYTES and len(entry.tail) <= MEMO_BYTES \
                and self.memo.admit():
            self._memoise(data, sent, entry, block.cache, zone, key, edns, _clock() - t0, sent is not reply, qend)
        return sent

    def _memoise(self, data: bytes, reply: bytes, entry, cache, zone: str, key: bytes, edns: int,
                 seconds: float, truncated: bool, qend: int) -> None:
        until = entry.next_tick if entry.next_tick < entry.expires else entry.expires
        acc = self.stats.series(zone, "udp", key_qtype(key), reply[3] & 0xF, edns == EDNS_DO, len(data),
                                len(reply), 0.0, "cache")
        self.memo.put(data[2:], Memo(until, reply[2:], entry, cache, acc, len(data), len(reply), seconds,
                                     truncated, qend))

    def _fit_and_count(self, data: bytes, reply: bytes, limit: int, qend: int, edns: int, zone: str,
                       proto: str, qtype: int, t0: float, plugin: str) -> bytes:
        """``reply`` as sent (fitted to ``limit``), recorded for the metrics."""
        if len(reply) > limit:
            self.truncated += 1
            reply = fit(reply, data, limit, qend, edns)
        self.stats.record(zone, proto, qtype, reply[3] & 0xF, edns == EDNS_DO, len(data), len(reply),
                          _clock() - t0, plugin)
        return reply

    # -- misses -------------------------------------------------------------
    def miss(self, missed: Missed, data: bytes, addr, send, proto: str = "udp") -> bytes | None:
        """Take a query ``hit`` did not answer (``addr``: the client's socket
        address, which says whose admission share it takes). ``send(reply,
        addr)`` gets its reply later. Returns a reply to send now, or None."""
        admission = self.admission
        client = admission.client(addr)
        if not admission.admit(client):
            self.error_replies += 1
            if missed.scan is None:
                return None
            _, qend, _, _, edns = missed.scan
            return error_reply(data, REFUSED, qend, edns)
        block = missed.block
        if proto == "udp" and block is not None and block.direct \
                and self._start_direct(missed, data, addr, client, send):
            return None
        self.start_task(self.answer_and_send(data, proto, addr, missed.scan, send), client)
        return None

    def start_task(self, coro, client) -> None:
        """Run admitted slow-path work as a task; its end gives the slot back."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(partial(self.admission.release, client))

    async def answer_and_send(self, data: bytes, proto: str, addr, scanned, send,
                              started: float | None = None) -> None:
        """The slow path: ``send(reply or None, addr)`` exactly once."""
        reply = None
        try:
            reply = await self.answer(data, proto, addr, scanned, started)
        finally:
            send(reply, addr)

    async def answer(self, data: bytes, proto: str, client, scanned, started: float | None = None) -> bytes | None:
        """The reply to any query, or None to drop it. ``scanned``: what the
        hit path read of ``data`` (so the common shape is not parsed twice)."""
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
        limit = q.limit if proto == "udp" else MAX_MESSAGE
        routed = self._router.block_for(q.key)
        if routed is None:
            reply, zone, plugin = error_reply(data, REFUSED, q.qend, q.edns), ".", ""
        else:
            block, zone = routed
            limit = min(limit, block.max_udp) if proto == "udp" else limit
            if block.down:
                reply, plugin = error_reply(data, SERVFAIL, q.qend, q.edns), "loop"
            else:
                reply, plugin = await block.serve(Request(q, proto, client, started or time.monotonic()))
        return self._fit_and_count(data, reply, limit, q.qend, q.edns, zone, proto, q.qtype, t0, plugin)

    # -- the direct miss (forward.direct) -------------------------------------
    def _start_direct(self, missed: Missed, data: bytes, addr, client, send) -> bool:
        """Send the admitted miss upstream from this callback, or join the
        identical one in flight. False: the slow path must take it."""
        scanned, block = missed.scan, missed.block
        if not scan_servable(data, scanned[1]):
            return False  # a question the slow path refuses or rejects (dns.wire.refusal): it answers
        key, cache = scanned[0], block.cache
        if cache.peek(key) is not None:
            return False  # stale entries: the cache stage decides
        for refuses in block.refuses_direct:  # (the loop stage's probe)
            if refuses(key):
                return False
        asker = Asker(self, send, data, addr, client, scanned, missed.zone, _clock())
        if not direct.start(block.forwarder, key, asker, partial(_direct_done, block, key)):
            return False
        cache.count_miss()  # as the cache stage counts each miss, coalesced or not
        self.direct_pending += 1
        return True

    def _render_direct(self, reply, entry, asker: Asker, max_udp: int) -> bytes:
        """The reply for one asker of a direct exchange, counted."""
        data = asker.data
        key, qend, flags, limit, edns = asker.scan
        if entry is not None:
            out = entry.render(data, qend, flags, edns, self.clock())
        else:
            out = render_uncached(reply, data, qend, flags, edns)
        out = self._fit_and_count(data, out, min(limit, max_udp), qend, edns, asker.zone, "udp", key_qtype(key),
                                  asker.t0, "forward")
        self.direct_pending -= 1
        self.admission.release(asker.client)
        return out

    def _hand_over(self, asker: Asker) -> None:
        """A direct miss that could not finish goes to the slow path (its
        admission slot with it; the deadline still counts from its arrival)."""
        self.direct_pending -= 1
        self.start_task(self.answer_and_send(asker.data, "udp", asker.addr, asker.scan, asker.send, asker.t0),
                        asker.client)

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


def _direct_done(block, key: bytes, reply, askers: list) -> None:
    """A direct exchange ended: answer its askers (each through its own
    listener's path), or hand them to the slow path (reply None). A bug
    here must not lose the queries: the slow path answers what is left."""
    if reply is None:
        for asker in askers:
            asker.path._hand_over(asker)
        return
    try:
        entry = block.cache.insert(key, reply)
        while askers:
            asker = askers[0]
            out = asker.path._render_direct(reply, entry, asker, block.max_udp)
            askers.pop(0)
            asker.send(out, asker.addr)
    except Exception:
        block.panics += 1  # coredns_panics_total
        block.throttle.error("direct", "answering a direct miss for %s failed", decode_name(key[:-KEY_TRAILER]),
                             exc_info=True)
        for asker in askers:
            asker.path._hand_over(asker)
