"""Cache snapshots: round trip with relative times; garbage is refused."""
import random

import pytest
from dnslib import QTYPE, RR, TXT

from nodecache.ttlcache import snapshot
from nodecache.ttlcache.store import Cache
from nodecache.ttlcache.options import CacheConfig, ServeStale
from nodecache.dns.reply import analyse
from nodecache.dns.wire import make_query, question_bytes, scan
from nodecache_lab.fakes import FakeClock, a_record, reply_to, soa



def _hit(cache, key, data, qend, flags, edns):
    """The hit path's answer from ``cache``: its fresh entry, rendered (None: not fresh)."""
    now = cache.clock()
    entry = cache.fresh(key, now)
    return entry.render(data, qend, flags, edns, now) if entry is not None else None

def filled(n=50, clock=None):
    clock = clock or FakeClock()
    cache = Cache(CacheConfig(serve_stale=ServeStale(3600)), clock)
    for i in range(n):
        q = make_query(1, question_bytes(f"n{i}.example.", QTYPE.A))
        if i % 5 == 0:
            rep = reply_to(q, rcode=3, auth=(soa("example.", 60, 40),))
        else:
            rep = reply_to(q, a_record(f"n{i}.example.", ttl=10 + i))
        cache.insert(scan(q)[0], analyse(rep))
        clock.advance(0.5)
    return cache, clock


def test_round_trip_keeps_answers_and_remaining_ttl():
    cache, clock = filled()
    clock.advance(12)  # some entries are stale now
    data = b"".join(snapshot.encode([("example.|53", list(cache.entries()))], clock(), chunk=500))
    other_clock = FakeClock(50_000.0)  # the heir's clock has nothing to do with ours
    restored = snapshot.decode(data, other_clock())["example.|53"]
    assert len(restored) == 50
    target = Cache(cache.config, other_clock)
    for e in restored:
        target.put(e)
    for i in range(50):
        q = make_query(7, question_bytes(f"n{i}.example.", QTYPE.A))
        key, qend, flags, _, edns = scan(q)
        a, b = (_hit(c, key, q, qend, flags, edns) for c in (cache, target))
        assert a == b  # same bytes, same TTLs, same freshness (both None when stale)
        sa, sb = cache.lookup(key), target.lookup(key)
        assert sa[1] == sb[1]


def test_chunks_are_bounded():
    cache, clock = filled(200)
    chunks = list(snapshot.encode([("b|53", list(cache.entries()))], clock(), chunk=2000))
    assert len(chunks) > 3 and all(len(c) < 2000 + 400 for c in chunks)


@pytest.mark.parametrize("mangle", [
    lambda d: d[:-7],                       # truncated
    lambda d: b"XXXX" + d[4:],              # wrong magic / version
    lambda d: d[:30] + b"\xff" + d[31:],    # a length byte garbled
    lambda d: d[:4] + b"Q" + d[5:],         # unknown record tag
])
def test_garbled_snapshots_are_refused(mangle):
    cache, clock = filled(20)
    data = b"".join(snapshot.encode([("b|53", list(cache.entries()))], clock()))
    try:
        out = snapshot.decode(mangle(data), 0.0)
    except snapshot.SnapshotError:
        return
    # a garble that still parses must not produce unusable entries
    for entries in out.values():
        for e in entries:
            assert all(o + 4 <= len(e.tail) for o in e.offsets)


def test_random_garbage_never_crashes():
    rng = random.Random(3)
    for _ in range(300):
        blob = snapshot.MAGIC + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        try:
            snapshot.decode(blob, 0.0)
        except snapshot.SnapshotError:
            pass


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_CACHE, _CLOCK = filled(20)
_BLOCKS = [("cluster.local.|53", list(_CACHE.entries()))]
_NOW = _CLOCK()
SNAP = {fmt: b"".join(snapshot.encode(_BLOCKS, _NOW, chunk=400, fmt=fmt)) for fmt in (1, 2)}


