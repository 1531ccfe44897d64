"""The load generator's engine: one worker process's share of a run.

Open loop (``qps``): query k is *due* at start + k/qps. The sender sends
whatever is due every millisecond and each query's latency is measured from
its due time, not from when it was actually sent, so a server (or a
generator) that stalls shows the stall in the percentiles instead of
quietly sending less (no coordinated omission). If the sender itself falls
more than 50 ms behind schedule it records that, and the report says the
generator could not drive the requested rate.

Closed loop (``concurrency``): that many queries in flight; each answer
sends the next. This finds the maximum rate.

UDP uses several sockets, each with its own 16-bit ID space (read with one
recvmmsg per wakeup and written with one sendmmsg per burst where
server.udpbatch runs, else through uvloop's transport); TCP uses
several connections with pipelined queries. A reply that matches no query
in flight (wrong ID, wrong question, garbage) is counted as an error, a
reply after the timeout as late; a query without reply within the timeout
as lost. Every run is bounded by ``duration`` and ``max_queries``.
"""
from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time
from dataclasses import dataclass, field

from nodecache.dns.framing import FrameReader, frame
from nodecache.dns.wire import RD, make_query
from nodecache.server import mmsg

from .histogram import Histogram
from .udpbatched import batched_udp
from .scenarios import make, pod_plan

TICK = 0.001
BEHIND_LIMIT = 0.05
RCVBUF = 4 << 20


_ID = [qid.to_bytes(2, "big") for qid in range(1 << 16)]  # an ID's bytes, without a call per query


def _nothing() -> None:
    pass


@dataclass
class Spec:
    host: str
    port: int
    proto: str = "udp"
    mode: str = "open"          # open | closed
    qps: float = 1000.0         # open loop: queries (pod: lookups) per second, this worker
    concurrency: int = 16       # closed loop: in flight, this worker
    duration: float = 10.0
    max_queries: int = 10**9
    timeout: float = 2.0
    scenario: str = "hits"
    names: int = 0
    query_file: str = ""
    sockets: int = 4            # UDP sockets or TCP connections
    edns: int = -1              # -1: no OPT, 0: OPT, 1: OPT with DO
    seed: int = 0
    sample_every: int = 0       # keep (t, latency) of every Nth answer for plots (0: none)


