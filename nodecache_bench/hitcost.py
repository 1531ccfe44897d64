"""CPU per cached query at fixed rates: nodecache, unbound and the bare
uvloop floor, side by side (``nodecache-bench compare --hits 5000,30000,80000``).

Method (as a node runs it): each server is pinned to CPU 0; dnsperf and the
upstream (one unbound acting as the cluster DNS, see ``misscost``) to
CPU 1. 1,000 names under ``svc.cluster.local.`` are asked once to fill the
caches, then dnsperf sends them at a fixed rate ``-Q`` (sub-saturation:
what pods do) for ``--duration`` seconds. Per run: the server's own
utime+stime from /proc divided by the queries dnsperf saw answered. The
bare uvloop responder (receive, copy the ID into a fixed reply, send) is
the floor for a server on uvloop's datagram transport (nodecache reads
its sockets itself, server.udpbatch, and can go below it). Servers alternate,
``--rounds`` times; medians, with every run listed.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .misscost import UPSTREAM_ZONE, behind_cluster_dns, dnsperf_at

# the floor: a uvloop responder that copies the ID into one fixed reply
BARE = """
import asyncio, sys, uvloop
class P(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, d, a):
        self.t.sendto(d[:2] + REPLY[2:], a)
REPLY = bytes.fromhex(sys.argv[2])
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", int(sys.argv[1])))
    await asyncio.Event().wait()
uvloop.run(main())
"""

NAMES = [f"h{i}.{UPSTREAM_ZONE}" for i in range(1000)]


def _reply_bytes(port: int) -> bytes:
    import socket
    from nodecache.testing.client import build
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(build(NAMES[0].rstrip("."), 1, qid=0), ("127.0.0.1", port))
        return s.recv(4096)


def hit_cost(rates: list[int], duration: float, rounds: int, tmp: Path, cpus: list[int],
             free_port, pin, cpu_seconds, server_cls, baseline: str = "") -> dict:
    """{rate: {server: {cpu_us_per_query, runs, achieved, lost}}}"""
    server_cpus, load_cpus = {cpus[0]}, set(cpus[1:]) or {cpus[0]}
    bare = free_port()
    out: dict = {}
    with behind_cluster_dns(tmp, free_port, pin, load_cpus, server_cls, baseline) as (servers, up_port):
        time.sleep(1.0)
        servers.append(server_cls("bare uvloop", [sys.executable, "-c", BARE, str(bare),
                                                  _reply_bytes(up_port).hex()], bare))
        for s in servers:
            s.start(server_cpus)
        time.sleep(1.5)
        qfile = tmp / "hits.txt"
        for s in servers:  # fill the caches: every name asked once, slowly
            dnsperf_at(s.port, NAMES, qfile, 2000, 1, pin(load_cpus))
        for rate in rates:
            runs: dict[str, list[dict]] = {s.name: [] for s in servers}
            for _ in range(rounds):
                for s in servers:
                    c0 = cpu_seconds(s.proc.pid)
                    res = dnsperf_at(s.port, NAMES, qfile, rate, duration, pin(load_cpus))
                    cpu = cpu_seconds(s.proc.pid) - c0
                    res["cpu"] = round(cpu / res["answered"] * 1e6, 1) if res["answered"] else None
                    runs[s.name].append(res)
            for name, rs in runs.items():
                cpu = sorted(r["cpu"] or 0 for r in rs)
                out.setdefault(rate, {})[name] = {
                    "cpu_us_per_query": cpu[len(cpu) // 2], "runs": cpu,
                    "achieved": round(sorted(r["answered"] for r in rs)[len(rs) // 2] / duration),
                    "lost": sum(r["lost"] for r in rs)}
        for s in servers:  # how far one process goes: dnsperf closed loop, 64 in flight
            c0, t0 = cpu_seconds(s.proc.pid), time.monotonic()
            res = dnsperf_at(s.port, NAMES, qfile, 0, duration, pin(load_cpus))
            busy = (cpu_seconds(s.proc.pid) - c0) / (time.monotonic() - t0)
            out.setdefault("saturation", {})[s.name] = {"qps": round(res["answered"] / duration),
                                                        "cpu_share": round(busy, 2)}
    return out


def print_hit_table(table: dict, duration: float, rounds: int) -> None:
    print(f"\ncache hits at fixed rates (dnsperf -Q, 1,000 cached names, {duration:g} s x {rounds} "
          f"alternating rounds, median; server CPU from /proc per answered query):")
    print(f"  {'rate/s':>7} {'server':18} {'answered/s':>10} {'cpu us/q':>9} {'runs':>22} {'x unbound':>9} "
          f"{'x floor':>8} {'x baseline':>10}")
    for rate, per in table.items():
        if rate == "saturation":
            continue
        base = per.get("unbound", {}).get("cpu_us_per_query")
        floor = per.get("bare uvloop", {}).get("cpu_us_per_query")
        older = per.get("nodecache@baseline", {}).get("cpu_us_per_query")
        for name, e in per.items():
            cpu = e["cpu_us_per_query"]
            xu = f"{cpu / base:.2f}" if base and cpu else "-"
            xf = f"{cpu / floor:.2f}" if floor and cpu else "-"
            xb = f"{cpu / older:.3f}" if older and cpu and name == "nodecache" else "-"
            runs = ",".join(f"{v:g}" for v in e["runs"])
            print(f"  {rate:>7} {name:18} {e['achieved']:>10} {cpu:>9} {runs:>22} {xu:>9} {xf:>8} {xb:>10}")
    sat = table.get("saturation")
    if sat:
        print("  saturation (dnsperf closed loop, 64 in flight, same names; one core each): "
              + "; ".join(f"{name} {e['qps']:,} q/s at {e['cpu_share']:.0%} CPU" for name, e in sat.items()))
