"""Misses sent upstream without a task (upstream.direct): the same answers and
counters as the slow path, and every way off the happy path still answers."""
from __future__ import annotations

import asyncio
import random
import time

from dnslib import QTYPE, DNSRecord

from nodecache.emulated.client import build
from nodecache_lab.fakes import FakeClock
from nodecache_lab.harness import CLUSTER, node

NAMES = [f"svc-{i}.default.svc.cluster.local" for i in range(30)] + [f"nope-{i}.default.svc.cluster.local"
                                                                     for i in range(5)] + ["www.example.com"]


def _traffic(seed: int = 3) -> list[list[bytes]]:
    """Bursts of queries sent together (identical misses among them)."""
    rng = random.Random(seed)
    return [[build(rng.choice(NAMES), rng.choice([QTYPE.A, QTYPE.AAAA]), do=rng.choice([-1, 0, 1]), qid=100 * b + i)
             for i in range(rng.randint(1, 6))] for b in range(80)]


async def _run(traffic, direct: bool):
    async with node(CLUSTER, clock=FakeClock(), delay=0.002) as n:
        for block in n.agent.blocks:
            if not direct:
                block.take = None
        replies = []
        for burst in traffic:
            replies += await asyncio.gather(*(n.udp(q) for q in burst))
        n.agent.fold_counters()
        stats = {}
        for k, v in n.agent.listeners[0].stats.counts.items():
            acc = stats.setdefault(k[:7] + k[8:], [0, 0, 0])  # all but the duration bucket
            for i, x in enumerate((v[0], v[2], v[3])):
                acc[i] += x
        caches = [(c.hits, c.misses, len(c)) for c in (b.cache for b in n.agent.blocks) if c is not None]
        return replies, stats, caches, len(n.up.seen), sum(b.forward_stage.forwarder.coalesced
                                                           for b in n.agent.blocks)


async def test_direct_misses_answer_and_count_like_the_slow_path(monkeypatch):
    from nodecache.upstream import direct as direct_mod
    taken, real_start = [], direct_mod.start

    def counting_start(*args):
        ok = real_start(*args)
        taken.append(ok)
        return ok
    monkeypatch.setattr(direct_mod, "start", counting_start)
    traffic = _traffic()
    direct = await _run(traffic, True)
    assert taken.count(True) > 50  # the direct path really answered most misses
    taken.clear()
    slow = await _run(traffic, False)
    assert taken == []             # ... and the control never took it
    assert direct[0] == slow[0]           # every reply, byte for byte
    assert direct[1] == slow[1]           # CoreDNS's request/response series
    assert direct[2] == slow[2]           # cache hits, misses, entries
    assert direct[3] == slow[3] < sum(map(len, traffic))  # upstream queries: identical misses coalesced


async def test_identical_direct_misses_make_one_upstream_query():
    async with node(CLUSTER, delay=0.05) as n:
        await n.udp(build(NAMES[0], QTYPE.A))  # opens the upstream connection: later misses go direct
        replies = await asyncio.gather(*(n.udp(build(NAMES[1], QTYPE.A)) for _ in range(50)))
        assert all(DNSRecord.parse(r).rr for r in replies)
        assert [s.name for s in n.up.seen].count(NAMES[1] + ".") == 1
        assert n.agent.listeners[0].path.direct_pending == 0


def _late_once(marker: bytes = b"svc-2"):
    """An upstream delay: the first query containing ``marker`` is answered
    after 3 s, past the 2 s attempt timeout; everything else at once."""
    left = [1]

    def delay(data: bytes) -> float:
        if marker in data and left[0]:
            left[0] -= 1
            return 3.0
        return 0.0
    return delay


async def test_a_reply_later_than_the_attempt_timeout_is_asked_again_by_the_slow_path():
    async with node(CLUSTER, delay=_late_once()) as n:
        await n.udp(build(NAMES[0], QTYPE.A))
        t0 = time.monotonic()
        rec = DNSRecord.parse(await n.udp(build(NAMES[2], QTYPE.A)))
        assert rec.header.rcode == 0 and rec.rr and 1.9 < time.monotonic() - t0 < 3.0
        assert [s.name for s in n.up.seen].count(NAMES[2] + ".") == 2
        assert n.agent.listeners[0].path.direct_pending == 0


