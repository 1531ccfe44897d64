"""The cache key's layout (dns.key) agrees with what the wire readers build."""
from nodecache.dns import key
from nodecache.dns.wire import CD, RD, encode_name, make_query, parse_query, scan


def _key_of(name: str, qtype: int, flags: int, edns: int) -> bytes:
    data = make_query(7, encode_name(name) + qtype.to_bytes(2, "big") + b"\x00\x01", flags, edns)
    k = parse_query(data).key
    assert scan(data)[0] == k
    return k


def test_accessors_read_what_the_readers_wrote():
    k = _key_of("Www.Example.ORG.", 28, RD | CD, key.EDNS_DO)
    assert key.name(k) == encode_name("www.example.org.")
    assert key.question(k) == encode_name("www.example.org.") + b"\x00\x1c\x00\x01"
    assert (key.qtype(k), key.do(k), key.cd(k), key.edns(k)) == (28, 1, 1, key.EDNS_DO)
    assert key.make(key.name(k), 28, 1, do=1, cd=1) == k


def test_edns_without_do_shares_the_plain_key():
    # a buffer size does not change the answer; only DO and CD do (RFC 3225, RFC 4035 §3.2.2)
    plain = _key_of("a.b.", 1, RD, key.NO_EDNS)
    assert _key_of("a.b.", 1, RD, key.EDNS) == plain
    assert (key.do(plain), key.cd(plain), key.edns(plain)) == (0, 0, key.NO_EDNS)
    assert _key_of("a.b.", 1, RD, key.EDNS_DO) != plain
    assert _key_of("a.b.", 1, RD | CD, key.NO_EDNS) != plain
