"""Hot handoff figures.

1. Snapshot transfer, in one process: an agent whose cache holds N entries
   (10k, 100k) publishes its handoff socket; a heir takes over in a thread.
   Reported: bytes, time from connect to the end of the snapshot (donor
   serialising + transfer), decode and restore time on the heir.
2. Handoffs between real `nodecache run` processes under a constant UDP load
   (plus a TCP client): handoff duration (heir connect -> READY, from the
   heir's log), queries lost per handoff, and latency p50/p99 within 0.5 s of
   a handoff against the rest of the run.

Bounded in count and time; traffic to 127.0.0.1 only.

    .venv/bin/python -m nodecache_bench.handoff [--handoffs N] [--qps Q]
"""
from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import threading
import time
from pathlib import Path


import uvloop
from dnslib import QTYPE

from nodecache.emulated import client
from nodecache.config.parse import parse_config
from nodecache.dns.reply import analyse
from nodecache.dns.wire import make_query, question_bytes, scan
from nodecache.emulated.upstream import ClusterDNS, FakeUpstream
from nodecache.handoff.donor import Donor
from nodecache.handoff.heir import take_over
from nodecache.server.agent import Agent
from . import tlsup
from .procs import NAMES, AgentProc, Load, corefile


async def snapshot_transfer(n: int, tmp: Path) -> dict:
    port = client.free_port()
    agent = Agent(parse_config(f"cluster.local:{port} {{\n cache {{\n  success {n} 3600\n }}\n"
                               f" bind 127.0.0.1\n forward . 127.0.0.1:1\n}}\n"))
    await agent.start()
    dns = ClusterDNS(services=n)
    cache = agent.blocks[0].cache
    for i in range(n):
        q = make_query(1, question_bytes(f"svc-{i}.default.svc.cluster.local", QTYPE.A))
        cache.insert(scan(q)[0], analyse(dns.answer(q)))
    donor = Donor(agent, str(tmp / f"h{n}"), lambda: asyncio.sleep(0))
    donor.start()
    box = {}

    def heir():
        t0 = time.perf_counter()
        take = take_over(str(tmp / f"h{n}"))
        box["transfer"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        box["entries"] = take.cache(time.monotonic())
        box["decode"] = time.perf_counter() - t1
        box["bytes"] = len(take.snapshot)
        take.abandon()  # measure only; the donor keeps serving

    thread = threading.Thread(target=heir)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.01)
    target = Agent(parse_config(f"cluster.local:{port} {{\n cache {{\n  success {n} 3600\n }}\n"
                                f" bind 127.0.0.1\n forward . 127.0.0.1:1\n}}\n"))
    t2 = time.perf_counter()
    restored = target.restore(box["entries"])
    restore = time.perf_counter() - t2
    donor.close()
    await agent.stop(0.1)
    return {"entries": restored, "bytes": box["bytes"], "transfer_ms": box["transfer"] * 1000,
            "decode_ms": box["decode"] * 1000, "restore_ms": restore * 1000}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def handoffs_under_load(rounds: int, qps: int, tmp: Path, upstream: str = "dns") -> dict:
    """``upstream`` tls or https: the cluster DNS is a real unbound serving
    DoT and DoH (nodecache_bench.tlsup), and one query in ten is a name never
    asked before, so misses are in flight over TLS at every handoff: the
    heir opens its own TLS connections (TLS state cannot move between
    processes) while the donor answers what it has in flight."""
    port = client.free_port()
    conf = tmp / "Corefile"
    if upstream == "dns":
        up = FakeUpstream(ClusterDNS(ttl=3600).answer, record=False)
        conf.write_text(corefile(port, await up.start()))
        stop_upstream, misses = up.stop, 0.0
    else:
        pki = tlsup.make_pki(tmp / "pki")
        server = tlsup.unbound_server(tmp, pki, tlsup.redirect_data("cluster.local."))
        server.start()
        target = f"{upstream}://127.0.0.1:{server.ports[upstream]}"
        conf.write_text(corefile(port, 0, target, f"tls {pki.ca}\n        tls_servername {tlsup.SERVER_NAME}"))

        async def stop_upstream():
            server.stop()
        misses = 0.1
    agents = [AgentProc(tmp, conf, tmp / "handoff", 0)]
    try:
        await agents[0].wait_for("serving")
        for name in NAMES:
            for qtype in (1, 28):
                await client.udp("127.0.0.1", port, client.build(name, qtype))
        load = Load(port, qps=qps, misses=misses)
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(load.run(stop, limit=600))
        await asyncio.sleep(1.0)
        marks = []
        for k in range(1, rounds + 1):
            heir = AgentProc(tmp, conf, tmp / "handoff", k)
            agents.append(heir)
            await heir.wait_for("READY sent")
            ready = time.monotonic()
            marks.append((ready - 0.2, ready + 0.5))  # the handoff itself, then the donor's drain
            await agents[-2].terminate()
            await asyncio.sleep(1.5)
        stop.set()
        await task
    finally:
        for a in agents:
            a.kill()
        await stop_upstream()
    durations = [float(m.group(1)) for a in agents[1:]
                 for m in [re.search(r"READY sent (\d+) ms after connecting", a.text())] if m]
    near, far = [], []
    for sent, lat in load.latencies:
        (near if any(s <= sent <= e for s, e in marks) else far).append(lat * 1000)
    return {"load": load, "durations": durations, "near": near, "far": far, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--handoffs", type=int, default=10)
    ap.add_argument("--qps", type=int, default=5000)
    ap.add_argument("--upstream", choices=("dns", "tls", "https"), default="dns",
                    help="the cluster DNS: plain (the emulated one) or a real unbound over DoT or DoH")
    args = ap.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.ERROR)  # the measuring heir abandons on purpose
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("1. snapshot transfer (one process, heir in a thread)")
        print(f"   {'entries':>8} {'bytes':>11} {'connect->END ms':>16} {'decode ms':>10} {'restore ms':>11}")
        for n in (10_000, 100_000):
            r = uvloop.run(snapshot_transfer(n, tmp))
            print(f"   {r['entries']:8d} {r['bytes']:11d} {r['transfer_ms']:16.0f} {r['decode_ms']:10.0f} "
                  f"{r['restore_ms']:11.0f}")
        r = uvloop.run(handoffs_under_load(args.handoffs, args.qps, tmp, args.upstream))
    load = r["load"]
    d = sorted(r["durations"])
    over = {"dns": "TCP", "tls": "DNS over TLS (unbound)", "https": "DNS over HTTPS (unbound)"}[args.upstream]
    mix = "400 cached names" + (", one query in ten a name never asked before" if args.upstream != "dns" else "")
    print(f"2. {r['rounds']} handoffs between processes under {args.qps} UDP queries/s + a TCP client "
          f"({mix}; upstream over {over})")
    print(f"   handoff duration (heir connect -> READY): median {pct(d, 50):.0f} ms, max {max(d):.0f} ms")
    print(f"   queries: {load.sent} UDP + {load.tcp_sent} TCP sent; unanswered {load.unanswered} "
          f"({load.unanswered / r['rounds']:.1f} per handoff), duplicates {load.duplicates}, "
          f"errors {load.errors}, TCP reconnects {load.tcp_retries}")
    print(f"   UDP latency from 0.2 s before to 0.5 s after READY: p50 {pct(r['near'], 50):.2f} ms, "
          f"p99 {pct(r['near'], 99):.2f} ms ({len(r['near'])} queries)")
    print(f"   UDP latency elsewhere:                             p50 {pct(r['far'], 50):.2f} ms, "
          f"p99 {pct(r['far'], 99):.2f} ms ({len(r['far'])} queries)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