def _answers(by_block) -> list[tuple]:
    return [(e.key, e.kind, e.shape.flags, e.shape.counts, e.tail, tuple(e.offsets), tuple(e.ttls), e.ttl)
            for entries in by_block.values() for e in entries]


def test_both_formats_round_trip():
    want = _answers(dict(_BLOCKS))
    for fmt in (1, 2):
        assert _answers(snapshot.decode(SNAP[fmt], _NOW)) == want


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_corruption_of_format_2_is_refused_never_served(data):
    snap = bytearray(SNAP[2])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(snap) - 1))
        snap[at] ^= data.draw(st.integers(1, 255))
    try:
        got = snapshot.decode(bytes(snap), _NOW)
    except snapshot.SnapshotError:
        return
    # a flip that still decodes can only be one the checksums cannot see: none here
    assert _answers(got) == _answers(dict(_BLOCKS))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda cut, b: SNAP[1][:cut] + b, st.integers(0, 200),
                                          st.binary(max_size=40)))
def test_any_bytes_give_entries_or_snapshot_error_never_another_exception(data):
    try:
        snapshot.decode(data, _NOW)
    except snapshot.SnapshotError:
        pass


def test_a_corrupt_header_field_is_a_snapshot_error_not_a_crash():
    # an unchecked ARCOUNT near 0xFFFF raised OverflowError here: a crash loop with -cache-file
    raw = bytearray(SNAP[1])
    key_len = int.from_bytes(raw[len(snapshot.MAGIC) + 3 + len(b"cluster.local.|53") + 1:][:2], "big")
    at = len(snapshot.MAGIC) + 3 + len(b"cluster.local.|53") + 1 + 2 + key_len + 5  # the entry's ARCOUNT
    assert raw[at:at + 2] == b"\x00\x00"
    raw[at:at + 2] = b"\xff\xff"
    with pytest.raises(snapshot.SnapshotError, match="inconsistent"):
        snapshot.decode(bytes(raw), _NOW)


def test_entries_for_questions_we_refuse_are_not_taken_over():
    """A donor that cached what this version refuses (an older version's
    direct miss path cached CH and AXFR answers) hands them over; the heir
    drops exactly those and keeps the rest. Control: without the
    servable_key filter in decode, all three come back."""
    cache, clock = filled(1)
    for qtype, qclass in ((16, 3), (252, 1)):  # CH TXT, IN AXFR
        q = make_query(1, question_bytes("version.bind.", qtype, qclass))
        cache.insert(scan(q)[0], analyse(reply_to(q, RR("version.bind.", qtype, qclass, ttl=60, rdata=TXT("x")))))
    assert len(list(cache.entries())) == 3
    data = b"".join(snapshot.encode([("b|53", list(cache.entries()))], clock()))
    restored = snapshot.decode(data, clock())["b|53"]
    assert [e.key for e in restored] == [scan(make_query(1, question_bytes("n0.example.", QTYPE.A)))[0]]


@pytest.mark.parametrize("key, ok", [
    (b"\x01a\x00\x00\x01\x00\x01\x00", True),
    (b"\x00\x00\x1c\x00\x01\x02", True),             # the root, AAAA, DO
    (b"\x01a\x00\x00\x10\x00\x03\x00", False),       # CH
    (b"\x01a\x00\x00\xfc\x00\x01\x00", False),       # AXFR
    (b"\x01a\x00\x00\x29\x00\x01\x00", False),       # OPT
    (b"\xc0\x0c\x00\x00\x01\x00\x01\x00", False),    # a pointer
    (b"\x05ab\x00\x00\x01\x00\x01\x00", False),      # labels do not end at the trailer
    (b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00\x00\x01\x00\x01\x00", False),  # > 255 octets
    (b"\x00\x01\x00", False),                        # no room for a trailer
])
def test_servable_key(key, ok):
    from nodecache.dns.wire import servable_key
    assert servable_key(key) is ok
