"""The one path a query takes, whatever transport brought it.

A transport moves bytes and calls one thing, ``dispatch(data, proto, via,
ref)``, as hypercorn's protocols call their ``send``; it returns the reply
to send now, or None (later, or never). Synchronously, with no task and no
await, in this order:

* the memo of finished replies (``plugins.cache.memo``; UDP only): one
  dict lookup;
* scan the question in place (``dns.wire.scan``) and route it by zone;
* the block's fast front (``plugins.chain``: the cache stage's fresh
  hit), then fit and count the reply (``_fit_and_count``) and maybe
  memoise it;
* else admission (``server.admission``: a refusal is the reply to send
  now), then, over UDP, the block's callback speed (``take``: the cache
  and forward stages send it upstream from this callback, and ``finish``
  or ``hand_over`` get it back), else the slow path as a task.

Who asked and where a later reply goes the transport says only when a
query needs it: ``via.client_of(ref)`` and ``via.sender_of(ref)`` (a
batch transport works out a sender's address only for a miss).

The slow path is one coroutine, ``answer_and_send``: full parse, RFC
error replies, the block's stage chain, and then ``send(reply, addr)``,
called exactly once (reply None: nothing to send, the query is dropped),
so a transport learns when its query is done whatever happened.
Fitting a reply to the client's UDP size (TC=1 and the whole records
that fit when too big, ``dns.truncate``) and recording it for the metrics
happen in one place, ``_fit_and_count``, for every speed. Nothing one
call saw is kept on this object for the next.
"""
from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from ..dns.key import EDNS_DO, cd, edns, question, qtype as key_qtype
from ..dns.truncate import fit
from ..dns.wire import (CD, MAX_MESSAGE, NOERROR, NXDOMAIN, RD, REFUSED, SERVFAIL, QueryError, error_reply,
                        make_query, parse_query, query_from_scan, scan, scan_servable)
from ..observe.stats import ListenerStats
from ..observe.top import SAMPLE, Top
from ..plugins.cache.memo import MEMO_BYTES, MemoTable
from ..plugins.chain import Request
from .admission import Admission
from .router import Router

log = logging.getLogger("nodecache.server")
_clock = time.monotonic  # durations (the metrics); ``QueryPath.clock`` is the caches' clock


class Asker:
    """One client's query taken at the callback speed (``plugins.chain``
    ``take``): whose path it came through, where its reply goes, what the
    scan saw of it (``dns.wire.scan``'s tuple), its size limit and when."""
    __slots__ = ("path", "send", "data", "addr", "client", "scan", "zone", "limit", "t0")

    def __init__(self, path: "QueryPath", send, data: bytes, addr, client, scan, zone: str, limit: int,
                 t0: float):
        self.path, self.send, self.data, self.addr, self.client = path, send, data, addr, client
        self.scan, self.zone, self.limit, self.t0 = scan, zone, limit, t0


class Fixed:
    """A ``via`` whose ref is the client's address and whose replies all go
    through one ``send``."""
    __slots__ = ("send",)

    def __init__(self, send):
        self.send = send

    @staticmethod
    def client_of(addr):
        return addr

    def sender_of(self, addr):
        return self.send


