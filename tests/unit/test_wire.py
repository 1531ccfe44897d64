"""Query-side wire tables: bytes in, verdict or bytes out."""
import random
from pathlib import Path

import pytest
from dnslib import QTYPE, DNSRecord

from nodecache.dns import wire
from nodecache.dns.wire import (BADVERS, FORMERR, NOTIMP, REFUSED, QueryError, error_reply,
                                make_query, parse_query, question_bytes, scan, truncated_reply)

DATA = Path(__file__).parent.parent / "data"
Q_A = question_bytes("WWW.Example.COM", QTYPE.A)


def test_scan_plain_query():
    data = make_query(0x1234, Q_A)
    key, qend, flags, limit, edns = scan(data)
    assert key == b"\x03www\x07example\x03com\x00" + b"\x00\x01\x00\x01" + b"\x00"
    assert qend == len(data) and limit == 512 and edns == -1 and flags == wire.RD


@pytest.mark.parametrize("do,size,limit", [(0, 4096, 1232), (1, 1232, 1232), (0, 100, 512), (1, 800, 800)])
def test_scan_edns(do, size, limit):
    data = bytearray(make_query(1, Q_A, do=do))
    data[-8:-6] = size.to_bytes(2, "big")
    key, qend, _, got_limit, edns = scan(bytes(data))
    assert edns == do and got_limit == limit and key[-1] == do << 1


def test_key_distinguishes_do_cd_type_and_ignores_case():
    base = scan(make_query(1, Q_A))[0]
    assert scan(make_query(2, question_bytes("www.example.com", QTYPE.A)))[0] == base
    assert scan(make_query(1, Q_A, flags=wire.RD | wire.CD))[0] != base
    assert scan(make_query(1, Q_A, do=1))[0] != base
    assert scan(make_query(1, Q_A, do=0))[0] == base  # OPT without DO: same answer
    # HTTPS is type 65 ('A'): lower-casing the whole question would make it 97.
    assert scan(make_query(1, question_bytes("x.com", 65)))[0] != scan(make_query(1, question_bytes("x.com", 97)))[0]


@pytest.mark.parametrize("data", [
    b"", b"\x00" * 11, make_query(1, Q_A)[:-1],                      # short
    make_query(1, Q_A, flags=0x8000),                              # a response
    make_query(1, Q_A, flags=0x0800),                              # opcode IQUERY
    make_query(1, Q_A) + b"\x00",                                   # trailing byte
    make_query(1, Q_A)[:5] + b"\x02" + make_query(1, Q_A)[6:],      # qdcount 2
    make_query(1, b"\xc0\x0c\x00\x01\x00\x01"),                     # pointer in question
])
def test_scan_sends_unusual_queries_to_the_slow_path(data):
    assert scan(data) is None


@pytest.mark.parametrize("data,rcode", [
    (b"\x12\x34", None),                                           # too short to answer
    (make_query(1, Q_A, flags=0x8000), None),                       # never answer a response
    (b"\x12\x34\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00", FORMERR),  # qdcount 0
    (make_query(1, Q_A)[:-2], FORMERR),                            # question truncated
    (make_query(1, b"\xc0\x0c\x00\x01\x00\x01"), FORMERR),
    (make_query(1, Q_A, flags=0x2000), NOTIMP),                    # opcode UPDATE... 4
    (make_query(1, question_bytes("x", QTYPE.AXFR)), REFUSED),
    (make_query(1, question_bytes("x", QTYPE.A, 3)), REFUSED),     # CHAOS
    (make_query(1, question_bytes("x", 41)), FORMERR),             # qtype OPT
])
def test_parse_query_errors(data, rcode):
    with pytest.raises(QueryError) as err:
        parse_query(data)
    assert err.value.rcode == rcode


def test_two_opts_is_formerr():
    data = bytearray(make_query(1, Q_A, do=0) + wire.OPT_PLAIN)
    data[11] = 2
    with pytest.raises(QueryError) as err:
        parse_query(bytes(data))
    assert err.value.rcode == FORMERR


