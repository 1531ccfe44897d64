"""The common cache miss over UDP, answered without a task.

The slow path is a task per query running the block's stage chain, about
ten coroutine frames deep, around one upstream exchange. For the miss
nearly every query is — a block of cache and forward (errors allowed, no
query log), no entry at all for the key, an upstream channel open and
taking queries — that machinery is pure cost: measured at 1,000 misses/s,
it was about a third of the agent's CPU per miss. So ``start`` sends the
query upstream from ``datagram_received`` itself, and the channel's reply
callback (``DirectMiss.set_result``) finishes the answer: validate, cache,
render, count, send. Identical misses arriving meanwhile join the one in
flight (one upstream query, as the forwarder coalesces).

Anything off that happy path hands every asker to the slow path, which
starts over with its full retry logic (see ``forward.forwarder``): the
connection dying (``set_exception``), no reply within the forwarder's
attempt timeout, a reply that does not validate or is truncated over UDP,
or a bug here. The forwarder's deadline still counts from the query's
arrival (at least a quarter attempt is left for the slow path). Admission
(``server.admission``) applies as for any slow-path work; an asker's slot
passes to its slow-path task on a fallback.

A ``DirectMiss`` is the waiter a channel completes, as a future is for
the slow path (``done``, ``set_result``, ``set_exception``); an unanswered
one is quarantined on its channel exactly as a timed-out future is
(``forward.transport``: ``release`` looks only at whether a reply came).
"""
from __future__ import annotations

import logging
import time

from ..cache.entry import render_uncached
from ..dns.key import EDNS_DO, qtype as key_qtype
from ..dns.reply import MalformedReply
from ..dns.wire import fit, query_from_scan

log = logging.getLogger("nodecache.server")
_clock = time.monotonic


class DirectMiss:
    __slots__ = ("dispatcher", "block", "zone", "key", "up", "channel", "qid", "query", "timer", "sent_at",
                 "askers", "finished")

    def __init__(self, dispatcher, block, zone: str, key: bytes, up, channel):
        self.dispatcher, self.block, self.zone, self.key = dispatcher, block, zone, key
        self.up, self.channel = up, channel
        self.askers: list[tuple] = []   # (server, data, addr, client, scanned, t0)
        self.finished = False
        self.timer = None
        self.query = block.forward_stage.forwarder.query_for(key)
        loop = channel.loop
        self.sent_at = loop.time()
        dispatcher.direct_pending += 1  # (given back in _end, whatever happens)
        try:
            self.qid = channel.send(self.query, self)
        except Exception:  # closed between the check and the write (UpstreamClosed)
            self.finished = True
            dispatcher.direct_pending -= 1
            raise
        self.timer = loop.call_later(block.forward_stage.forwarder.cfg.attempt_timeout, self._timed_out)

    # -- what a channel expects of the waiter it completes ---------------------
    def done(self) -> bool:
        return self.finished

    def set_exception(self, exc: BaseException) -> None:
        """The channel died under us: the slow path re-sends on a fresh one.
        Later, as a future runs its callbacks: the channel is still failing
        every query it holds."""
        self.channel.loop.call_soon(self._fall_back)

    def set_result(self, msg: bytes) -> None:
        if self.finished:
            return
        self._end()
        forwarder = self.block.forward_stage.forwarder
        try:
            reply = forwarder.accepted(self.query[:2] + msg[2:], self.key, self.up,
                                       self.channel.loop.time() - self.sent_at)
        except MalformedReply:
            reply = None
        if reply is None:
            self._hand_over(self.askers)
            return
        askers, self.askers = self.askers, []
        try:
            self._answer(reply, askers)
        except Exception:  # a bug must not lose the queries: the slow path answers what is left
            self.block.panics += 1  # coredns_panics_total
            log.exception("answering a direct miss for %r failed", self.key[:64])
            self._hand_over(askers)

    # -- the rest -------------------------------------------------------------
    def _answer(self, reply, askers: list) -> None:
        dispatcher, cache = self.dispatcher, self.block.cache
        entry = cache.insert(self.key, reply)
        now = cache.clock()
        qtype = key_qtype(self.key)
        while askers:
            server, data, addr, client, (_, qend, flags, limit, edns), t0 = askers[0]
            if entry is not None:
                out = entry.render(data, qend, flags, edns, now)
            else:
                out = render_uncached(reply, data, qend, flags, edns)
            if len(out) > limit:
                dispatcher.truncated += 1
                out = fit(out, data, limit, qend, edns)
            dispatcher.stats.record(self.zone, "udp", qtype, out[3] & 0xF, edns == EDNS_DO, len(data), len(out),
                                    _clock() - t0, "forward")
            askers.pop(0)
            dispatcher.admission.release(client)
            server._send(out, addr)

    def _timed_out(self) -> None:
        if not self.finished:
            self._fall_back()

    def _fall_back(self) -> None:
        if self.finished:
            return
        self._end()
        askers, self.askers = self.askers, []
        self._hand_over(askers)

    def _end(self) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
        self.channel.release(self.qid, self)  # unanswered: its ID stays quarantined
        direct = self.block.forward_stage.forwarder.direct
        if direct.get(self.key) is self:
            del direct[self.key]
        self.dispatcher.direct_pending -= 1

    def _hand_over(self, askers: list) -> None:
        for server, data, addr, client, scanned, t0 in askers:  # the deadline still counts from t0
            self.dispatcher.start_task(server._slow, data, client, addr, scanned, t0)


def start(dispatcher, block, zone: str, server, data: bytes, addr, client, scanned) -> bool:
    """Send the miss ``data`` (already admitted) upstream without a task, or
    join the identical one in flight. False: the slow path must take it."""
    if query_from_scan(data, scanned) is None:
        return False  # a question the slow path refuses or rejects (dns.wire.refusal): it answers
    key = scanned[0]
    forwarder = block.forward_stage.forwarder
    asker = (server, data, addr, client, scanned, _clock())
    pending = forwarder.direct.get(key)
    if pending is not None:
        pending.askers.append(asker)
        block.cache.count_miss()  # as the cache stage counts each coalesced asker
        forwarder.coalesced += 1
        return True
    if key in forwarder.inflight or block.cache.peek(key) is not None:
        return False  # coalesce with the slow path's exchange; stale entries: the cache stage decides
    if block.loop is not None and (block.loop.detected or block.loop.is_probe(key)):
        return False
    ready = forwarder.ready_channel()
    if ready is None:
        return False
    try:
        miss = DirectMiss(dispatcher, block, zone, key, *ready)
    except Exception:  # the channel closed between the check and the write: the slow path re-sends
        return False
    block.cache.count_miss()
    miss.askers.append(asker)
    forwarder.direct[key] = miss
    return True
