"""Memoised UDP replies (plugins.cache.memo): the same answers and the same counters
as the full hit path, and never past a TTL change, a reload or a loop."""
from __future__ import annotations

import random

from dnslib import QTYPE, DNSRecord

from nodecache.plugins.cache import memo as memo_mod
from nodecache.emulated.client import build
from nodecache_lab.fakes import FakeClock
from nodecache_lab.harness import CLUSTER, node

NAMES = [f"svc-{i}.default.svc.cluster.local" for i in range(20)] + ["www.example.com"]


def _traffic(seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(600):
        name = rng.choice(NAMES)
        if rng.random() < 0.3:  # 0x20: the same name in another letter case is another memo
            name = "".join(c.upper() if rng.random() < 0.5 else c for c in name)
        qtype = rng.choice([QTYPE.A, QTYPE.AAAA, QTYPE.A])
        out.append(build(name, qtype, do=rng.choice([-1, -1, 0, 1]), qid=i))
    return out


async def _run(traffic: list[bytes], memoise: bool, tick_every: int = 0):
    """Replies and counters for ``traffic``; with ``tick_every``, the clock
    moves 0.4 s after every that many queries (TTLs count down meanwhile)."""
    clock = FakeClock()
    async with node(CLUSTER, clock=clock) as n:
        if not memoise:
            for block in n.agent.blocks:
                block.memoizable = False
        replies = []
        for i, q in enumerate(traffic):
            replies.append(await n.udp(q))
            if tick_every and i % tick_every == tick_every - 1:
                clock.advance(0.4)
        n.agent.fold_counters()
        listener = n.agent.listeners[0]
        counts = {}  # every series but the duration bucket, which timing decides
        for k, (n_, _, qbytes, rbytes) in listener.stats.counts.items():
            acc = counts.setdefault(k[:7] + k[8:], [0, 0, 0])
            acc[0] += n_
            acc[1] += qbytes
            acc[2] += rbytes
        hits = [list(b.cache.hits) for b in n.agent.blocks if b.cache is not None]
        visited = sorted(e.key for b in n.agent.blocks if b.cache is not None
                         for e in b.cache.entries() if e.visited)
        return replies, counts, hits, visited, len(listener.path.memo)


async def test_memoised_hits_answer_and_count_exactly_like_the_full_hit_path():
    traffic = _traffic()
    memo_replies, memo_counts, memo_hits, memo_visited, memos = await _run(traffic, True)
    plain_replies, plain_counts, plain_hits, plain_visited, none = await _run(traffic, False)
    assert memos > 0 and none == 0  # the control really ran without memos
    assert memo_replies == plain_replies
    assert memo_counts == plain_counts
    assert memo_hits == plain_hits and sum(map(sum, memo_hits)) > 300
    assert memo_visited == plain_visited


async def test_memos_renewed_at_each_ttl_tick_answer_and_count_like_the_full_hit_path(monkeypatch):
    renewed = []
    refresh = memo_mod.Memo.refresh
    monkeypatch.setattr(memo_mod.Memo, "refresh", lambda self, now: renewed.append(refresh(self, now))
                        or renewed[-1])
    traffic = _traffic(seed=11)
    memo = await _run(traffic, True, tick_every=40)
    plain = await _run(traffic, False, tick_every=40)
    assert renewed.count(True) > 50  # memos really renewed across ticks (6 s of TTL countdown)
    assert memo[0] == plain[0]       # same bytes: every TTL as the full path renders it
    assert memo[1:4] == plain[1:4]


async def test_a_memo_renews_at_the_tick_without_the_full_hit_path():
    clock = FakeClock()
    async with node(CLUSTER, clock=clock) as n:
        q = build(NAMES[0], QTYPE.A, qid=1)
        first = await n.udp(q)
        await n.udp(q)  # memoised
        path = n.agent.listeners[0].path
        calls = []
        block = n.agent.blocks[0]
        full = block.front
        block.front = lambda *a: calls.append(1) or full(*a)
        for age in range(1, 4):
            clock.advance(1.0)
            reply = DNSRecord.parse(await n.udp(q))
            assert reply.rr[0].ttl == DNSRecord.parse(first).rr[0].ttl - age
        assert calls == []  # every one renewed from the memo
        (memo,) = path.memo.table.values()
        assert memo.hits == 3  # the second query made it; the next three came from it


async def test_a_memo_whose_entry_left_the_cache_does_not_renew():
    clock = FakeClock()
    async with node(CLUSTER, clock=clock) as n:
        q = build(NAMES[0], QTYPE.A, qid=1)
        await n.udp(q)
        await n.udp(q)  # memoised
        cache = n.agent.blocks[0].cache
        (memo,) = n.agent.listeners[0].path.memo.table.values()
        assert cache.holds(memo.entry)
        cache.clear()
        assert not cache.holds(memo.entry)
        assert await n.udp(q)       # within the tick: still the memo (less than a second past eviction)
        assert len(n.up.seen) == 1
        clock.advance(1.0)
        assert not memo.refresh(clock())
        await n.udp(q)              # past the tick: the full path, a miss, upstream again
        assert len(n.up.seen) == 2


async def test_a_memo_ends_when_a_ttl_would_change():
    clock = FakeClock()
    async with node(CLUSTER, clock=clock) as n:
        q = build(NAMES[0], QTYPE.A, qid=1)
        first = await n.udp(q)    # a miss
        second = await n.udp(q)   # a hit, memoised
        third = await n.udp(q)    # from the memo
        (memo,) = n.agent.listeners[0].path.memo.table.values()
        assert first == second == third and memo.hits == 1
        clock.advance(1.0)
        later = DNSRecord.parse(await n.udp(q))
        assert later.rr[0].ttl == DNSRecord.parse(first).rr[0].ttl - 1
        clock.advance(3600)  # long expired: asked upstream again, not answered from a memo
        await n.udp(q)
        assert len(n.up.seen) == 2


async def test_a_detected_loop_empties_the_memo():
    async with node(CLUSTER, clock=FakeClock()) as n:
        block = n.agent.blocks[0]
        q = build(NAMES[1], QTYPE.A)
        await n.udp(q)
        await n.udp(q)
        assert len(n.agent.listeners[0].path.memo) == 1
        block._went_down()  # what a stage going down does (plugins.loop: a loop seen)
        assert DNSRecord.parse(await n.udp(q)).header.rcode == 0  # control: the memo still answers
        n.agent._block_started(block)
        assert DNSRecord.parse(await n.udp(q)).header.rcode == 2  # SERVFAIL: the zone is looped


async def test_a_reload_empties_the_memo():
    async with node(CLUSTER, clock=FakeClock()) as n:
        q = build(NAMES[2], QTYPE.A)
        await n.udp(q)
        await n.udp(q)
        path = n.agent.listeners[0].path
        assert len(path.memo) == 1
        await n.agent.reload(n.agent.config)
        assert len(path.memo) == 0


async def test_a_full_table_makes_room_without_losing_counts():
    async with node(CLUSTER, clock=FakeClock()) as n:
        n.agent.listeners[0].path.memo.capacity = 3
        for name in NAMES[:6]:
            q = build(name, QTYPE.A)
            for _ in range(3):
                await n.udp(q)
        path = n.agent.listeners[0].path
        assert len(path.memo) == 3 and path.memo.evictions == 3
        n.agent.fold_counters()
        assert n.agent.blocks[0].cache.hits[0] == 12  # 6 names x 2 hits, none lost in the clears


async def test_big_replies_are_not_memoised():
    async with node(CLUSTER, clock=FakeClock()) as n:
        q = build("big-40.example.com", QTYPE.TXT, do=0)  # 40 x ~100-byte TXT records: truncated over UDP
        for _ in range(3):
            rec = DNSRecord.parse(await n.udp(q))
            assert rec.header.tc
        assert len(n.agent.listeners[0].path.memo) == 0
