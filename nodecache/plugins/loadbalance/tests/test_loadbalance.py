"""loadbalance: every answer's A/AAAA/MX records shuffled, CNAMEs first,
cached answers included (the block takes no hit shortcut)."""
import random

import pytest
from dnslib import QTYPE, RR, A, CNAME, DNSRecord

from nodecache.config.corefile import CorefileError
from nodecache.config.parse import parse_config
from nodecache.plugins.loadbalance.stage import shuffle
from nodecache.emulated.client import build
from nodecache.emulated.upstream import ClusterDNS
from nodecache_lab.fakes import reply_to
from nodecache_lab.harness import node


def test_shuffle_keeps_every_record_and_the_cname_first():
    q = build("www.example.", QTYPE.A)
    rrs = [RR("www.example.", QTYPE.CNAME, rdata=CNAME("web.example."))] + \
          [RR("web.example.", QTYPE.A, rdata=A(f"10.0.0.{i}")) for i in range(1, 6)]
    wire = reply_to(q, *rrs)
    firsts = set()
    for seed in range(20):
        out = DNSRecord.parse(shuffle(wire, random.Random(seed)))
        assert out.rr[0].rtype == QTYPE.CNAME
        assert sorted(str(r.rdata) for r in out.rr[1:]) == [f"10.0.0.{i}" for i in range(1, 6)]
        firsts.add(str(out.rr[1].rdata))
    assert len(firsts) > 1


def test_only_round_robin_is_a_policy():
    assert parse_config(". {\n    loadbalance\n}\n").blocks[0].option("loadbalance") == "round_robin"
    with pytest.raises(CorefileError, match="not supported"):
        parse_config(". {\n    loadbalance weighted /etc/w\n}\n")


class FourAddresses(ClusterDNS):
    def answer(self, query: bytes):
        rec = DNSRecord.parse(query)
        return reply_to(query, *[RR(rec.q.qname, QTYPE.A, ttl=300, rdata=A(f"10.1.0.{i}")) for i in range(4)])


async def test_cached_answers_are_shuffled_too():
    corefile = ".:{port} {{\n    bind 127.0.0.1\n    loadbalance\n    cache 30\n    forward . 127.0.0.1:{up0}\n}}\n"
    async with node(corefile, answer=FourAddresses().answer) as n:
        firsts = set()
        for i in range(30):
            rec = DNSRecord.parse(await n.udp(build("lb.example", QTYPE.A, qid=i)))
            assert len(rec.rr) == 4
            firsts.add(str(rec.rr[0].rdata))
        assert len(n.up.seen) == 1 and len(firsts) > 1  # from the cache, and shuffled
        assert all(len(lst.path.memo) == 0 for lst in n.agent.listeners)
