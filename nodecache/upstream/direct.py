"""One upstream exchange started from a receive callback, without a task.

The slow path is a task per query running the block's stage chain, about
ten coroutine frames deep, around one upstream exchange. For the miss
nearly every query is (no entry at all, an upstream channel open and
taking queries) that machinery is pure cost: measured at 1,000 misses/s it
was about a third of the agent's CPU per miss. So the forward stage may
send the query from the datagram callback itself (its ``take``, the
callback speed of ``plugins.chain``): ``start`` writes it on the
forwarder's ready channel and the channel's reply completes this
``DirectExchange``, which validates the reply and calls the caller's
``on_done(key, reply, askers)`` once (the cache stage's: it stores the
reply and answers each asker).

Every exchange in flight, whoever started it, is an ``InFlight`` in the
forwarder's one table (``inflight``, key -> exchange), so coalescing
happens in one place and nobody asks which kind it is: a slow-path query
for a key in flight ``follow``s it (a future of the same reply; None when
a direct exchange fell back: resolve again), a direct miss ``join``s it
(one more asker; a slow-path exchange says no, and the miss takes the
slow path, which follows it), and ``cancel`` ends what the forwarder
closes. ``Leader`` is the slow path's (its task runs the attempts),
``DirectExchange`` the callback's.

Anything off the happy path ends it with ``on_done(key, None, askers)``: the
channel dying (``set_exception``), no reply within the forwarder's attempt
timeout, a reply that does not validate or is truncated over UDP. The
caller then hands its askers to the slow path, which starts over with the
full retry logic (``upstream.forwarder``); followers are told None and
resolve again. An exchange is a ``upstream.transport.Waiter``: an
unanswered one leaves its ID quarantined on its channel exactly as a
timed-out future does.

The attempt timeout is the forwarder's, the same for every exchange, so
exchanges reach their deadlines in the order they start: a forwarder's
``Deadlines`` keeps them in a queue with one timer, for the oldest one
not finished, instead of a loop timer per exchange (made, armed,
cancelled and closed once per miss: about a tenth of a direct miss's
own Python time under cProfile).
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable

from ..dns.key import question
from ..dns.reply import MalformedReply, Reply


class InFlight:
    """One key's exchange in the forwarder's table (see above)."""
    __slots__ = ()

    def follow(self) -> Awaitable[Reply | None]:
        """The same reply for a slow-path query of the key, or None (resolve again)."""
        raise NotImplementedError

    def join(self, asker) -> bool:
        """Add a direct miss's asker; False: it takes the slow path."""
        raise NotImplementedError

    def cancel(self) -> None:
        """The forwarder closes."""


class Leader(InFlight):
    """The slow path's exchange: the leader's task runs the attempts and
    settles ``future``; followers await it (its failure is theirs)."""
    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future):
        self.future = future

    def follow(self) -> Awaitable[Reply | None]:
        return asyncio.shield(self.future)

    def join(self, asker) -> bool:
        return False  # its reply has no askers' callback: the direct miss takes the slow path and follows

    def cancel(self) -> None:
        self.future.cancel()


