"""The cache with an injected clock: expiry, TTLs, LRU, negative caching,
serve-stale and prefetch decisions. No sleeps."""
from dnslib import QTYPE, DNSRecord

from nodecache.ttlcache.store import FRESH, STALE, ByteBudget, Cache
from nodecache.ttlcache.options import CacheClass, CacheConfig, Prefetch, ServeStale
from nodecache.dns.reply import analyse
from nodecache.dns.wire import make_query, question_bytes, scan
from nodecache_lab.fakes import FakeClock, a_record, reply_to, soa


def query(name, qtype=QTYPE.A):
    return make_query(1, question_bytes(name, qtype))


def answer(name, ttl=30, rcode=0, auth=()):
    answers = (a_record(name, ttl=ttl),) if rcode == 0 and not auth else ()
    return analyse(reply_to(query(name), *answers, auth=auth, rcode=rcode))


def hit(cache, name, qtype=QTYPE.A):
    data = query(name, qtype)
    key, qend, flags, _, edns = scan(data)
    now = cache.clock()
    entry = cache.fresh(key, now)  # the hit path's lookup (server.querypath), then its render
    out = entry.render(data, qend, flags, edns, now) if entry is not None else None
    return DNSRecord.parse(out) if out else None


def put(cache, name, reply):
    return cache.insert(scan(query(name))[0], reply)


def test_hit_until_expiry_then_miss():
    clock = FakeClock()
    cache = Cache(CacheConfig(), clock)
    put(cache, "a.example.", answer("a.example.", ttl=30))
    assert hit(cache, "a.example.").rr[0].ttl == 30
    clock.advance(29.5)
    assert hit(cache, "a.example.").rr[0].ttl == 1
    clock.advance(0.5)
    assert hit(cache, "a.example.") is None
    assert cache.hits[0] == 2


def test_min_and_max_ttl_clamp():
    clock = FakeClock()
    cache = Cache(CacheConfig(success=CacheClass(100, max_ttl=60, min_ttl=10)), clock)
    e = put(cache, "low.", answer("low.", ttl=2))
    assert e.ttl == 10 and hit(cache, "low.").rr[0].ttl == 2  # records never claim more
    e = put(cache, "high.", answer("high.", ttl=3600))
    assert e.ttl == 60 and hit(cache, "high.").rr[0].ttl == 60


def test_negative_ttl_from_soa_rfc2308():
    clock = FakeClock()
    cache = Cache(CacheConfig(), clock)
    e = put(cache, "nx.cluster.local.", answer("nx.cluster.local.", rcode=3, auth=(soa(ttl=60, minimum=20),)))
    assert e.ttl == 20 and e.kind == 1
    rec = hit(cache, "nx.cluster.local.")
    assert rec.header.rcode == 3 and rec.auth[0].ttl == 20
    clock.advance(20)
    assert hit(cache, "nx.cluster.local.") is None


def test_nodata_cached_as_denial_and_no_soa_not_cached():
    cache = Cache(CacheConfig(), FakeClock())
    assert put(cache, "nodata.", answer("nodata.", auth=(soa(),))).kind == 1
    assert put(cache, "nosoa.", analyse(reply_to(query("nosoa."), rcode=3))) is None


def test_uncacheable_rcodes_and_truncation():
    cache = Cache(CacheConfig(), FakeClock())
    for rcode in (1, 4, 5):  # FORMERR, NOTIMP, REFUSED
        assert put(cache, "x.", analyse(reply_to(query("x."), rcode=rcode))) is None
    raw = bytearray(reply_to(query("t."), a_record("t.")))
    raw[2] |= 0x02  # TC
    assert put(cache, "t.", analyse(bytes(raw))) is None


def test_servfail_cached_for_configured_duration():
    clock = FakeClock()
    cache = Cache(CacheConfig(servfail_ttl=5), clock)
    e = put(cache, "sf.", analyse(reply_to(query("sf."), rcode=2)))
    assert e.ttl == 5 and hit(cache, "sf.").header.rcode == 2
    clock.advance(5)
    assert hit(cache, "sf.") is None
    off = Cache(CacheConfig(servfail_ttl=0), clock)
    assert put(off, "sf.", analyse(reply_to(query("sf."), rcode=2))) is None


