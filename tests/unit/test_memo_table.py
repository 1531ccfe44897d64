"""plugins.cache.memo on its own: a memo's renewal at the TTL tick and its limits,
the table's bound, and folding (deferred counts land where a normal hit's
would). An injected clock, no sockets."""
import tracemalloc

from dnslib import DNSRecord, QTYPE

from nodecache.ttlcache.options import CacheConfig
from nodecache.ttlcache.store import ByteBudget, Cache
from nodecache.dns.reply import analyse
from nodecache.dns.wire import make_query, question_bytes, scan
from nodecache.plugins.cache.memo import Memo, MemoTable
from nodecache_lab.fakes import FakeClock, a_record, reply_to, soa


def _cached(clock, name="a.example.", ttl=30):
    cache = Cache(CacheConfig(), clock)
    data = make_query(7, question_bytes(name, QTYPE.A))
    key, qend, flags, _, edns = scan(data)
    entry = cache.insert(key, analyse(reply_to(data, a_record(name, ttl=ttl))))
    return cache, entry, data, qend, flags, edns


def _memo(clock, truncated=False, acc=None, **kw):
    cache, entry, data, qend, flags, edns = _cached(clock, **kw)
    reply = entry.render(data, qend, flags, edns, clock())
    until = min(entry.next_tick, entry.expires)
    m = Memo(until, reply[2:], entry, cache, acc if acc is not None else [0, 0.0, 0, 0], len(data), len(reply),
             1e-5, truncated, qend)
    return m, cache, entry, data


def test_a_memo_renews_at_the_tick_with_the_entrys_new_ttls():
    clock = FakeClock()
    m, cache, entry, data = _memo(clock)
    assert DNSRecord.parse(data[:2] + m.after_id).rr[0].ttl == 30
    clock.advance(1.0)
    assert not clock() < m.until and m.refresh(clock())
    assert DNSRecord.parse(data[:2] + m.after_id).rr[0].ttl == 29
    _, qend, flags, _, edns = scan(data)
    assert data[:2] + m.after_id == entry.render(data, qend, flags, edns, clock())  # what the full path sends
    assert m.until == entry.next_tick


def test_a_renewed_memo_is_the_full_paths_reply_for_every_record_count():
    """Renewing patches the memo's own bytes at the entry's TTL offsets
    (one record: a fast path; more: one copy): byte for byte what the
    entry renders at the same age, down to TTLs at 0."""
    for count in (0, 1, 2, 9, 20):  # 0: NXDOMAIN, its SOA in the authority section
        clock = FakeClock()
        cache = Cache(CacheConfig(), clock)
        name = f"r{count}.example."
        data = make_query(7, question_bytes(name, QTYPE.A))
        key, qend, flags, _, edns = scan(data)
        reply = DNSRecord.parse(reply_to(data, a_record(name, ttl=40)))
        reply.rr = [a_record(name, ttl=5 + i, ip=f"10.0.0.{i + 1}") for i in range(count)]
        if not count:
            reply.header.rcode = 3
            reply.auth = [soa(ttl=25)]
        entry = cache.insert(key, analyse(reply.pack()))
        sent = entry.render(data, qend, flags, edns, clock())
        m = Memo(min(entry.next_tick, entry.expires), sent[2:], entry, cache, [0, 0.0, 0, 0], len(data),
                 len(sent), 1e-5, False, qend)
        for _ in range(6):
            clock.advance(1.0)
            if clock() >= entry.expires:
                break
            assert m.refresh(clock())
            assert data[:2] + m.after_id == entry.render(data, qend, flags, edns, clock()), (count, clock())


def test_a_memo_does_not_renew_once_expired_or_evicted_or_truncated():
    clock = FakeClock()
    m, cache, entry, _ = _memo(clock, ttl=5)
    clock.advance(5.0)
    assert not m.refresh(clock())  # expired: the full path decides (stale, refresh)
    clock = FakeClock()
    m, cache, entry, _ = _memo(clock)
    cache.clear()  # evicted (or replaced): its entry is no longer the one cached
    clock.advance(1.0)
    assert not m.refresh(clock())
    clock = FakeClock()
    m, *_ = _memo(clock, truncated=True)
    clock.advance(1.0)
    assert m.base is None and not m.refresh(clock())


def test_fold_adds_deferred_hits_where_a_normal_hit_counts():
    clock = FakeClock()
    acc = [0, 0.0, 0, 0]
    m, cache, entry, data = _memo(clock, acc=acc)
    table = _table()
    table.put(data[2:], m)
    m.hits = 4
    entry.visited = False
    before = list(cache.hits)
    table.fold()
    assert acc[0] == 4 and acc[2] == 4 * m.qlen and acc[3] == 4 * m.rlen and abs(acc[1] - 4e-5) < 1e-12
    assert cache.hits[entry.kind] == before[entry.kind] + 4 and entry.visited and m.folded == m.hits == 4
    table.fold()  # nothing twice
    assert acc[0] == 4
    m.hits += 2  # more hits after a fold: only they are added at the next one
    table.fold()
    assert acc[0] == 6 and cache.hits[entry.kind] == before[entry.kind] + 6