def _with_answer_record(data: bytes) -> bytes:
    """``data`` (question then OPT) with one A record put before its OPT, ancount 1."""
    out = bytearray(data[:-11] + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01" + data[-11:])
    out[7] = 1
    return bytes(out)


@pytest.mark.parametrize("data, rcode", [
    (make_query(1, Q_A, flags=0x2000, do=0), NOTIMP),                 # opcode 4 (NOTIFY)
    (_with_answer_record(make_query(1, Q_A, do=1)), FORMERR),         # an answer record in a query
    (b"\x12\x34\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01" + wire.OPT_PLAIN, FORMERR),  # qdcount 0
])
def test_error_replies_to_a_query_with_opt_carry_opt(data, rcode):
    """RFC 6891 §6.1.1: the reply to a query with a readable OPT has one
    (dig warns "retry with +noedns" otherwise). Without OPT, none."""
    with pytest.raises(QueryError) as err:
        parse_query(data)
    assert err.value.rcode == rcode and err.value.edns >= 0
    reply = DNSRecord.parse(error_reply(data, rcode, err.value.qend, err.value.edns))
    assert reply.header.rcode == rcode and [r.rtype for r in reply.ar] == [QTYPE.OPT]
    plain = data[:10] + b"\x00\x00" + data[12:-11]  # the same without its OPT
    with pytest.raises(QueryError) as err:
        parse_query(plain)
    assert err.value.edns == -1


def test_a_broken_opt_still_gets_formerr_without_opt():
    data = bytearray(make_query(1, Q_A, do=0) + wire.OPT_PLAIN)
    data[11] = 2  # two OPTs: the client's EDNS cannot be read
    with pytest.raises(QueryError) as err:
        parse_query(bytes(data))
    assert err.value.rcode == FORMERR and err.value.edns == -1
    notimp = bytearray(make_query(1, Q_A, flags=0x2000, do=0) + wire.OPT_PLAIN)
    notimp[11] = 2
    with pytest.raises(QueryError) as err:
        parse_query(bytes(notimp))
    assert err.value.rcode == NOTIMP and err.value.edns == -1


def test_badvers_reply_carries_extended_rcode():
    data = bytearray(make_query(7, Q_A, do=1))
    data[-5] = 1  # EDNS version 1
    with pytest.raises(QueryError) as err:
        parse_query(bytes(data))
    assert err.value.rcode == BADVERS
    reply = error_reply(bytes(data), err.value.rcode, err.value.qend, err.value.edns)
    rec = DNSRecord.parse(reply)
    opt = [r for r in rec.ar if r.rtype == QTYPE.OPT][0]
    assert rec.header.rcode == 0 and (opt.ttl >> 24) == 1  # 16 = 1 << 4 | 0
    assert reply == (DATA / "badvers.bin").read_bytes()


def test_scan_and_parse_agree_on_random_queries():
    rng = random.Random(7)
    for _ in range(500):
        labels = ["".join(rng.choice("aBcD-1z") for _ in range(rng.randint(1, 12)))
                  for _ in range(rng.randint(1, 5))]
        q = question_bytes(".".join(labels), rng.choice([1, 28, 33, 65, 12]))
        flags = wire.RD | (wire.CD if rng.random() < 0.3 else 0)
        data = make_query(rng.getrandbits(16), q, flags, rng.choice([-1, 0, 1]))
        fast, slow = scan(data), parse_query(data)
        assert fast[0] == slow.key and fast[1] == slow.qend and fast[3] == slow.limit
        assert fast[4] == slow.edns


def test_error_replies_golden():
    q = make_query(0xBEEF, Q_A, do=0)
    assert error_reply(q, wire.SERVFAIL, len(q) - 11, 0) == (DATA / "servfail_edns.bin").read_bytes()
    rec = DNSRecord.parse(error_reply(q, wire.SERVFAIL, len(q) - 11, 0))
    assert rec.header.id == 0xBEEF and rec.header.qr == 1 and rec.header.rcode == 2
    assert str(rec.q.qname) == "WWW.Example.COM."
    bare = error_reply(b"\xbe\xef\x01\x00" + b"\x00" * 8, FORMERR)
    assert bare == (DATA / "formerr_bare.bin").read_bytes()
    assert DNSRecord.parse(bare).header.rcode == FORMERR


def test_truncated_reply_golden():
    q = make_query(0x0102, Q_A)
    tc = truncated_reply(q, len(q), 0x8180, -1)
    assert tc == (DATA / "truncated_plain.bin").read_bytes()
    rec = DNSRecord.parse(tc)
    assert rec.header.tc == 1 and not rec.rr and rec.header.rd == 1


def test_scan_key_of_a_malformed_name_never_equals_a_real_key():
    # label length 80 (> 63): scan may produce a key, but no parse_query key
    # (the only kind ever stored) can be equal to it.
    bad = make_query(1, b"\x50" + b"a" * 80 + b"\x00\x00\x01\x00\x01")
    with pytest.raises(QueryError):
        parse_query(bad)
    fast = scan(bad)
    assert fast is None or fast[0][0] > 63  # not a length octet: no stored key starts so
    # a zero inside a label: scan cuts the name short, parse_query does not
    odd = make_query(1, b"\x03a\x00b\x03com\x00\x00\x01\x00\x01")
    assert parse_query(odd).key != (scan(odd) or [None])[0]
