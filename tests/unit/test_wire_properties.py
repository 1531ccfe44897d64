"""Properties of the query readers over generated input (Hypothesis):
``scan`` (hot path), ``query_from_scan`` (slow path shortcut) and
``parse_query`` (the full reader) agree on every query they accept, and any
bytes give a Query, a QueryError or None: never another exception."""
from hypothesis import given, settings
from hypothesis import strategies as st

from nodecache.dns.wire import QueryError, make_query, parse_query, query_from_scan, scan

label = st.binary(min_size=1, max_size=12).map(lambda b: bytes([len(b)]) + b)
name = st.lists(label, min_size=0, max_size=5).map(lambda ls: b"".join(ls) + b"\x00")
qtype = st.sampled_from([1, 28, 33, 12, 6, 41, 251, 252, 255, 65535])
qclass = st.sampled_from([1, 1, 1, 3, 255])


@st.composite
def queries(draw):
    question = draw(name) + draw(qtype).to_bytes(2, "big") + draw(qclass).to_bytes(2, "big")
    flags = draw(st.integers(0, 0xFFFF)) & ~0x8000
    return make_query(draw(st.integers(0, 0xFFFF)), question, flags, draw(st.sampled_from([-1, 0, 1])))


@settings(max_examples=600, deadline=None)
@given(queries())
def test_scan_shortcut_and_full_parse_agree(data):
    scanned = scan(data)
    try:
        full = parse_query(data)
    except QueryError:
        full = None
    if scanned is None:
        return
    short = query_from_scan(data, scanned)
    if short is not None:
        assert full is not None and short == full
    if full is not None:
        assert scanned[0] == full.key  # the hot path's key is the slow path's key


@settings(max_examples=600, deadline=None)
@given(st.one_of(queries(), st.binary(max_size=80),
                 queries().flatmap(lambda q: st.integers(0, len(q) - 1).map(
                     lambda i: q[:i] + bytes([q[i] ^ 0xFF]) + q[i + 1:]))))
def test_any_bytes_give_a_query_an_rfc_error_or_a_drop(data):
    scanned = scan(data)
    if scanned is not None:
        query_from_scan(data, scanned)
    try:
        parse_query(data)
    except QueryError as exc:
        assert exc.rcode in (None, 1, 4, 5, 16)


@settings(max_examples=600, deadline=None)
@given(name)
def test_a_presentation_name_reads_back_to_the_same_bytes(wire_name):
    """decode_name escapes every byte a name may hold (dots and bytes >= 0x80
    inside labels too) and encode_name reads the escapes back (RFC 1035 §5.1):
    what rewrite and template do with a client's name keeps that name."""
    from nodecache.dns.wire import decode_name, encode_name
    if len(wire_name) > 255:
        return
    assert encode_name(decode_name(wire_name)) == wire_name