class DirectExchange(InFlight):
    """A ``upstream.transport.Waiter`` by declaration: the channel completes it."""
    __slots__ = ("forwarder", "key", "up", "channel", "qid", "sent_at", "askers",
                 "followers", "finished", "on_done")

    def __init__(self, forwarder, key: bytes, up, channel, on_done):
        self.forwarder, self.key, self.up, self.channel = forwarder, key, up, channel
        self.on_done = on_done            # on_done(key, reply or None, askers), called exactly once
        self.askers: list = []            # the caller's, opaque here
        self.followers: list[asyncio.Future] = []
        self.finished = False
        loop = channel.loop
        self.sent_at = loop.time()
        self.qid = channel.send(forwarder.query_for(key), self, question(key))  # raises UpstreamClosed: nothing started
        deadlines = forwarder.deadlines
        if deadlines is None or deadlines.loop is not loop:
            deadlines = forwarder.deadlines = Deadlines(loop, forwarder.cfg.attempt_timeout)
        deadlines.add(self, self.sent_at)
        forwarder.inflight[key] = self

    # -- Waiter: what the channel calls --------------------------------------
    def done(self) -> bool:
        return self.finished

    def set_exception(self, exc: BaseException) -> None:
        """The channel died under us: later (the channel is still failing
        every query it holds), the slow path re-sends on a fresh one."""
        self.channel.loop.call_soon(self._fall_back)

    def set_result(self, msg: bytes) -> None:
        if self.finished:
            return
        self._end()
        try:
            # (msg carries the channel's ID, not ours: nothing reads a reply's ID from here on)
            reply = self.forwarder.accepted(msg, self.key, self.up, self.channel.loop.time() - self.sent_at)
        except MalformedReply:
            reply = None
        self._finish(reply)

    # -- InFlight -------------------------------------------------------------
    def follow(self) -> asyncio.Future:
        fut = self.channel.loop.create_future()
        self.followers.append(fut)
        return fut

    def join(self, asker) -> bool:
        self.askers.append(asker)
        self.forwarder.coalesced += 1
        return True

    def cancel(self) -> None:
        """Nothing: it ends at its deadline (``Deadlines``), its askers handed to the slow path."""

    # -- the rest -------------------------------------------------------------

    def _fall_back(self) -> None:
        if not self.finished:
            self._end()
            self._finish(None)

    def _end(self) -> None:
        self.finished = True  # (its place in the Deadlines queue goes when that gets to it)
        self.channel.release(self.qid, self)  # unanswered: its ID stays quarantined
        if self.forwarder.inflight.get(self.key) is self:
            del self.forwarder.inflight[self.key]

    def _finish(self, reply: Reply | None) -> None:
        for fut in self.followers:
            if not fut.done():
                fut.set_result(reply)
        askers, self.askers = self.askers, []
        self.on_done(self.key, reply, askers)


class Deadlines:
    """One forwarder's direct exchanges in the order they started, which is
    the order of their deadlines (one attempt timeout for all), and one
    timer at the first deadline still to come. An exchange that finishes
    is only marked so; the queue drops it when it reaches the front."""

    # Timers fire on the loop's millisecond clock: a deadline this close is due.
    SLACK = 0.001

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float):
        self.loop, self.timeout = loop, timeout
        self.queue: deque = deque()  # (deadline, exchange), oldest first
        self.timer: asyncio.TimerHandle | None = None

    def add(self, exchange: DirectExchange, now: float) -> None:
        queue = self.queue
        while queue and queue[0][1].finished:
            queue.popleft()
        queue.append((now + self.timeout, exchange))
        if self.timer is None:
            self.timer = self.loop.call_at(now + self.timeout, self._expire)

    def __len__(self) -> int:
        return len(self.queue)

    def _expire(self) -> None:
        """Fall back every exchange whose deadline has come (the finished
        ones in front are dropped), then wait for the next deadline."""
        self.timer = None
        queue = self.queue
        due = self.loop.time() + self.SLACK
        while queue and (queue[0][1].finished or queue[0][0] <= due):
            queue.popleft()[1]._fall_back()  # (nothing for a finished one)
        if queue:
            self.timer = self.loop.call_at(queue[0][0], self._expire)


def start(forwarder, key: bytes, asker, on_done) -> bool:
    """Send ``key`` upstream now with ``asker``, or add it to the direct
    exchange in flight for ``key``. False: only the slow path can take it
    (a slow-path exchange in flight for the key, no ready channel, the
    in-flight cap reached, the channel closing under the write).
    ``on_done(key, reply or None, askers)``: called once when it ends."""
    pending = forwarder.inflight.get(key)
    if pending is not None:
        return pending.join(asker)
    ready = forwarder.ready_channel()
    if ready is None:
        return False
    try:
        exchange = DirectExchange(forwarder, key, *ready, on_done)
    except Exception:  # the channel closed between the check and the write: the slow path re-sends
        return False
    exchange.askers.append(asker)
    return True
