"""Upstream reply analysis and rendering cached entries for clients."""
import pytest
from dnslib import QTYPE, DNSRecord

from nodecache.ttlcache.entry import STALE_TTL, Entry, render_uncached
from nodecache.dns.reply import MalformedReply, analyse
from nodecache.dns.wire import AD, CD, RD, make_query, question_bytes, scan
from nodecache_lab.fakes import a_record, reply_to, soa

Q = question_bytes("svc.default.svc.cluster.local", QTYPE.A)


def upstream(*answers, auth=(), rcode=0, edns=True):
    return reply_to(make_query(0x4242, Q, RD, 0 if edns else -1), *answers, auth=auth,
                    rcode=rcode, edns=edns)


def test_analyse_finds_ttls_and_strips_opt():
    raw = upstream(a_record("svc.default.svc.cluster.local", ttl=30),
                   a_record("svc.default.svc.cluster.local", "10.0.0.2", ttl=20))
    r = analyse(raw)
    assert r.counts == (2, 0, 0) and r.ttls == (30, 20) and r.min_ttl == 20
    assert len(r.tail) == len(raw) - r.qend - 11  # OPT (11 bytes) removed
    for off, ttl in zip(r.ttl_offsets, r.ttls):
        assert int.from_bytes(r.tail[off:off + 4], "big") == ttl


def test_negative_ttl_is_min_of_soa_ttl_and_minimum():
    r = analyse(upstream(auth=(soa(ttl=60, minimum=30),), rcode=3))
    assert r.negative_ttl == 30 and r.rcode == 3
    r = analyse(upstream(auth=(soa(ttl=10, minimum=30),), rcode=3))
    assert r.negative_ttl == 10


@pytest.mark.parametrize("mangle", [
    lambda b: b[:11],                              # short
    lambda b: b[:2] + bytes([b[2] & 0x7F]) + b[3:],  # QR clear
    lambda b: b[:-3],                              # truncated record
    lambda b: b + b"\x00",                         # trailing garbage
    lambda b: b[:7] + b"\x09" + b[8:],             # ancount beyond data
])
def test_malformed_replies_rejected(mangle):
    raw = upstream(a_record("svc.default.svc.cluster.local"))
    with pytest.raises(MalformedReply):
        analyse(mangle(raw))


def test_entry_renders_client_id_case_and_decrementing_ttl():
    raw = upstream(a_record("svc.default.svc.cluster.local", ttl=30))
    reply = analyse(raw)
    client = make_query(0x0A0B, question_bytes("SVC.Default.svc.cluster.local", QTYPE.A))
    key, qend, flags, _, edns = scan(client)
    e = Entry(key, reply, 0, 30, now=100.0)
    out = e.render(client, qend, flags, edns, 100.5)
    rec = DNSRecord.parse(out)
    assert rec.header.id == 0x0A0B and str(rec.q.qname) == "SVC.Default.svc.cluster.local."
    assert rec.rr[0].ttl == 30 and not rec.ar and rec.header.aa == 0 and rec.header.ra == 1
    assert DNSRecord.parse(e.render(client, qend, flags, edns, 112.9)).rr[0].ttl == 18
    assert DNSRecord.parse(e.render(client, qend, flags, edns, 200)).rr[0].ttl == 0
    assert DNSRecord.parse(e.render_stale(client, qend, flags, edns)).rr[0].ttl == STALE_TTL


def test_entry_memoises_tail_per_second():
    reply = analyse(upstream(a_record("svc.default.svc.cluster.local", ttl=30)))
    client = make_query(1, Q)
    e = Entry(b"k", reply, 0, 30, now=0.0)
    e.render(client, len(client), RD, -1, 3.2)
    tail = e.tail
    e.render(client, len(client), RD, -1, 3.9)
    assert e.tail is tail  # same second: not re-rendered
    e.render(client, len(client), RD, -1, 4.0)
    assert e.tail is not tail


def test_entry_ttl_capped_by_cache_ttl():
    reply = analyse(upstream(a_record("svc.default.svc.cluster.local", ttl=3600)))
    client = make_query(1, Q)
    e = Entry(b"k", reply, 0, 300, now=0.0)
    assert DNSRecord.parse(e.render(client, len(client), RD, -1, 0)).rr[0].ttl == 300


def test_opt_echo_and_flags():
    reply = analyse(upstream(a_record("svc.default.svc.cluster.local")))
    client = make_query(9, Q, RD | CD, do=1)
    key, qend, flags, _, edns = scan(client)
    rec = DNSRecord.parse(Entry(key, reply, 0, 30, 0.0).render(client, qend, flags, edns, 0))
    opt = [r for r in rec.ar if r.rtype == QTYPE.OPT]
    assert len(opt) == 1 and opt[0].rclass == 1232 and opt[0].edns_do
    assert rec.header.cd == 1 and rec.header.rd == 1


def test_ad_only_for_clients_asking_with_ad_or_do():
    raw = bytearray(upstream(a_record("svc.default.svc.cluster.local")))
    raw[3] |= AD
    reply = analyse(bytes(raw))
    plain = make_query(1, Q)
    assert DNSRecord.parse(render_uncached(reply, plain, len(plain), RD, -1)).header.ad == 0
    assert DNSRecord.parse(render_uncached(reply, plain, len(plain), RD | AD, -1)).header.ad == 1
