"""Scenario tests: a query, what the upstream saw, the reply, the answer."""
import asyncio
import time

import dns.message

from dnslib import QTYPE, DNSRecord

from nodecache.emulated.client import build
from nodecache.emulated.upstream import ClusterDNS
from nodecache_lab.fakes import FakeClock, run
from nodecache_lab.harness import CLUSTER, node

SVC = "svc-1.default.svc.cluster.local"


async def test_miss_goes_upstream_once_over_tcp_then_hits():
    async with node(CLUSTER) as n:
        first = DNSRecord.parse(await n.udp(build(SVC, QTYPE.A)))
        assert [(s.proto, s.name) for s in n.up.seen] == [("tcp", SVC + ".")]
        second = DNSRecord.parse(await n.udp(build(SVC, QTYPE.A)))
        third = DNSRecord.parse(await n.tcp(build(SVC, QTYPE.A)))
        assert len(n.up.seen) == 1  # hits: no upstream query
        assert first.rr[0].rdata == second.rr[0].rdata == third.rr[0].rdata
        n.agent.fold_counters()  # two UDP hits, the second from the memo (plugins.cache.memo)
        assert n.agent.blocks[0].cache.hits[0] == 2


async def test_other_zones_use_udp_and_longest_suffix_picks_the_block():
    async with node(CLUSTER) as n:
        await n.udp(build("www.example.com", QTYPE.A))
        await n.udp(build("kubernetes.default.svc.cluster.local", QTYPE.A))
        assert [(s.proto, s.name) for s in n.up.seen] == [
            ("udp", "www.example.com."), ("tcp", "kubernetes.default.svc.cluster.local.")]
        assert len(n.agent.blocks[0].cache) == 1 and len(n.agent.blocks[1].cache) == 1


async def test_client_case_echoed_and_shares_the_entry():
    async with node(CLUSTER) as n:
        await n.udp(build(SVC, QTYPE.A))
        rec = DNSRecord.parse(await n.udp(build("SvC-1.DEFAULT.svc.Cluster.Local", QTYPE.A)))
        assert str(rec.q.qname) == "SvC-1.DEFAULT.svc.Cluster.Local."
        assert len(n.up.seen) == 1 and rec.rr


async def test_100_concurrent_identical_misses_make_one_upstream_query():
    async with node(CLUSTER, delay=0.05) as n:
        replies = await asyncio.gather(*(n.udp(build(SVC, QTYPE.A)) for _ in range(100)))
        assert all(DNSRecord.parse(r).rr for r in replies)
        assert len(n.up.seen) == 1


async def test_50_pipelined_tcp_queries_answered_out_of_order():
    names = [f"svc-{i}.default.svc.cluster.local" for i in range(50)]

    def delay(data):  # later queries are answered sooner
        name = str(DNSRecord.parse(data).q.qname)
        return (50 - int(name.split(".")[0][4:])) * 0.004
    async with node(CLUSTER, delay=delay) as n:
        queries = [build(name, QTYPE.A, qid=1000 + i) for i, name in enumerate(names)]
        replies = await n.tcp_many(queries)
        ids = [r[0] << 8 | r[1] for r in replies]
        assert sorted(ids) == list(range(1000, 1050))
        assert ids != sorted(ids)  # out of order: the fast ones did not wait
        for r in replies:
            rec = DNSRecord.parse(r)
            assert str(rec.q.qname) == names[rec.header.id - 1000] + "." and rec.rr
        # and the upstream saw them pipelined on one connection
        assert n.up.tcp_connections == 1


async def test_dead_upstream_gives_servfail_within_the_deadline():
    async with node(CLUSTER, drop=1.0) as n:
        t0 = time.monotonic()
        rec = DNSRecord.parse(await n.udp(build(SVC, QTYPE.A)))
        elapsed = time.monotonic() - t0
        assert rec.header.rcode == 2 and 4.5 < elapsed < 6.0
        assert n.up.names().count(SVC + ".") == 3  # attempts at 0 s, 2 s, 4 s
        assert ". " not in n.up.names() and "." in n.up.names()  # health probe ran
        assert len(n.agent.blocks[0].cache) == 0


