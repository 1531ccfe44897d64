"""``nodecache-bench searchpath``: what a pod's ndots:5 search walk costs
with the ``k8s_schema`` stage off and on, side by side in one run.

A pod in namespace ``default`` looks up external names it never asked
before (``h<N>.example<M>.com``: two dots, so glibc walks the whole search
list first): ``X.default.svc.cluster.local``, ``X.svc.cluster.local``,
``X.cluster.local``, ``X.<node search domain>``, then ``X.`` - A and AAAA
in parallel at each step, the next step only when both are NXDOMAIN, as
glibc's getaddrinfo does. Two emulated upstreams on loopback, in this
process: the cluster DNS (``nodecache.emulated.upstream.ClusterDNS``),
answering after ``--cluster-ms``, and an external resolver answering after
``--external-ms`` (NXDOMAIN under the node's search domain, an address for
the rest: data, no query leaves the machine). The agent is a real
``nodecache run`` with the cluster zone's block forwarding to the first
and the root block to the second; lookups start at a fixed rate.

Printed per variant: lookups, queries that reached the cluster DNS and the
external resolver per lookup, and lookup latency p50/p99.
"""
from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, SOA, A, DNSRecord

from nodecache.emulated.client import build, free_port, udp
from nodecache.emulated.upstream import ClusterDNS, FakeUpstream

from .procs import AgentProc

NODE_SEARCH = "ec2.internal"
SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local", NODE_SEARCH)


def corefile(port: int, cluster: int, external: int, schema: bool) -> str:
    stage = f"    k8s_schema {{\n        search {NODE_SEARCH}\n    }}\n" if schema else ""
    return f"""cluster.local:{port} {{
    bind 127.0.0.1
    cache 30
{stage}    forward . 127.0.0.1:{cluster} {{
        force_tcp
    }}
}}
.:{port} {{
    bind 127.0.0.1
    cache 30
    forward . 127.0.0.1:{external} {{
        force_tcp
    }}
}}
"""


def external_answer(data: bytes) -> bytes | None:
    try:
        req = DNSRecord.parse(data)
    except Exception:
        return None
    reply = req.reply(ra=1)
    name = str(req.q.qname).lower()
    if name.endswith(NODE_SEARCH + "."):
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(RR(NODE_SEARCH + ".", QTYPE.SOA, ttl=60,
                          rdata=SOA("ns." + NODE_SEARCH + ".", "hostmaster." + NODE_SEARCH + ".", (1, 3600, 600, 86400, 60))))
    elif req.q.qtype == QTYPE.A:
        reply.add_answer(RR(name, QTYPE.A, ttl=300, rdata=A("192.0.2.1")))
    else:  # NODATA, with the SOA a real resolver sends (RFC 2308 §2.2: what makes it cacheable)
        reply.add_auth(RR("com.", QTYPE.SOA, ttl=60, rdata=SOA("a.gtld-servers.net.", "nstld.verisign-grs.com.",
                                                              (1, 1800, 900, 604800, 60))))
    return reply.pack()


async def lookup(port: int, name: str) -> float:
    """One glibc-style walk; its seconds."""
    t0 = time.monotonic()
    for candidate in [f"{name}.{s}" for s in SEARCH] + [name]:
        replies = await asyncio.gather(udp("127.0.0.1", port, build(candidate, QTYPE.A), 5.0),
                                       udp("127.0.0.1", port, build(candidate, QTYPE.AAAA), 5.0))
        if any(r[3] & 0xF != RCODE.NXDOMAIN for r in replies):
            break
    return time.monotonic() - t0


async def variant(schema: bool, rate: float, duration: float, cluster_ms: float, external_ms: float,
                  start: int, tmp: Path) -> dict:
    cluster = FakeUpstream(ClusterDNS().answer, delay=cluster_ms / 1000, record=False)
    external = FakeUpstream(external_answer, delay=external_ms / 1000, record=False)
    await cluster.start("127.0.0.1", 0)
    await external.start("127.0.0.1", 0)
    port = free_port()
    conf = tmp / f"Corefile.{int(schema)}"
    conf.write_text(corefile(port, cluster.port, external.port, schema))
    agent = AgentProc(tmp, conf, tmp / f"handoff.{int(schema)}", int(schema))
    try:
        await agent.wait_for("serving")
        await lookup(port, "warm.example.com")  # connections open, the zone's SOA learned
        c0, e0 = cluster.queries, external.queries
        count = int(rate * duration)
        tasks = []
        began = time.monotonic()
        for i in range(count):  # open loop: lookups start on schedule, whatever the ones before take
            tasks.append(asyncio.ensure_future(lookup(port, f"h{start + i}.example{i % 97}.com")))
            await asyncio.sleep(max(0.0, began + (i + 1) / rate - time.monotonic()))
        times = sorted(await asyncio.gather(*tasks))
        return {"lookups": count, "cluster_q": (cluster.queries - c0) / count,
                "external_q": (external.queries - e0) / count,
                "p50_ms": 1000 * times[len(times) // 2], "p99_ms": 1000 * times[min(len(times) - 1, int(len(times) * 0.99))]}
    finally:
        await agent.terminate()
        await cluster.stop()
        await external.stop()


async def run(rate: float, duration: float, cluster_ms: float, external_ms: float, rounds: int) -> list[tuple]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="nodecache-searchpath-") as d:
        start = 0
        for _ in range(rounds):
            for schema in (False, True):
                result = await variant(schema, rate, duration, cluster_ms, external_ms, start, Path(d))
                start += result["lookups"] + 1  # names never asked before, in every run
                rows.append(("k8s_schema on" if schema else "k8s_schema off", result))
    return rows


def main(args) -> int:
    rows = asyncio.run(run(args.rate, args.duration, args.cluster_ms, args.external_ms, args.rounds))
    print(f"ndots:5 walks of external names never asked before, from a pod in namespace default (search "
          f"{' '.join(SEARCH)}), {args.rate:g} lookups/s for {args.duration:g} s, A+AAAA per step; cluster DNS at "
          f"{args.cluster_ms:g} ms, external resolver at {args.external_ms:g} ms (emulated, loopback):")
    print(f"  {'variant':16} {'lookups':>7} {'cluster DNS q/lookup':>21} {'external q/lookup':>18} "
          f"{'p50 ms':>7} {'p99 ms':>7}")
    for label, r in rows:
        print(f"  {label:16} {r['lookups']:7d} {r['cluster_q']:21.2f} {r['external_q']:18.2f} "
              f"{r['p50_ms']:7.1f} {r['p99_ms']:7.1f}")
    return 0
