"""Coalescing (``-udp-coalesce=W``): the batched UDP transport's third read
mode (``server.udpbatch``: one datagram per wakeup, a batch per wakeup,
and this, a batch per timer tick).

It is off by default: interrupt mitigation
for nodes that prefer CPU to microseconds: at a few thousand queries per
second nearly every datagram is a wakeup of its own, and the wakeup, not
the answer, is most of its cost (bench/READING.md). Once the socket has
brought 1.5 datagrams or more per W for a while, its reader is taken off
the loop and a timer reads it every W instead, all that queued in one
recvmmsg and their answers in one sendmmsg: one wakeup per poll, however
many datagrams it finds; the misses among them reach each upstream
connection in one write, and the replies to them are read in the next
poll (``upstream.cork``). A datagram then waits up to W (half of it on
average) before it is read. Polls that keep finding (on average) less
than one datagram put the reader back, so a quiet socket costs nothing
and the first query after a quiet spell is not delayed. W is 1 ms at
least: the loop's timers run on a millisecond clock.

``Polling`` is the part of ``udpbatch.BatchUdpServer`` that does this; it
reads and writes the transport's own state (its ``readable``, reader,
counters), so it is a mixin, not an object of its own.
"""
from __future__ import annotations

import time

from .mmsg import BATCH

POLL_FROM = 1.5   # datagrams per window, measured over READER_LOOK wakeups: where polling starts
POLL_UNTIL = 1.0  # datagrams per poll (running average) below which an empty poll stops polling
READER_LOOK = 8   # reader wakeups between two looks at the rate while not polling
POLL_BUDGET = 4 * BATCH  # datagrams one poll reads before it lets the loop run (a flood never holds it)


class Polling:
    def _woken(self) -> None:
        """The reader, coalescing on: answer what is queued as without it,
        and every READER_LOOK wakeups see whether the rate is up to
        POLL_FROM datagrams per window."""
        if self.batching:
            self.readable()
        else:
            self.readable_one()
        self.woken += 1
        if self.woken >= READER_LOOK and self.reading and self.coalesce:
            now = time.monotonic()
            rate = (self.datagrams - self.look_count) / max(now - self.look_at, 1e-6)
            self._look_from(now)
            if rate * self.coalesce >= POLL_FROM:
                self.start_polling(rate * self.coalesce)

    def start_polling(self, per_poll: float) -> None:
        """Read the socket from a timer every window (``per_poll``: the
        datagrams a poll is expected to find, from the reader's rate)."""
        self.loop.remove_reader(self.fd)
        self.polling, self.per_poll = True, per_poll
        self.cork.poll_begin()
        self.poll_timer = self.loop.call_later(self.coalesce, self._poll)

    def _poll(self) -> None:
        """A poll: every datagram queued, BATCH at a time; then the next
        poll, or the reader back when polls keep finding next to nothing."""
        self.poll_timer = None
        cork = self.cork
        cork.read_replies()  # the upstream's replies to the last poll's misses
        with cork:  # the misses' upstream queries: one write per connection for the poll
            got = n = self.readable()
            while n == BATCH and self.polling and got < POLL_BUDGET:
                n = self.readable()
                got += n
        if not self.polling:  # reading stopped, or batching was refused, meanwhile
            return
        self.polls += 1
        if n == BATCH:
            # A flood fills the socket faster than a poll empties it: read
            # on at the loop's next turn, after every other socket, timer
            # and upstream reply waiting (never a poll that does not end).
            self.budget_spent += 1
            self.poll_timer = self.loop.call_soon(self._poll)
            return
        self.per_poll += (got - self.per_poll) / 4
        if got == 0:
            self.empty_polls += 1
            if self.per_poll < POLL_UNTIL:
                self._stop_polling()
                self._look_from(time.monotonic())
                self.loop.add_reader(self.fd, self._reader())
                return
        self.poll_timer = self.loop.call_later(self.coalesce, self._poll)

    def _look_from(self, now: float) -> None:
        """The reader's next look at the rate counts from here."""
        self.woken, self.look_at, self.look_count = 0, now, self.datagrams

    def _stop_polling(self) -> None:
        self.polling = False
        self.cork.poll_end()
        if self.poll_timer is not None:
            self.poll_timer.cancel()
            self.poll_timer = None