def test_eviction_gives_an_entry_that_was_hit_a_second_chance():
    cache = Cache(CacheConfig(success=CacheClass(capacity=3)), FakeClock())
    for name in ("a.", "b.", "c."):
        put(cache, name, answer(name))
    assert hit(cache, "a.")            # a is marked visited (no reordering on the hit)
    put(cache, "d.", answer("d."))     # a gets a second chance; b, the oldest unvisited, goes
    assert hit(cache, "b.") is None
    assert all(hit(cache, n) for n in ("a.", "c.", "d."))
    assert cache.evictions[0] == 1 and cache.sizes() == (3, 0)


def test_an_entry_is_held_until_it_leaves_by_any_way_out():
    """``holds`` (what a memo's renewal asks) is the entry's own flag: every
    way out of the tables must clear it, or a memo would renew an entry the
    cache no longer has."""
    clock = FakeClock()
    cache = Cache(CacheConfig(success=CacheClass(capacity=2)), clock)
    first = put(cache, "a.", answer("a."))
    assert cache.holds(first)
    second = put(cache, "a.", answer("a."))  # replaced under its key
    assert not cache.holds(first) and cache.holds(second)
    put(cache, "b.", answer("b."))
    put(cache, "c.", answer("c."))           # over capacity: a (never hit) is evicted
    assert not cache.holds(second)
    short = put(cache, "d.", answer("d.", ttl=5))
    clock.advance(6)
    assert cache.lookup(scan(query("d."))[0]) == (None, None)  # expired, no serve-stale: dropped
    assert not cache.holds(short)
    held = [e for e in cache.entries()]
    assert held and all(cache.holds(e) for e in held)
    cache.clear()
    assert not any(cache.holds(e) for e in held)


def test_success_and_denial_have_separate_capacities():
    cache = Cache(CacheConfig(success=CacheClass(capacity=1), denial=CacheClass(capacity=1)), FakeClock())
    put(cache, "ok.", answer("ok."))
    put(cache, "nx.", answer("nx.", rcode=3, auth=(soa(),)))
    assert cache.sizes() == (1, 1)


def test_serve_stale_window():
    clock = FakeClock()
    cache = Cache(CacheConfig(serve_stale=ServeStale(duration=60)), clock)
    put(cache, "s.", answer("s.", ttl=10))
    key = scan(query("s."))[0]
    clock.advance(10)
    assert hit(cache, "s.") is None                  # hot path never serves stale
    assert cache.lookup(key)[1] == STALE
    clock.advance(59)
    assert cache.lookup(key)[1] == STALE
    clock.advance(1)
    assert cache.lookup(key) == (None, None) and len(cache) == 0


def test_without_serve_stale_expired_entries_are_dropped():
    clock = FakeClock()
    cache = Cache(CacheConfig(), clock)
    put(cache, "s.", answer("s.", ttl=10))
    clock.advance(11)
    assert cache.lookup(scan(query("s."))[0]) == (None, None)


def test_prefetch_triggers_for_popular_entries_near_expiry():
    clock = FakeClock()
    cache = Cache(CacheConfig(prefetch=Prefetch(amount=3, duration=60, percentage=10)), clock)
    wanted = []
    cache.on_prefetch = wanted.append
    e = put(cache, "p.", answer("p.", ttl=100))
    for _ in range(3):
        clock.advance(29)
        hit(cache, "p.")
    assert wanted == []                 # popular, but 13% of TTL still remains
    clock.advance(4)
    hit(cache, "p.")
    assert wanted == [e] and cache.prefetches == 1