class QueryPath:
    def __init__(self, router: Router, stats: ListenerStats, admission: Admission | None = None,
                 clock=time.monotonic, top: Top | None = None):
        self.memo = MemoTable()
        self._memo = self.memo.get
        self._router = router
        self._bind_memo()
        self.stats = stats
        self.clock = clock  # the caches' clock: what a memo's expiry is measured on
        self.admission = admission or Admission()
        self.top = top or Top()  # the agent's heavy hitters (nodecache top)
        self.unsampled = SAMPLE  # hits until the next one the top tables count
        self.tasks: set[asyncio.Task] = set()
        self.direct_pending = 0  # askers taken at the callback speed, not yet answered or handed over
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
        """Size the memo to the caches whose hits it may hold (plugins.cache.memo)."""
        caches = list(dict.fromkeys(b.cache for b in self._router.blocks
                                     if b.memoizable and b.cache is not None))
        self.memo.bind(caches, caches[0].budget if caches else None)

    # -- the one dispatch -------------------------------------------------------
    def dispatch(self, data: bytes, proto: str, via, ref) -> bytes | None:
        """The reply to send now, or None (``via.sender_of(ref)`` gets it
        later, or the query is dropped)."""
        if proto == "udp":
            m = self._memo(data[2:])
            if m is not None:
                now = self.clock()
                if now < m.until or m.refresh(now):
                    m.hits += 1
                    self.unsampled -= 1
                    if not self.unsampled:
                        s = scan(data)  # (a memo hit has no scan: made for the sampled one only)
                        self._sample(s[0] if s is not None else None, proto, via, ref)
                    return data[:2] + m.after_id
        t0 = _clock()
        s = scan(data)
        if s is None:
            return self._miss(data, proto, via, ref, None, None, "")
        key, qend, flags, limit, edns = s
        routed = self._router.block_for(key)
        if routed is None:
            return self._miss(data, proto, via, ref, s, None, "")
        block, zone = routed
        front = block.front
        if front is None:
            return self._miss(data, proto, via, ref, s, block, zone)
        now = self.clock()
        reply = front(data, s, now)
        if reply is None:
            return self._miss(data, proto, via, ref, s, block, zone)
        if proto != "udp":
            limit = MAX_MESSAGE
        elif limit > block.max_udp:  # bufsize
            limit = block.max_udp
        sent = self._fit_and_count(data, reply, limit, qend, edns, zone, proto, key_qtype(key), t0, "cache")
        if proto == "udp" and block.memoizable:
            self._memoise(block, data, sent, s, zone, t0, sent is not reply)
        self.unsampled -= 1
        if not self.unsampled:
            self._sample(key, proto, via, ref)
        return sent

    def _sample(self, key: bytes | None, proto: str, via, ref) -> None:
        """One hit in SAMPLE goes into the top tables, for SAMPLE."""
        self.unsampled = SAMPLE
        self.top.hit(self.admission.client(via.client_of(ref)), key, proto)

    def _memoise(self, block, data: bytes, sent: bytes, s: tuple, zone: str, t0: float, truncated: bool) -> None:
        key, qend, _, _, edns = s
        memo = self.memo
        if len(sent) > MEMO_BYTES or not memo.admit():
            return
        m = block.memo_stage.memo_for(data, sent, key, qend, truncated)
        if m is None:
            return
        m.seconds = _clock() - t0
        m.acc = self.stats.series(zone, "udp", key_qtype(key), sent[3] & 0xF, edns == EDNS_DO, len(data),
                                  len(sent), 0.0, "cache")
        memo.put(data[2:], m)

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
    def _miss(self, data: bytes, proto: str, via, ref, s, block, zone: str) -> bytes | None:
        """What the front did not answer (``s``: the scan, None when the query
        is not of the common shape; ``block``: where it routed, None when it
        did not). Admission first: the client's share of misses in flight."""
        addr = via.client_of(ref)
        admission = self.admission
        client = admission.client(addr)
        if proto == "udp" and s is not None and admission.storms.tracked:
            storm = admission.storms.storming(client, s[0])
            if storm is not None:
                return self._contain(data, s, client, *storm)
        if not admission.admit(client):
            self.error_replies += 1
            self.top.refused(client, s[0] if s is not None else None, proto)
            if s is None:
                return None
            return error_reply(data, REFUSED, s[1], s[4])
        self.top.miss(client, s[0] if s is not None else None, proto)
        send = via.sender_of(ref)
        if proto == "udp" and block is not None and block.take is not None \
                and self._take(block, data, s, zone, addr, client, send):
            return None
        self.start_task(self.answer_and_send(data, proto, addr, s, send), client)
        return None

    def _contain(self, data: bytes, s: tuple, client, rcode: int, slip: bool) -> bytes:
        """A storm's query answered here (server.storms): a short denial with
        the RCODE upstream gave, or (slip) an empty truncated reply."""
        self.top.storm(client)
        if slip:
            out = error_reply(data, NOERROR, s[1], s[4])
            return out[:2] + bytes([out[2] | 0x02]) + out[3:]  # TC: a real client asks again over TCP
        return error_reply(data, rcode, s[1], s[4])

    def _failed(self, client, key: bytes, reply: bytes | None) -> None:
        """An upstream's failing answer counts towards a storm (server.storms;
        a local one, a template's SERVFAIL, costs nothing to repeat)."""
        if reply is not None and len(reply) > 3 and reply[3] & 0xF in (NXDOMAIN, SERVFAIL):
            self.admission.storms.failed(client, key, reply[3] & 0xF)

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
            self.top.answered(self.admission.client(addr), scanned[0] if scanned is not None else None, reply)
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
                reply, plugin = await block.serve(Request(q, proto, client, started or time.monotonic(),
                                                          ask=self.ask))
        if plugin == "forward" and proto == "udp":  # an upstream's failure counts towards a storm
            self._failed(self.admission.client(client), q.key, reply)
        return self._fit_and_count(data, reply, limit, q.qend, q.edns, zone, proto, q.qtype, t0, plugin)

    def ask(self, key: bytes, addr) -> bool:
        """Resolve ``key`` as an internal query through this listener's
        routing (to fill the cache before a client asks), admitted as the
        client at ``addr``: it takes that client's share of misses in
        flight. False when nothing serves it or the share is spent."""
        routed = self._router.block_for(key)
        if routed is None or routed[0].down:
            return False
        admission = self.admission
        client = admission.client(addr)
        if not admission.admit(client):
            return False
        query = parse_query(make_query(0, question(key), RD | (CD if cd(key) else 0), edns(key)))
        self.start_task(routed[0].serve(Request(query, "internal", addr)), client)
        return True

    # -- the callback speed (plugins.chain ``take``) ------------------------------
    def _take(self, block, data: bytes, s: tuple, zone: str, addr, client, send) -> bool:
        """Hand the admitted miss to the block's callback speed. False: the
        slow path must take it."""
        if not scan_servable(data, s[1]):
            return False  # a question the slow path refuses or rejects (dns.wire.refusal): it answers
        limit = s[3] if s[3] < block.max_udp else block.max_udp
        asker = Asker(self, send, data, addr, client, s, zone, limit, _clock())
        if not block.take(s[0], asker, None):
            return False
        self.direct_pending += 1
        return True

    def finish(self, asker: Asker, reply: bytes) -> bytes:
        """An asker's reply at the callback speed, fitted and counted (its
        admission slot given back): what to send it."""
        data = asker.data
        key, qend, _, _, edns = asker.scan
        out = self._fit_and_count(data, reply, asker.limit, qend, edns, asker.zone, "udp", key_qtype(key),
                                  asker.t0, "forward")
        self.top.answered(asker.client, key, out)
        self._failed(asker.client, key, out)
        self.direct_pending -= 1
        self.admission.release(asker.client)
        return out

    def hand_over(self, asker: Asker) -> None:
        """An asker the callback speed could not finish goes to the slow path
        (its admission slot with it; the deadline still counts from its arrival)."""
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

