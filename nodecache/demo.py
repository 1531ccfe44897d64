"""``nodecache demo``: the agent on loopback in front of an emulated cluster DNS.

Starts the emulated cluster DNS and the agent in this process with an
embedded Corefile of node-cache's shape (the cluster zone forwarded over
TCP, everything else over UDP), resolves a set of names twice over UDP and
twice over TCP, and prints the answers, the latencies, the cache's counts
and what the upstream saw.
"""
from __future__ import annotations

import time

from dnslib import QTYPE, RCODE, DNSRecord

from .emulated import client
from .config.parse import parse_config
from .emulated.upstream import ClusterDNS, FakeUpstream
from .server.agent import Agent

COREFILE = """\
cluster.local:{port} {{
    errors
    cache {{
        success 9984 30
        denial 9984 5
    }}
    bind 127.0.0.1
    forward . 127.0.0.1:{upstream} {{
        force_tcp
    }}
}}
.:{port} {{
    errors
    cache 30
    bind 127.0.0.1
    forward . 127.0.0.1:{upstream}
}}
"""

NAMES = [("svc-1.default.svc.cluster.local", "A"),
         ("kubernetes.default.svc.cluster.local", "AAAA"),
         ("_http._tcp.svc-2.other.svc.cluster.local", "SRV"),
         ("no-such-svc.default.svc.cluster.local", "A"),
         ("www.example.com", "A")]


def _summary(reply: bytes) -> str:
    rec = DNSRecord.parse(reply)
    rcode = RCODE.get(rec.header.rcode)
    if not rec.rr:
        return rcode
    return f"{rcode} " + ", ".join(f"{r.rdata} (ttl {r.ttl})" for r in rec.rr)


async def _bench(port: int, seconds: float) -> None:
    """A short nodecache-bench run against the demo agent (in a separate
    process, while this one keeps serving)."""
    import asyncio
    import sys
    print(f"\nnodecache-bench: {seconds / 2:g} s of cached queries at 3,000/s, then {seconds / 2:g} s of "
          "the pod scenario:")
    for extra in (["--qps", "3000", "--scenario", "hits"], ["--qps", "50", "--scenario", "pod"]):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nodecache_bench.cli", "run", "-s", "127.0.0.1", "-p", str(port),
            "--duration", str(seconds / 2), "--workers", "1", "--quiet", *extra)
        await proc.wait()


async def run_demo(bench_seconds: float = 10.0) -> int:
    upstream = FakeUpstream(ClusterDNS().answer, delay=0.002)  # a 2 ms round trip to "the cluster"
    up_port = await upstream.start("127.0.0.1", 0)
    port = client.free_port()
    config = parse_config(COREFILE.format(port=port, upstream=up_port), "embedded demo Corefile")
    agent = Agent(config)
    await agent.start()
    print(f"nodecache demo: agent on 127.0.0.1:{port}, emulated cluster DNS on 127.0.0.1:{up_port}")
    print(f"{'name':44} {'type':5} {'via':4} {'round':6} {'ms':>7}  answer")
    try:
        for proto, ask in (("udp", client.udp), ("tcp", client.tcp)):
            for round_ in ("miss", "hit"):
                for name, qtype in NAMES:
                    query = client.build(name, getattr(QTYPE, qtype))
                    t0 = time.perf_counter()
                    reply = await ask("127.0.0.1", port, query)
                    ms = (time.perf_counter() - t0) * 1000
                    print(f"{name:44} {qtype:5} {proto:4} {round_ if proto == 'udp' else 'hit':6} "
                          f"{ms:7.3f}  {_summary(reply)}")
        print()
        for zones, stats in agent.cache_stats().items():
            print(f"cache [{zones}]: {stats['hits']} hits, {stats['misses']} misses, "
                  f"{stats['entries']} entries")
        tcp = sorted({n for n in upstream.names("tcp")})
        udp = sorted({n for n in upstream.names("udp")})
        print(f"upstream saw {len(upstream.seen)} queries: over TCP {tcp}; over UDP {udp}")
        if bench_seconds:
            await _bench(port, bench_seconds)
    finally:
        await agent.stop(1.0)
        await upstream.stop()
    return 0
