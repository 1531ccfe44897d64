"""The emulated cluster DNS behaves as a real server would where clients notice."""
from dnslib import QTYPE, DNSRecord

from nodecache.emulated.client import build
from nodecache.emulated.upstream import ClusterDNS


def test_answers_up_to_a_whole_message_and_refuses_clearly_beyond():
    dns = ClusterDNS()
    fits = dns.answer(build("big-570.example.com", QTYPE.TXT, do=0))
    assert len(fits) <= 65535 and len(DNSRecord.parse(fits).rr) == 570
    beyond = DNSRecord.parse(dns.answer(build("big-600.example.com", QTYPE.TXT, do=0)))
    assert beyond.header.rcode == 5 and not beyond.rr  # REFUSED, not a crash


def test_the_queries_ad_bit_is_never_copied():
    query = bytearray(build("svc-1.default.svc.cluster.local", QTYPE.A))
    query[3] |= 0x20  # AD set by the client (RFC 6840 §5.7: "I understand AD")
    reply = DNSRecord.parse(ClusterDNS().answer(bytes(query)))
    assert reply.header.ad == 0 and reply.rr