def test_failover_to_the_next_upstream():
    corefile = """.:{port} {{
    bind 127.0.0.1
    forward . 127.0.0.1:{up0} 127.0.0.1:{up1} {{
        policy sequential
        force_tcp
    }}
}}"""
    async def go():
        async with node(corefile, upstreams=2) as n:
            n.upstreams[0].drop = 1.0
            t0 = time.monotonic()
            rec = DNSRecord.parse(await n.udp(build("a.example.com", QTYPE.A)))
            assert rec.rr and 1.9 < time.monotonic() - t0 < 3.0
            assert len(n.upstreams[0].seen) == 1 and len(n.upstreams[1].seen) == 1
    run(go())


async def test_truncation_keeps_every_whole_record_that_fits_and_tcp_has_all():
    """RFC 2181 §9 as CoreDNS does it (miekg/dns Msg.Truncate): TC=1 with the
    records that fit, so clients that never retry over TCP (musl < 1.2.4,
    busybox) still get addresses. Today's code sent TC=1 and no record."""
    async with node(CLUSTER) as n:
        big = "big-20.example.com"
        full_raw = await n.tcp(build(big, QTYPE.TXT))
        full = DNSRecord.parse(full_raw)
        assert full.header.tc == 0 and len(full.rr) == 20
        for do, limit in ((-1, 512), (0, 1232)):
            raw = await n.udp(build(big, QTYPE.TXT, do=do))
            cut = DNSRecord.parse(raw)
            assert cut.header.tc == 1 and len(raw) <= limit
            assert 0 < len(cut.rr) < 20 and cut.rr == full.rr[:len(cut.rr)]
            # maximal: one record more would not have fitted
            next_record = dns.message.from_wire(full_raw).answer[0][len(cut.rr)].to_wire()
            assert len(raw) + 12 + len(next_record) > limit  # name pointer, type, class, ttl, rdlength, rdata
            assert [r.rtype for r in cut.ar] == ([QTYPE.OPT] if do >= 0 else [])
        small = DNSRecord.parse(await n.udp(build("big-3.example.com", QTYPE.TXT, do=0)))
        assert small.header.tc == 0 and len(small.rr) == 3
        # upstream truncated our UDP query (1232 > 2 KB reply) and we retried over TCP
        assert [s.proto for s in n.up.seen if s.name == big + "."] == ["udp", "tcp"]


def _garbage_answer(kind):
    real = ClusterDNS().answer

    def answer(data):
        out = real(data)
        if kind == "garbage":
            return data[:2] + b"\x81\x80garbage"
        if kind == "wrong-id":
            return bytes([data[0] ^ 0xFF, data[1]]) + out[2:]
        if kind == "wrong-question":
            return real(data[:12] + b"\x05other\x07example\x00" + data[-15:])
        return out
    return answer


def test_upstream_garbage_wrong_id_wrong_question_never_cached():
    async def go():
        for kind in ("garbage", "wrong-id", "wrong-question"):
            corefile = CLUSTER.replace("force_tcp", "force_tcp\n        max_fails 0")
            async with node(corefile, answer=_garbage_answer(kind)) as n:
                t0 = time.monotonic()
                rec = DNSRecord.parse(await n.udp(build(SVC, QTYPE.A, do=0)))
                assert rec.header.rcode == 2, kind
                assert len(n.agent.blocks[0].cache) == 0, kind
                # garbage is retried (another endpoint behind the Service may
                # be sane) and a wrong ID is ignored until the attempt times
                # out: either way SERVFAIL comes at the deadline, not later
                assert 4.5 < time.monotonic() - t0 < 6.0, kind
                assert n.up.seen, kind
    run(go(), timeout=40)


def test_max_concurrent_exceeded_is_refused():
    corefile = """.:{port} {{
    bind 127.0.0.1
    forward . 127.0.0.1:{up0} {{
        max_concurrent 5
    }}
}}"""
    async def go():
        async with node(corefile, delay=0.3) as n:
            replies = await asyncio.gather(*(n.udp(build(f"n{i}.example.com", QTYPE.A))
                                             for i in range(8)))
            rcodes = sorted(DNSRecord.parse(r).header.rcode for r in replies)
            assert rcodes == [0] * 5 + [5] * 3
            assert n.agent.blocks[0].forward_stage.forwarder.rejected == 3
    run(go())


