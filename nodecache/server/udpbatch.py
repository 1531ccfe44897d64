"""UDP transport in batches: recvmmsg(2) in, sendmmsg(2) out.

Same job as ``server.udp.UdpServer`` (bytes in, the query path's
``dispatch``, bytes out), with fewer system calls and less work per
datagram. uvloop's datagram transport reads one datagram per recvmsg and
keeps reading until one fails with EAGAIN, then makes a Python (host,
port) tuple for each sender and parses it back for each reply; it has no
batched receive (libuv's UV_UDP_RECVMMSG is not exposed). Here the socket
is watched with ``loop.add_reader`` and each time it is readable one
recvmmsg takes every datagram queued (up to ``BATCH``, no failing call at
the end), the cache hits among them are answered with one sendmmsg, and
each reply goes back to its sender's address as the kernel wrote it (the
sockaddr bytes; no tuple). At low rates a wakeup rarely finds more than
one datagram and two ctypes calls cost more than they save, so below
TO_SINGLE datagrams/s the socket is read one datagram per wakeup with its
own recvfrom_into (the loop's level-triggered poll says when more is
waiting: no failing read either); above TO_BATCH, in batches (``_pace``
looks at the rate every PACE datagrams; the thresholds are measured,
bench/RESULTS.md).

The system calls and their buffers are ``server.mmsg``. A query that is
not a cache hit leaves the batch: the query path asks this transport (its
``via``, the datagram's index its ref) for the sender as a tuple, made
only then, and a later reply is sent on its own with ``sendto``
(``send``).

``mmsg.available()`` says whether this runs here (Linux, libc with both
calls, the 64-bit struct layout); otherwise, or with ``-udp-batch=false``,
the agent uses ``UdpServer`` on uvloop's transport.

Coalescing (``-udp-coalesce=W``), the third read mode, is ``server.udppoll``.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import socket
import time

from ..upstream.cork import Cork
from ..observe.ratelog import Throttle
from .mmsg import BATCH, CALLS, I_LEN, I_NAMELEN, I_PER, MM, MSG_DONTWAIT, NAME, Q_NAME, Q_PER, SLOT, Vectors, sender
from .querypath import Fixed, QueryPath
from .udppoll import Polling

log = logging.getLogger("nodecache.udp")

PACE = 4096           # datagrams between two looks at the rate
_TRANSIENT = (errno.EAGAIN, errno.EINTR)            # nothing queued after all, or a signal
_REFUSED_CALL = (errno.ENOSYS, errno.EPERM)  # recvmmsg: the call itself (seccomp, old kernel)
TO_BATCH, TO_SINGLE = 16000, 12000  # datagrams/s: where batching starts and stops paying (measured)


class BatchUdpServer(Polling):
    def __init__(self, path: QueryPath, sock: socket.socket, cork: Cork | None = None):
        """``cork``: the agent's (upstream.cork), whose window is -udp-coalesce's
        (checked where the flag is read); without one, no polls."""
        self.path = path
        self.dispatch = path.dispatch
        self.one = Fixed(self.send)  # the ``via`` of a datagram read on its own: its ref is the address
        self.sock = sock
        self.fd = sock.fileno()
        self.recvmmsg, self.sendmmsg = CALLS
        self.rx, self.tx = Vectors(), Vectors()
        self.names = ctypes.create_string_buffer(BATCH * NAME)
        self.name_view = memoryview(self.names).cast("B")
        names = ctypes.addressof(self.names)
        self.name_at = [names + k * NAME for k in range(BATCH)]
        # The kernel writes a sender's address at its socket family's full
        # size (sockaddr_in6 for every sender of an IPv6 socket, v4-mapped
        # ones included), so that size is every message's name length, in
        # and out, and never needs resetting. Reply k goes to sender k
        # unless a query before it left the batch (``readable``).
        self.namelen = 28 if sock.family == socket.AF_INET6 else 16
        for k in range(BATCH):
            self.rx.q[k * Q_PER + Q_NAME] = self.tx.q[k * Q_PER + Q_NAME] = self.name_at[k]
            self.rx.i[k * I_PER + I_NAMELEN] = self.tx.i[k * I_PER + I_NAMELEN] = self.namelen
        # One datagram at a time goes through the first receive slot and is
        # copied out at its size: recvfrom(SLOT) would allocate 64 KiB per
        # datagram and shrink it, and queries kept by the slow path would pin
        # the shrunk chunks all over the heap (bench/fuzz.py, 1M hostile
        # packets: peak RSS 68.2 MiB that way, 61.4 this way, 58.7 on
        # uvloop's transport).
        self.inbox = self.rx.data[:SLOT]
        self.recvfrom_into, self.sendto = sock.recvfrom_into, sock.sendto
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reading = False
        self.batching = False  # one datagram per wakeup until the rate says otherwise (_pace)
        self.batch_ok = True   # False once the kernel refused recvmmsg or sendmmsg
        self.since, self.paced, self.switches = 0.0, 0, 0
        self.throttle = Throttle(log)  # a failed query's traceback (observe.ratelog)
        self.unsent = 0       # replies the kernel would not take (buffer full, client gone, firewalled)
        self.receive_errors = 0  # recvmmsg failures that were neither transient nor a refused call
        self.datagrams = 0    # received, and in how many recvmmsg calls: the batching achieved
        self.batches = 0
        self.cork = cork if cork is not None else Cork()
        self.coalesce = self.cork.window  # this socket's polling window W in s (0: off; see the top)
        self.polling = False      # the reader is off the loop and a timer reads the socket
        self.poll_timer: asyncio.Handle | None = None  # the next poll: a timer, or at once after a full one
        self.per_poll = 0.0       # datagrams per poll, a running average
        self.woken, self.look_at, self.look_count = 0, 0.0, 0  # reader wakeups; the last look at the rate
        self.wild = False         # a socket on every address: replies carry their source (server.udpwild)
        self.polls = 0            # polls made, and how many found nothing
        self.empty_polls = 0
        self.budget_spent = 0     # polls that stopped at POLL_BUDGET with more queued

    def events(self) -> dict[str, int]:
        return {"udp_reply_unsent": self.unsent, "udp_receive_error": self.receive_errors,
                "udp_poll": self.polls, "udp_poll_empty": self.empty_polls,
                "udp_poll_budget_spent": self.budget_spent}

    # -- lifecycle --------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.since = self.look_at = time.monotonic()
        loop.add_reader(self.fd, self._reader())
        self.reading = True

    def _reader(self):
        """What the loop calls when the socket is readable."""
        if self.coalesce:
            return self._woken
        return self.readable if self.batching else self.readable_one

    def stop_reading(self) -> None:
        """Stop taking datagrams (they stay queued in the kernel for whoever
        reads the socket next, a successor); replies still being worked on
        are sent on the same socket."""
        if self.reading:
            if self.polling:
                self._stop_polling()
            else:
                self.loop.remove_reader(self.fd)
            self.reading = False

    def close(self) -> None:
        self.stop_reading()
        if self.fd >= 0:
            self.sock.close()
            self.fd = -1
            self.inbox.release()
            self.rx.release()
            self.tx.release()
            self.name_view.release()

    def fileno(self) -> int | None:
        """The listening socket, while it is read (what a successor takes)."""
        return self.fd if self.reading else None

    def sockname(self):
        return self.sock.getsockname()

    def _pace(self) -> None:
        """Every PACE datagrams: batch above TO_BATCH datagrams/s, read one
        at a time below TO_SINGLE (hysteresis between the two)."""
        now = time.monotonic()
        rate = (self.datagrams - self.paced) / max(now - self.since, 1e-6)
        self.since, self.paced = now, self.datagrams
        batching = self.batch_ok and (rate >= TO_BATCH if not self.batching else rate >= TO_SINGLE)
        if batching != self.batching:
            self.switches += 1
            self.use_batches(batching)

    def use_batches(self, on: bool) -> None:
        self.batching = on
        if self.reading and not self.polling:
            self.loop.add_reader(self.fd, self._reader())

    # -- the hot path, one datagram at a time (low rates) -------------------
    def readable_one(self) -> None:
        try:
            size, addr = self.recvfrom_into(self.inbox)
        except OSError:  # nothing after all (EAGAIN), or an error queued by ICMP: nothing to answer
            return
        self.datagrams += 1
        if self.datagrams - self.paced >= PACE:
            self._pace()
        self.answer(self.inbox[:size].tobytes(), addr)

    def answer(self, query: bytes, addr) -> None:
        """One datagram's answer, sent on its own (also for a datagram read
        elsewhere: ``server.sharing`` reading our queue)."""
        try:
            reply = self.dispatch(query, "udp", self.one, addr)
        except Exception as exc:  # a bug costs this datagram only
            self.throttle.error("query", "udp query failed", exc_info=exc)
            return
        if reply is not None:
            self.send(reply, addr)

    # the query path's ``via`` for datagram ``k`` of the batch being answered
    def client_of(self, k: int):
        return sender(self.name_view[k * NAME:k * NAME + self.namelen].tobytes())

    def sender_of(self, k: int):
        return self.send

    # -- the hot path in batches (high rates) --------------------------------
    def readable(self) -> int:
        """Answer the datagrams one recvmmsg takes; returns how many."""
        wild = self.wild
        if wild:
            self.ready_controls()
        n = self.recvmmsg(self.fd, self.rx.pointer, BATCH, MSG_DONTWAIT, None)
        if wild:
            self.received = n  # the slots whose control lengths the kernel wrote
        if n <= 0:
            if n < 0:
                err = ctypes.get_errno()
                if err in _REFUSED_CALL:
                    # the call itself is refused (a seccomp profile, an old
                    # kernel): the queued datagrams would wake us forever unread
                    self._cannot_batch("recvmmsg", err)
                elif err not in _TRANSIENT:
                    self.receive_errors += 1  # an error queued on the socket (now cleared): read on
            return 0
        self.datagrams += n
        self.batches += 1
        if self.datagrams - self.paced >= PACE:
            self._pace()
        ri, data = self.rx.i, self.rx.data
        out, tq, tiov, name_at = self.tx.data, self.tx.q, self.tx.iov, self.name_at
        dispatch = self.dispatch
        ready = 0
        for k in range(n):
            # Every datagram's work, reply slot and destination included, is
            # inside the try: whatever raises costs that datagram alone, and
            # each queued reply carries the address of its own sender (set
            # for every reply, so nothing from an earlier batch is reused).
            try:
                at = k * SLOT
                query = data[at:at + ri[k * I_PER + I_LEN]].tobytes()
                reply = dispatch(query, "udp", self, k)
                if reply is None:  # answered later, on its own
                    continue
                to = ready * SLOT
                out[to:to + len(reply)] = reply
                tiov[2 * ready + 1] = len(reply)
                tq[ready * Q_PER + Q_NAME] = name_at[k]
                if wild:  # the reply leaves from the address its query was sent to (server.udpwild)
                    self.reply_from(k, ready)
                ready += 1
            except Exception as exc:  # one datagram's bug never costs the others their replies
                self.throttle.error("query", "udp query failed", exc_info=exc)
        if ready:
            self._flush(ready)
        return n

    def _flush(self, count: int) -> None:
        """Send ``count`` queued replies. sendmmsg stops at the first message
        the kernel refuses (returning how many went, or -1 if the first
        failed): that one is counted unsent and the rest are tried again.
        EPERM is what both a seccomp profile refusing the call and a
        netfilter rule dropping one reply (OUTPUT DROP/REJECT) return, so
        that message is tried once with sendto: refused too, it was the
        datagram (counted, the batch goes on); sent, it was the call."""
        first = 0
        while first < count:
            pointer = self.tx.pointer if first == 0 else ctypes.c_void_p(self.tx.address + first * MM)
            sent = self.sendmmsg(self.fd, pointer, count - first, 0)
            if sent <= 0:
                err = ctypes.get_errno()
                if err == errno.ENOSYS or (err == errno.EPERM and self._send_one(first)):
                    self._cannot_batch("sendmmsg", err)
                    self._send_each(first + (err == errno.EPERM), count)
                    return
                self.unsent += 1
                sent = 1
            first += sent

    def _queued(self, k: int) -> tuple[bytes, tuple]:
        """Queued reply k and its destination's tuple."""
        name = self.tx.q[k * Q_PER + Q_NAME] - self.name_at[0]
        reply = self.tx.data[k * SLOT:k * SLOT + self.tx.iov[2 * k + 1]].tobytes()
        return reply, sender(self.name_view[name:name + self.namelen].tobytes())

    def _send_one(self, k: int) -> bool:
        """Queued reply k with sendto: whether the kernel took it."""
        try:
            self.sendto(*self._queued(k))
        except OSError:
            return False
        return True

    def _send_each(self, first: int, count: int) -> None:
        """Send queued replies first..count-1 one by one (sendmmsg refused)."""
        for k in range(first, count):
            self.send(*self._queued(k))

    def _cannot_batch(self, call: str, err: int) -> None:
        """The system call is refused, not one datagram: read and answer
        one datagram at a time from now on."""
        log.warning("udp %s on %s failed (%s): reading one datagram at a time from now on%s", call,
                    self.sockname(), os.strerror(err), ", not coalescing" if self.coalesce else "")
        self.batch_ok = False
        self.coalesce = 0.0  # polls read in batches: without them, one wakeup per datagram again
        if self.polling:
            self._stop_polling()
        self.use_batches(False)  # (the reader back, one datagram at a time)

    # -- replies from elsewhere ---------------------------------------------
    def send(self, reply: bytes | None, addr) -> None:
        """A reply sent on its own (one datagram at a time, or from the miss
        side; None: nothing to send)."""
        if reply is None or self.fd < 0:
            return
        try:
            self.sendto(reply, addr)
        except OSError:  # buffer full or client gone: the client will retry
            self.unsent += 1