async def test_a_connection_reset_under_direct_misses_loses_nothing():
    async with node(CLUSTER, delay=0.05, sever=("reset", 4, 1)) as n:
        await n.udp(build(NAMES[0], QTYPE.A))
        replies = await asyncio.gather(*(n.udp(build(NAMES[i], QTYPE.A)) for i in range(3, 12)))
        assert [DNSRecord.parse(r).header.rcode for r in replies] == [0] * 9
        assert n.up.severed == 1


async def test_misses_in_flight_are_answered_through_a_drain():
    async with node(CLUSTER, delay=0.3) as n:
        await n.udp(build(NAMES[0], QTYPE.A))
        asked = [asyncio.ensure_future(n.udp(build(NAMES[i], QTYPE.A))) for i in range(13, 18)]
        await asyncio.sleep(0.05)
        path = n.agent.listeners[0].path
        assert path.direct_pending == 5
        for listener in n.agent.listeners:
            listener.stop_reading()
        assert await path.drain(2.0) == 0
        assert all(DNSRecord.parse(r).rr for r in await asyncio.gather(*asked))


async def test_a_direct_miss_nobody_answers_is_servfail_within_the_deadline():
    async with node(CLUSTER) as n:
        await n.udp(build(NAMES[0], QTYPE.A))  # the connection is open: the next miss goes direct
        n.up.drop = 1.0
        t0 = time.monotonic()
        rec = DNSRecord.parse(await n.udp(build(NAMES[20], QTYPE.A)))
        elapsed = time.monotonic() - t0
        # 2 s direct, then the slow path's attempts until 5 s from arrival (not 5 s more)
        assert rec.header.rcode == 2 and 4.5 < elapsed < 6.0, elapsed