def test_a_fold_keeps_the_second_chance_of_memos_hit_before_it():
    """A metrics scrape folds every memo: a memo used just before it still
    has its second chance at the next eviction (the fold is not a reset)."""
    clock = FakeClock()
    table = _table(2)
    used, *_ = _memo(clock)
    unused, *_ = _memo(clock)
    table.put(b"used", used)
    table.put(b"unused", unused)
    used.hits = 5
    table.fold()  # a scrape
    newest, *_ = _memo(clock)
    table.put(b"newest", newest)
    assert list(table.table) == [b"used", b"newest"] and table.evictions == 1


def test_truncated_memoised_hits_are_counted_as_truncated():
    clock = FakeClock()
    m, _, _, data = _memo(clock, truncated=True)
    table = _table()
    table.put(data[2:], m)
    m.hits = 3
    table.fold()
    assert table.truncated == 3


def test_replacing_a_memo_folds_the_old_one_first():
    clock = FakeClock()
    acc = [0, 0.0, 0, 0]
    old, _, _, data = _memo(clock, acc=acc)
    new, *_ = _memo(clock)
    table = _table()
    table.put(data[2:], old)
    old.hits = 2
    table.put(data[2:], new)
    assert acc[0] == 2 and table.get(data[2:]) is new


def test_a_full_table_makes_room_one_memo_at_a_time_with_a_second_chance():
    clock = FakeClock()
    acc = [0, 0.0, 0, 0]
    table = _table(3)
    memos = []
    for i in range(3):
        m, *_ = _memo(clock, acc=acc)
        table.put(bytes([i]), m)
        memos.append(m)
    memos[0].hits = 2  # the oldest was used since: it moves to the young end
    m, *_ = _memo(clock, acc=acc)
    table.put(b"\xff", m)
    assert len(table) == 3 and list(table.table) == [b"\x02", b"\x00", b"\xff"]  # the unused b"\x01" went
    assert table.evictions == 1 and acc[0] == 0  # no hits lost: the one evicted had none, the kept ones wait
    memos[0].hits += 1
    table.fold()
    assert acc[0] == 3
    assert table.get.__self__ is table.table  # the transport's bound lookup still sees the same dict


def test_the_table_holds_what_its_caches_hold_and_nothing_without_a_cache():
    clock = FakeClock()
    caches = [Cache(CacheConfig(), clock), Cache(CacheConfig(), clock)]
    table = MemoTable()
    table.bind(caches, caches[0].budget)
    assert table.capacity == 2 * (9984 + 9984)
    table.bind([], None)
    m, *_ = _memo(clock)
    table.put(b"x", m)
    assert len(table) == 0


def test_memos_count_in_the_byte_budget_and_give_way_to_entries():
    clock = FakeClock()
    budget = ByteBudget(limit=10_000)
    cache = Cache(CacheConfig(), clock, budget)
    table = MemoTable()
    table.bind([cache], budget)
    for i in range(30):
        m, *_ = _memo(clock)
        table.put(bytes([i]), m)
        assert budget.used <= budget.limit  # a memo evicts older memos, never an entry
    assert 0 < len(table) < 30 and table.bytes == sum(m.size for m in table.table.values())
    held = len(table)
    for i in range(5):  # entries take their room from the memos first
        data = make_query(i, question_bytes(f"n{i}.example.", QTYPE.A))
        cache.insert(scan(data)[0], analyse(reply_to(data, a_record(f"n{i}.example."))))
    assert len(cache) == 5 and len(table) < held and budget.used <= budget.limit
    table.detach()
    assert budget.memos == [] and budget.used == cache.bytes


def test_memo_overhead_is_what_tracemalloc_measures():
    """MEMO_OVERHEAD (what the budget counts per memo beyond its bytes) is
    within 25% of a real table's cost per memo."""
    clock = FakeClock()
    made = [_memo(clock) for _ in range(200)]  # entries and caches made before measuring
    table = _table(1000)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, (m, _, _, data) in enumerate(made):
        fresh = Memo(m.until, bytes(bytearray(m.after_id)), m.entry, m.cache, m.acc, m.qlen, m.rlen, 0.0, False,
                     len(data) - 0)
        table.put(b"%05d" % i + data[7:], fresh)
    cost = (tracemalloc.get_traced_memory()[0] - before) / len(made)
    tracemalloc.stop()
    counted = table.bytes / len(made)
    assert 0.75 * counted <= cost <= 1.25 * counted, (cost, counted)


def _table(capacity: int = 100) -> MemoTable:
    table = MemoTable()
    table.capacity = capacity
    return table


def test_a_churning_table_makes_one_memo_in_sample(monkeypatch):
    """Memos evicted unused, CHURN in a row (a working set larger than the
    table): only one chance in SAMPLE makes a memo; a used memo evicted ends it."""
    from nodecache.plugins.cache import memo as memo_mod
    monkeypatch.setattr(memo_mod, "CHURN", 3)
    clock = FakeClock()
    table = _table(2)
    made = 0
    for i in range(5):  # 2 fill the table, 3 evict unused ones
        assert table.admit()
        m, *_ = _memo(clock)
        table.put(bytes([i]), m)
        made += 1
    assert table.unused_run == 3
    chances = [table.admit() for _ in range(memo_mod.SAMPLE)]
    assert chances == [False] * (memo_mod.SAMPLE - 1) + [True]
    for memo in table.table.values():
        memo.hits = 1  # the table's memos are being used now
    m, *_ = _memo(clock)
    table.put(b"used", m)
    assert table.unused_run == 0 and table.admit() and table.admit()