def test_names_outside_every_zone_and_except_are_refused():
    corefile = """example.com:{port} {{
    bind 127.0.0.1
    forward . 127.0.0.1:{up0} {{
        except private.example.com
    }}
}}"""
    async def go():
        async with node(corefile) as n:
            assert DNSRecord.parse(await n.udp(build("www.example.org", QTYPE.A))).header.rcode == 5
            assert DNSRecord.parse(await n.udp(build("a.private.example.com", QTYPE.A))).header.rcode == 5
            assert DNSRecord.parse(await n.udp(build("www.example.com", QTYPE.A))).header.rcode == 0
            assert n.up.names() == ["www.example.com."]
    run(go())


def test_connections_recycled_after_expire():
    corefile = """.:{port} {{
    bind 127.0.0.1
    forward . 127.0.0.1:{up0} {{
        force_tcp
        expire 200ms
    }}
}}"""
    async def go():
        async with node(corefile) as n:
            await n.udp(build("a.example.com", QTYPE.A))
            await n.udp(build("b.example.com", QTYPE.A))
            assert n.up.tcp_connections == 1
            await asyncio.sleep(0.3)  # connection age, not a TTL: the loop's clock
            await n.udp(build("c.example.com", QTYPE.A))
            assert n.up.tcp_connections == 2
            await asyncio.sleep(0.05)
            assert len(n.up.tcp_conns) == 1  # the retired one was closed
    run(go())


def test_serve_stale_immediate_when_upstream_fails():
    corefile = """.:{port} {{
    bind 127.0.0.1
    cache {{
        serve_stale 1h
    }}
    forward . 127.0.0.1:{up0}
}}"""
    clock = FakeClock()

    async def go():
        async with node(corefile, clock=clock) as n:
            fresh = DNSRecord.parse(await n.udp(build("s.example.com", QTYPE.A)))
            clock.advance(31)             # past the 30 s TTL
            n.up.drop = 1.0               # and the upstream is gone
            stale = DNSRecord.parse(await n.udp(build("s.example.com", QTYPE.A)))
            assert stale.rr[0].rdata == fresh.rr[0].rdata and stale.rr[0].ttl == 30
            assert n.agent.blocks[0].cache.served_stale == 1
            await asyncio.sleep(0.05)
            assert len(n.up.seen) == 2    # the background refresh was tried
    run(go())


def test_serve_stale_verify_prefers_fresh_answer():
    corefile = """.:{port} {{
    bind 127.0.0.1
    cache {{
        serve_stale 1h verify
    }}
    forward . 127.0.0.1:{up0}
}}"""
    clock = FakeClock()

    async def go():
        async with node(corefile, clock=clock) as n:
            await n.udp(build("v.example.com", QTYPE.A))
            clock.advance(35)
            rec = DNSRecord.parse(await n.udp(build("v.example.com", QTYPE.A)))
            assert rec.rr[0].ttl == 30 and len(n.up.seen) == 2
            assert n.agent.blocks[0].cache.served_stale == 0
    run(go())


def test_prefetch_refreshes_popular_entry_in_background():
    corefile = """.:{port} {{
    bind 127.0.0.1
    cache {{
        prefetch 2 1m 20%
    }}
    forward . 127.0.0.1:{up0}
}}"""
    clock = FakeClock()

    async def go():
        async with node(corefile, clock=clock) as n:
            q = build("p.example.com", QTYPE.A)
            await n.udp(q)
            for _ in range(3):
                clock.advance(8)          # 24 s of 30: 6 s (20%) left at the last hit
                await n.udp(q)
            await asyncio.sleep(0.05)
            assert len(n.up.seen) == 2    # one miss, one prefetch
            rec = DNSRecord.parse(await n.udp(q))
            assert rec.rr[0].ttl == 30    # the refreshed entry
            assert n.agent.blocks[0].cache.prefetches == 1
    run(go())