def test_prefetch_needs_hits_without_long_gaps():
    clock = FakeClock()
    cache = Cache(CacheConfig(prefetch=Prefetch(amount=3, duration=10, percentage=50)), clock)
    wanted = []
    cache.on_prefetch = wanted.append
    put(cache, "p.", answer("p.", ttl=100))
    for _ in range(4):
        clock.advance(20)  # every gap is longer than DURATION: never popular
        hit(cache, "p.")
    assert wanted == []
    clock.advance(5)
    hit(cache, "p.")
    clock.advance(5)
    assert wanted == []
    hit(cache, "p.")   # third hit with gaps < 10 s, and < 50% TTL left
    assert len(wanted) == 1


def test_lookup_counts_hits_and_misses():
    cache = Cache(CacheConfig(), FakeClock())
    key = scan(query("m."))[0]
    assert cache.lookup(key) == (None, None) and cache.misses == 1
    put(cache, "m.", answer("m."))
    assert cache.lookup(key)[1] == FRESH and cache.hits[0] == 1


def test_a_scan_of_one_hit_names_does_not_evict_a_popular_entry():
    cache = Cache(CacheConfig(success=CacheClass(capacity=3)), FakeClock())
    put(cache, "popular.", answer("popular."))
    for i in range(50):
        assert hit(cache, "popular.")
        put(cache, f"once-{i}.", answer(f"once-{i}."))
    assert hit(cache, "popular.") and cache.sizes() == (3, 0) and cache.evictions[0] == 48


def test_byte_budget_is_shared_by_every_cache_and_evicts_to_stay_within_it():
    budget = ByteBudget(limit=20_000)
    one, two = (Cache(CacheConfig(), FakeClock(), budget) for _ in range(2))
    for i in range(30):
        put(one, f"one-{i}.", answer(f"one-{i}."))
    held = one.bytes
    for i in range(100):
        put(two, f"two-{i}.", answer(f"two-{i}."))
        assert budget.used <= budget.limit
    assert two.budget_evictions > 0 and one.bytes == held   # the inserting cache made room
    assert budget.used == one.bytes + two.bytes == sum(e.size for c in (one, two) for e in c.entries())
    one.detach()
    assert budget.used == two.bytes


def test_reply_over_max_item_is_not_cached():
    cache = Cache(CacheConfig(), FakeClock(), ByteBudget(max_item=100))
    big = analyse(reply_to(query("big."), *(a_record("big.", f"10.0.0.{i}") for i in range(1, 20))))
    assert len(big.tail) > 100
    assert put(cache, "big.", big) is None and cache.too_big == 1 and len(cache) == 0
    assert put(cache, "small.", answer("small.")) is not None


def test_bytes_follow_replacement_expiry_and_clear():
    clock = FakeClock()
    cache = Cache(CacheConfig(), clock)
    put(cache, "a.", answer("a.", ttl=5))
    first = cache.bytes
    put(cache, "a.", answer("a.", ttl=5))          # replaced, not added
    assert cache.bytes == first
    clock.advance(10)
    assert cache.lookup(scan(query("a."))[0]) == (None, None) and cache.bytes == 0  # dropped when past serving
    put(cache, "b.", answer("b."))
    cache.clear()
    assert cache.bytes == 0


def test_admission_rate_bucket_per_client_refills_and_forgets_quiet_clients():
    from nodecache.server import admission as adm
    clock = FakeClock()
    a = adm.Admission(total=10**6, per_client=10**6, rate=100, clock=clock)
    took = sum(1 for _ in range(150) if a.admit("hog") and (a.release("hog") or True))
    assert took == 100 and a.refused_rate == 50          # a burst of one second's worth
    assert a.admit("other")                               # other clients have their own bucket
    clock.advance(0.5)
    took = sum(1 for _ in range(100) if a.admit("hog") and (a.release("hog") or True))
    assert took == 50                                     # refilled at the rate
    clock.advance(5)
    old = adm.MAX_BUCKETS
    try:
        adm.MAX_BUCKETS = 3
        for c in ("x", "y", "z"):
            a.admit(c)
        assert len(a.buckets) <= 3                        # full (quiet) buckets were forgotten
    finally:
        adm.MAX_BUCKETS = old