def _questions_the_slow_path_refuses() -> dict[str, bytes]:
    """Queries of the common shape (``scan`` reads them) that the slow path
    answers with an error without asking upstream (dns.wire.refusal and the
    name checks): the direct miss path must not forward or cache them."""
    def raw(question: bytes, qid: int) -> bytes:
        return qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + question
    from nodecache.dns.wire import question_bytes
    return {
        "CH TXT version.bind": raw(question_bytes("version.bind", 16, 3), 1),
        "CH TXT hostname.bind": raw(question_bytes("hostname.bind", 16, 3), 2),
        "IN AXFR cluster.local": raw(question_bytes("cluster.local", 252), 3),
        "IN IXFR cluster.local": raw(question_bytes("cluster.local", 251), 4),
        "qtype OPT": raw(question_bytes("svc-1.default.svc.cluster.local", 41), 5),
        "class ANY": raw(question_bytes("kubernetes.default.svc.cluster.local", 1, 255), 6),
        "CH A kubernetes": raw(question_bytes("kubernetes.default.svc.cluster.local", 1, 3), 7),
        "pointer loop": raw(b"\xc0\x0c\x00\x00\x01\x00\x01", 8),
        "zero inside a label": raw(b"\x05ab\x00\x00\x01\x00\x01", 9),
        "321-octet name": raw(b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00\x00\x01\x00\x01", 10),
    }


async def test_direct_misses_forward_and_cache_only_what_the_slow_path_would():
    """The security review's reproduction: over UDP (direct miss path) these
    went upstream and were cached, then served over TCP too. Each must get
    the slow path's error over UDP, before and after a TCP ask, and the
    upstream must never see one. Control: with the check in direct.start
    removed, CH/AXFR/class ANY get the upstream's answer and the upstream
    sees them (this test fails)."""
    from nodecache.dns.wire import scan
    async with node(CLUSTER) as n:
        await n.udp(build(NAMES[0], QTYPE.A))  # an open upstream channel: misses can go direct
        assert any(b.take is not None for b in n.agent.blocks)
        before = len(n.up.seen)
        for what, query in _questions_the_slow_path_refuses().items():
            assert scan(query) is not None, what  # the hot path's reader takes it: the direct path sees it
            want = (await n.tcp(query))[3] & 0xF   # the slow path's answer
            assert want in (1, 5), what             # FORMERR or REFUSED
            for _ in range(2):                      # a second ask would be served from the cache
                got = await n.udp(query)
                assert got[:2] == query[:2] and got[3] & 0xF == want, what
            assert (await n.tcp(query))[3] & 0xF == want, what
        assert n.up.seen[before:] == []
        assert n.agent.listeners[0].path.direct_pending == 0


async def test_a_timed_out_direct_miss_leaves_its_id_quarantined():
    """A direct miss with no reply within the attempt timeout hands over to
    the slow path; its ID stays quarantined on the channel (a late reply
    must not be matched to a newer query drawing that ID) until that late
    reply comes. Control: ending the miss before releasing its ID (the code
    before) freed the ID at once: 0 quarantined."""
    async with node(CLUSTER, delay=_late_once()) as n:
        await n.udp(build(NAMES[0], QTYPE.A))
        rec = DNSRecord.parse(await n.udp(build(NAMES[2], QTYPE.A)))  # answered by the slow path at ~2 s
        assert rec.rr
        ups = [u for b in n.agent.blocks if b.forward_stage for u in b.forward_stage.forwarder.upstreams]
        channels = [c for u in ups for c in u.pool.channels + u.udp.channels]
        assert sum(c.quarantined for c in channels) == 1
        assert sum(1 for c in channels for v in c.pending.values() if v is None) == 1


class _Loop:
    """The two things Deadlines asks of a loop: its clock and call_at."""
    def __init__(self):
        self.now, self.timers = 100.0, []

    def time(self):
        return self.now

    def call_at(self, when, callback):
        self.timers.append((when, callback))
        return object()

    def fire(self):
        """Run the one armed timer at its time."""
        assert len(self.timers) == 1
        when, callback = self.timers.pop()
        self.now = max(self.now, when)
        callback()


class _Exchange:
    def __init__(self):
        self.finished, self.fell_back = False, 0

    def _fall_back(self):
        if not self.finished:
            self.finished = True
            self.fell_back += 1


def test_deadlines_fall_back_each_late_exchange_once_on_one_timer():
    from nodecache.upstream.direct import Deadlines
    loop = _Loop()
    deadlines = Deadlines(loop, 2.0)
    first, second, third = _Exchange(), _Exchange(), _Exchange()
    deadlines.add(first, loop.now)
    loop.now += 0.5
    deadlines.add(second, loop.now)
    loop.now += 0.5
    deadlines.add(third, loop.now)
    assert [w for w, _ in loop.timers] == [102.0]  # one timer, at the oldest deadline
    first.finished = True  # answered in time
    loop.fire()            # 102.0: the first is done; nothing else is due yet
    assert (first.fell_back, second.fell_back, third.fell_back) == (0, 0, 0)
    assert [w for w, _ in loop.timers] == [102.5] and len(deadlines) == 2
    loop.fire()            # 102.5: the second is late
    assert (second.fell_back, third.fell_back) == (1, 0)
    third.finished = True
    loop.fire()            # 103.0: the third was answered: nothing falls back, nothing stays armed
    assert third.fell_back == 0 and loop.timers == [] and len(deadlines) == 0
    later = _Exchange()
    deadlines.add(later, loop.now)  # an empty queue arms again
    assert [w for w, _ in loop.timers] == [105.0]


def test_deadlines_drop_finished_exchanges_from_the_front_as_they_go():
    from nodecache.upstream.direct import Deadlines
    loop = _Loop()
    deadlines = Deadlines(loop, 2.0)
    for _ in range(1000):  # answered one after the other: the queue does not grow
        exchange = _Exchange()
        deadlines.add(exchange, loop.now)
        exchange.finished = True
        loop.now += 0.001
    assert len(deadlines) == 1 and len(loop.timers) == 1
