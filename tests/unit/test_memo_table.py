"""server.memo on its own: a memo's renewal at the TTL tick and its limits,
the table's bound, and folding (deferred counts land where a normal hit's
would). An injected clock, no sockets."""
from dnslib import DNSRecord, QTYPE

from nodecache.cache.options import CacheConfig
from nodecache.cache.store import Cache
from nodecache.dns.reply import analyse
from nodecache.dns.wire import make_query, question_bytes, scan
from nodecache.server import memo as memo_mod
from nodecache.server.memo import Memo, MemoTable
from nodecache.testing.fakes import FakeClock, a_record, reply_to


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
    assert DNSRecord.parse(data[:2] + m.tail).rr[0].ttl == 30
    clock.advance(1.0)
    assert not clock() < m.until and m.refresh(clock())
    assert DNSRecord.parse(data[:2] + m.tail).rr[0].ttl == 29
    assert m.until == entry.next_tick


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
    assert m.head is None and not m.refresh(clock())


def test_fold_adds_deferred_hits_where_a_normal_hit_counts():
    clock = FakeClock()
    acc = [0, 0.0, 0, 0]
    m, cache, entry, data = _memo(clock, acc=acc)
    table = MemoTable()
    table.put(data[2:], m)
    m.hits = 4
    entry.visited = False
    before = list(cache.hits)
    table.fold()
    assert acc[0] == 4 and acc[2] == 4 * m.qlen and acc[3] == 4 * m.rlen and abs(acc[1] - 4e-5) < 1e-12
    assert cache.hits[entry.kind] == before[entry.kind] + 4 and entry.visited and m.hits == 0
    table.fold()  # nothing twice
    assert acc[0] == 4


def test_truncated_memoised_hits_are_counted_as_truncated():
    clock = FakeClock()
    m, _, _, data = _memo(clock, truncated=True)
    table = MemoTable()
    table.put(data[2:], m)
    m.hits = 3
    table.fold()
    assert table.truncated == 3


def test_replacing_a_memo_folds_the_old_one_first():
    clock = FakeClock()
    acc = [0, 0.0, 0, 0]
    old, _, _, data = _memo(clock, acc=acc)
    new, *_ = _memo(clock)
    table = MemoTable()
    table.put(data[2:], old)
    old.hits = 2
    table.put(data[2:], new)
    assert acc[0] == 2 and table.get(data[2:]) is new


def test_a_full_table_is_folded_and_emptied(monkeypatch):
    monkeypatch.setattr(memo_mod, "MEMO_MAX", 3)
    clock = FakeClock()
    acc = [0, 0.0, 0, 0]
    table = MemoTable()
    for i in range(3):
        m, *_ = _memo(clock, acc=acc)
        m.hits = 1
        table.put(bytes([i]), m)
    assert len(table) == 3
    m, *_ = _memo(clock, acc=acc)
    table.put(b"\xff", m)  # the fourth: the three are folded, then dropped
    assert len(table) == 1 and acc[0] == 3
    assert table.get.__self__ is table.table  # the transport's bound lookup still sees the same dict