@dataclass
class Result:
    sent: int = 0
    answered: int = 0
    lost: int = 0
    late: int = 0
    errors: int = 0
    rcodes: dict = field(default_factory=dict)
    hist: Histogram = field(default_factory=Histogram)
    elapsed: float = 0.0
    max_behind: float = 0.0
    lookups: int = 0            # pod scenario: name lookups (each several queries)
    lookup_failures: int = 0
    samples: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["hist"] = self.hist.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        r = cls(**{k: v for k, v in d.items() if k != "hist"})
        r.hist = Histogram.from_dict(d["hist"])
        return r

    def merge(self, other: "Result") -> None:
        for name in ("sent", "answered", "lost", "late", "errors", "lookups", "lookup_failures"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.rcodes.items():
            self.rcodes[k] = self.rcodes.get(k, 0) + v
        self.hist.merge(other.hist)
        self.elapsed = max(self.elapsed, other.elapsed)
        self.max_behind = max(self.max_behind, other.max_behind)
        self.samples.extend(other.samples)


class _Flight:
    """Queries in flight on one socket or connection, by ID."""

    def __init__(self):
        self.pending: dict[int, tuple[float, bytes]] = {}
        self.expired: dict[int, None] = {}  # IDs given up on: a reply to one is late, not wrong
        self.next_id = random.getrandbits(16)
        self.transport = None

    def new_id(self, result: Result) -> int:
        qid = self.next_id
        self.next_id = (qid + 1) & 0xFFFF
        if qid in self.pending:  # 65,536 in flight on this socket: the oldest is lost
            del self.pending[qid]
            result.lost += 1
        self.expired.pop(qid, None)
        return qid


class Engine:
    def __init__(self, spec: Spec, stop=None):
        self.spec = spec
        self.result = Result()
        self.scenario = make(spec.scenario, spec.names, spec.query_file, spec.seed)
        self.stop = stop  # a multiprocessing.Event or None
        self.done = False
        # closed loop: called with the time whenever a query is answered or
        # lost, to send the next one at once (None: open loop, or stopping)
        self.refill = None
        self.flush = _nothing  # batched UDP: send what ``send`` queued (after a burst of sends)
        self.t0 = 0.0

    # -- answers ----------------------------------------------------------
    def on_reply(self, flight: _Flight, data: bytes, now: float) -> None:
        """``now``: when the reply was read (one clock read per batch read)."""
        r = self.result
        if len(data) < 12 or not data[2] & 0x80:
            r.errors += 1
            return
        qid = data[0] << 8 | data[1]
        entry = flight.pending.pop(qid, None)
        if entry is None:
            if qid in flight.expired:
                del flight.expired[qid]
                r.late += 1     # answered after we gave up on it
            else:
                r.errors += 1   # an ID we are not waiting for: a wrong or duplicate answer
            return
        due, question = entry
        echoed = data[12:12 + len(question)]
        if echoed != question and echoed.lower() != question.lower():  # (a server may change case: 0x20)
            r.errors += 1  # right ID, wrong question
            return
        r.answered += 1
        rcode = data[3] & 0xF
        r.rcodes[rcode] = r.rcodes.get(rcode, 0) + 1
        r.hist.record(now - due)
        if self.spec.sample_every and r.answered % self.spec.sample_every == 0:
            r.samples.append((round(due - self.t0, 4), round(now - due, 6)))
        if self.refill is not None:
            self.refill(now)

    def sweep(self, flights: list[_Flight]) -> None:
        limit = time.monotonic() - self.spec.timeout
        for flight in flights:
            expired = [qid for qid, (due, _) in flight.pending.items() if due < limit]
            for qid in expired:
                del flight.pending[qid]
                flight.expired[qid] = None
                self.result.lost += 1
                if self.refill is not None:
                    self.refill(time.monotonic())

    def should_stop(self, now: float) -> bool:
        return (now - self.t0 >= self.spec.duration or self.result.sent >= self.spec.max_queries
                or (self.stop is not None and self.stop.is_set()))

    # -- running ----------------------------------------------------------
    async def run(self) -> Result:
        if self.spec.scenario == "pod":
            await self._run_pod()
        else:
            if self.spec.proto == "tcp":
                send, flights, close = await self._tcp()
            elif mmsg.available():
                send, flights, close = batched_udp(self, _Flight)
            else:
                send, flights, close = await self._udp()
            try:
                await (self._open(send, flights) if self.spec.mode == "open" else self._closed(send, flights))
            finally:
                close()
        return self.result

    def _query_parts(self) -> tuple[bytes, bytes]:
        """What every query has around its ID and question (``make_query``'s
        bytes, split once so that a send is two concatenations)."""
        template = make_query(0, b"", RD, self.spec.edns)
        return template[2:12], template[12:]

    async def _open(self, send, flights) -> None:
        spec, r = self.spec, self.result
        self.t0 = start = time.monotonic()
        interval = 1.0 / spec.qps
        last_sweep = start
        i = 0
        while True:
            now = time.monotonic()
            if self.should_stop(now):
                break
            due_count = int((now - start) * spec.qps) + 1
            behind = now - (start + r.sent * interval)
            if behind > r.max_behind:
                r.max_behind = behind
            while r.sent < due_count and r.sent < spec.max_queries:
                flight = flights[i % len(flights)]
                i += 1
                send(flight, start + r.sent * interval)
            self.flush()
            if now - last_sweep > 0.1:
                self.sweep(flights)
                last_sweep = now
            await asyncio.sleep(max(0.0, start + r.sent * interval - time.monotonic()) or 0)
        await self._finish(flights)

    async def _closed(self, send, flights) -> None:
        """``concurrency`` queries in flight: each answer (or loss) sends the
        next query from inside the reply callback, with no task, queue or
        timer per query (what keeps one core's drive rate near dnsperf's).
        The stop conditions are checked every 50 ms, not per query."""
        spec, result = self.spec, self.result
        turn = itertools.count()
        n = len(flights)

        def refill(now: float) -> None:
            if result.sent < spec.max_queries:
                send(flights[next(turn) % n], now)

        self.t0 = time.monotonic()
        self.refill = refill
        for _ in range(spec.concurrency):
            refill(self.t0)
        self.flush()
        last_sweep = self.t0
        while not self.should_stop(time.monotonic()):
            await asyncio.sleep(0.05)
            if time.monotonic() - last_sweep >= 0.1:
                self.sweep(flights)
                self.flush()
                last_sweep = time.monotonic()
        self.refill = None
        await self._finish(flights)

    async def _finish(self, flights) -> None:
        deadline = time.monotonic() + self.spec.timeout
        while any(f.pending for f in flights) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.result.elapsed = time.monotonic() - self.t0
        for f in flights:
            self.result.lost += len(f.pending)
            f.pending.clear()

    async def _udp(self):
        loop = asyncio.get_running_loop()
        engine = self
        flights, transports = [], []

        class Proto(asyncio.DatagramProtocol):
            def __init__(self, flight):
                self.flight = flight

            def datagram_received(self, data, addr):
                engine.on_reply(self.flight, data, time.monotonic())

            def error_received(self, exc):
                pass  # ICMP unreachable: the queries time out and count as lost

        for _ in range(self.spec.sockets):
            flight = _Flight()
            transport, _ = await loop.create_datagram_endpoint(lambda f=flight: Proto(f), sock=self.udp_socket())
            flights.append(flight)
            transports.append(transport)
        return self.sender(flights, transports, lambda t, data: t.sendto(data))

    def udp_socket(self) -> socket.socket:
        """A UDP socket connected to the server, with room for bursts of
        replies: a reply dropped because this process was busy for a few
        milliseconds would be counted as the server's loss."""
        family = socket.AF_INET6 if ":" in self.spec.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setblocking(False)
        sock.connect((self.spec.host, self.spec.port))
        return sock

    async def _tcp(self):
        loop = asyncio.get_running_loop()
        engine = self
        flights, transports = [], []

        class Proto(asyncio.Protocol):
            def __init__(self, flight):
                self.flight, self.reader = flight, FrameReader()

            def data_received(self, data):
                now = time.monotonic()
                for msg in self.reader.feed(data):
                    engine.on_reply(self.flight, msg, now)

        for _ in range(self.spec.sockets):
            flight = _Flight()
            transport, _ = await loop.create_connection(lambda f=flight: Proto(f), self.spec.host, self.spec.port)
            flights.append(flight)
            transports.append(transport)
        return self.sender(flights, transports,
                            lambda t, data: t.is_closing() or t.write(frame(data)))

    def sender(self, flights, transports, write):
        """(send, flights, close) over one transport per flight."""
        for flight, transport in zip(flights, transports):
            flight.transport = transport
        head, tail = self._query_parts()
        scenario, result = self.scenario, self.result

        def send(flight, due):
            question = next(scenario)
            qid = flight.new_id(result)
            flight.pending[qid] = (due, question)
            write(flight.transport, b"".join((_ID[qid], head, question, tail)))
            result.sent += 1

        def close():
            for t in transports:
                t.close()
        return send, flights, close

    # -- the pod scenario ---------------------------------------------------
    async def _run_pod(self) -> None:
        """Lookups as a pod's glibc makes them: the search list in order, A
        and AAAA in parallel from one socket, 5 s timeout, 2 attempts."""
        spec, r = self.spec, self.result
        self.t0 = start = time.monotonic()
        tasks: set[asyncio.Task] = set()
        k = 0
        while not self.should_stop(time.monotonic()):
            due = start + k / spec.qps
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > r.max_behind:
                r.max_behind = -delay
            task = asyncio.get_running_loop().create_task(self._lookup(next(self.scenario), due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        if tasks:
            await asyncio.wait(tasks, timeout=2 * 5.0 * 5)
        r.elapsed = time.monotonic() - start

    async def _lookup(self, name: str, due: float) -> None:
        r = self.result
        loop = asyncio.get_running_loop()
        # latency from when it was due (a late start is the server's delay too), or
        # from its start if the timer woke it early (libuv's timers round to the millisecond)
        since = min(due, time.monotonic())
        r.lookups += 1
        replies: asyncio.Queue = asyncio.Queue()

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                replies.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Proto, remote_addr=(self.spec.host, self.spec.port))
        try:
            for fqdn in pod_plan(name):
                found, final = await self._ask_pair(transport, replies, fqdn)
                if found or final:
                    break
            else:
                found = False
            if not found:
                r.lookup_failures += 1
            took = time.monotonic() - since
            r.hist.record(took)
            if self.spec.sample_every and r.lookups % self.spec.sample_every == 0:  # the plot's time panel
                r.samples.append((round(due - self.t0, 4), round(took, 6)))
        finally:
            transport.close()

    async def _ask_pair(self, transport, replies, fqdn: str) -> tuple[bool, bool]:
        """A and AAAA for one candidate name: (an address was found, stop searching)."""
        from nodecache.dns.wire import question_bytes
        r = self.result
        questions = {random.getrandbits(16): question_bytes(fqdn, t) for t in (1, 28)}
        for attempt in range(2):
            for qid, q in questions.items():
                transport.sendto(make_query(qid, q, RD, -1))
                r.sent += 1
            waiting = dict(questions)
            answers = []
            deadline = time.monotonic() + 5.0
            while waiting:
                try:
                    data = await asyncio.wait_for(replies.get(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                qid = data[0] << 8 | data[1]
                if qid not in waiting or len(data) < 12:
                    r.late += 1
                    continue
                del waiting[qid]
                r.answered += 1
                rcode = data[3] & 0xF
                r.rcodes[rcode] = r.rcodes.get(rcode, 0) + 1
                answers.append((rcode, data[6] << 8 | data[7]))
            if not waiting:
                found = any(rc == 0 and an for rc, an in answers)
                # NXDOMAIN/NODATA: try the next name; SERVFAIL etc.: glibc also moves on
                return found, False
            r.lost += len(waiting)
            questions = {qid: q for qid, q in questions.items() if qid in waiting}
        return False, False
