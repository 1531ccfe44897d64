"""The cache's byte budget counts what entries really cost: Entry.size
against tracemalloc, for one-record and many-record replies."""
import tracemalloc

import pytest
from dnslib import QTYPE, RR, TXT

from nodecache_lab.fakes import a_record, reply_to
from nodecache.ttlcache.store import ByteBudget, Cache
from nodecache.ttlcache.options import CacheConfig
from nodecache.dns.reply import analyse
from nodecache.dns.wire import RD, make_query, question_bytes, scan


def _fill(records: int, n: int) -> tuple[float, float]:
    cache = Cache(CacheConfig(), lambda: 100.0, ByteBudget(limit=10**10))
    raws = []
    for i in range(n):
        name = f"e{i}.example.com"
        q = question_bytes(name, QTYPE.TXT if records > 1 else QTYPE.A)
        answers = ([RR(name, QTYPE.TXT, ttl=30, rdata=TXT("x" * 97)) for _ in range(records)]
                   if records > 1 else [a_record(name)])
        raws.append((scan(make_query(1, q, RD, 0))[0], analyse(reply_to(make_query(1, q, RD, 0), *answers))))
    tails = sum(len(reply.tail) + 33 for _, reply in raws)  # the entry keeps the reply's tail object
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for key, reply in raws:
            cache.insert(key, reply)
        traced = tracemalloc.get_traced_memory()[0] - base + tails
    finally:
        tracemalloc.stop()
    return traced / n, cache.bytes / n


@pytest.mark.parametrize("records", [1, 4, 100])
def test_budgeted_size_covers_what_an_entry_costs(records):
    traced, counted = _fill(records, 500)
    assert 0.9 * traced <= counted <= 1.6 * traced, (traced, counted)


def test_a_one_record_entry_costs_under_600_bytes_beyond_its_records():
    traced, _ = _fill(1, 2000)
    assert traced - 16 - 33 < 600, traced  # the A record's 16 bytes and their bytes object
