"""CPU per cached query at fixed rates: nodecache, unbound and the bare
uvloop floor, side by side (``nodecache-bench compare --hits 5000,30000,80000``).

Method (as a node runs it): each server is pinned to CPU 0; dnsperf and the
upstream (one unbound acting as the cluster DNS, see ``misscost``) to
CPU 1. The names in use (``--names``, 1,000 by default, under
``svc.cluster.local.``) are asked once to fill the caches and once more as
hits, then dnsperf sends them at a fixed rate ``-Q`` (sub-saturation: what
pods do) for ``--duration`` seconds, each run going on through the names
where the server's last run stopped. Per run: the server's own CPU divided
by the queries dnsperf saw answered. The
bare uvloop responder (receive, copy the ID into a fixed reply, send) is
the floor for a server on uvloop's datagram transport (nodecache reads
its sockets itself, server.udpbatch, and can go below it). Servers alternate,
``--rounds`` times; medians, with every run listed. Then one more 2 s run
per server and rate under ``strace -f -c`` gives system calls per answered
query (a run of its own: tracing slows the server, so its CPU is not used).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .cpustat import split, syscalls_per_query, times
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



def _reply_bytes(port: int) -> bytes:
    import socket
    from nodecache.emulated.client import build
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(build(f"h0.{UPSTREAM_ZONE}".rstrip("."), 1, qid=0), ("127.0.0.1", port))
        return s.recv(4096)


FILL_RATE = 4000   # names/s while filling the caches
WARM_RATE = 20000  # names/s asked again (hits) once filled


def rotated(names: list[str], start: int) -> list[str]:
    """``names`` from ``start`` on, then the ones before it."""
    return names[start:] + names[:start]


def working_set(names: int) -> tuple[list[str], int]:
    """The ``names`` names in use, and the cache capacity that holds them
    (0: the default cache, 9,984 entries, is enough)."""
    return [f"h{i}.{UPSTREAM_ZONE}" for i in range(names)], (names + names // 4 if names > 8000 else 0)


def fill_and_warm(port: int, in_use: list[str], qfile: Path, pin) -> None:
    """Every name asked once to fill a server's cache, below nodecache's
    default -miss-rate-per-client (5,000/s: one client faster than that is
    REFUSED, and 100,000 names filled at 20,000/s left three in four
    uncached, so "hits" were misses); then once more, as hits: a node's
    working set has been asked before (for nodecache: its memos exist), so
    the first hit of each name is not what is measured either."""
    names = len(in_use)
    fill = min(FILL_RATE, max(2000, names))
    dnsperf_at(port, in_use, qfile, fill, max(1, -(-names // fill)), pin)
    dnsperf_at(port, in_use, qfile, WARM_RATE, max(1, -(-names // WARM_RATE)), pin)


class NameCursor:
    """Where a server's next run starts in the names in use. dnsperf reads
    its query file from the top every run: a 5 s run at 5,000 q/s asks only
    the first 25,000 names. Runs go on through the list where the last one
    stopped, so that together they ask every name in use, each in turn."""

    def __init__(self, names: list[str]):
        self.names, self.start = names, 0

    def current(self) -> list[str]:
        return rotated(self.names, self.start)

    def take(self, rate: int, duration: float) -> list[str]:
        """The names for a run of ``duration`` s at ``rate``; the next starts after them."""
        names = self.current()
        self.start = (self.start + int(rate * duration)) % len(self.names)
        return names


def hit_cost(rates: list[int], duration: float, rounds: int, tmp: Path, cpus: list[int],
             free_port, pin, cpu_seconds, server_cls, baseline: str = "", names: int = 1000,
             flags: tuple[str, ...] = (), base_flags: tuple[str, ...] = ()) -> dict:
    """{rate: {server: {cpu_us_per_query, user_us, sys_us, latency_ms, runs, achieved, lost}}}:
    ``names`` distinct cached names in use (every cache sized to hold them)."""
    in_use, capacity = working_set(names)
    server_cpus, load_cpus = {cpus[0]}, set(cpus[1:]) or {cpus[0]}
    bare = free_port()
    out: dict = {}
    with behind_cluster_dns(tmp, free_port, pin, load_cpus, server_cls, baseline, capacity,
                            flags, base_flags=base_flags) as (servers, up_port):
        time.sleep(1.0)
        servers.append(server_cls("bare uvloop", [sys.executable, "-c", BARE, str(bare),
                                                  _reply_bytes(up_port).hex()], bare))
        for s in servers:
            s.start(server_cpus)
        time.sleep(1.5)
        qfile = tmp / "hits.txt"
        for s in servers:
            fill_and_warm(s.port, in_use, qfile, pin(load_cpus))
        cursor = {s.name: NameCursor(in_use) for s in servers}
        for rate in rates:
            runs: dict[str, list[dict]] = {s.name: [] for s in servers}
            for _ in range(rounds):
                for s in servers:
                    asked = cursor[s.name].take(rate, duration)
                    before = times(s.proc.pid)
                    res = dnsperf_at(s.port, asked, qfile, rate, duration, pin(load_cpus), latency=True)
                    res.update(split(before, times(s.proc.pid), res["answered"]))
                    runs[s.name].append(res)
            for name, rs in runs.items():
                rs = sorted(rs, key=lambda r: r["cpu"] or 0)
                cpu = [r["cpu"] or 0 for r in rs]
                mid = rs[len(rs) // 2]
                out.setdefault(rate, {})[name] = {
                    "cpu_us_per_query": cpu[len(cpu) // 2], "runs": cpu, "user_us": mid["user"],
                    "sys_us": mid["sys"], "latency_ms": mid.get("latency_ms", {}),
                    "achieved": round(sorted(r["answered"] for r in rs)[len(rs) // 2] / duration),
                    "lost": sum(r["lost"] for r in rs)}
            for s in servers:  # a run of its own: strace slows what it traces
                asked = cursor[s.name].current()
                out[rate][s.name]["syscalls"] = syscalls_per_query(
                    s.proc.pid, lambda: dnsperf_at(s.port, asked, qfile, rate, 2, pin(load_cpus))["answered"], tmp)
        for s in servers:  # how far one process goes: dnsperf closed loop, 64 in flight
            c0, t0 = cpu_seconds(s.proc.pid), time.monotonic()
            res = dnsperf_at(s.port, in_use, qfile, 0, duration, pin(load_cpus))
            busy = (cpu_seconds(s.proc.pid) - c0) / (time.monotonic() - t0)
            out.setdefault("saturation", {})[s.name] = {"qps": round(res["answered"] / duration),
                                                        "cpu_share": round(busy, 2)}
    return out


def print_hit_table(table: dict, duration: float, rounds: int, names: int = 1000) -> None:
    from .misscost import DNSDIST_NON_DEFAULT, NODECACHE_NON_DEFAULT, UNBOUND_NON_DEFAULT
    print(f"\ncache hits at fixed rates (dnsperf -Q, {names:,} cached names, {duration:g} s x {rounds} "
          f"alternating rounds, median; server CPU per answered query from /proc/PID/task/*/schedstat, split "
          f"into user and system by the /proc/PID/stat tick samples; latency from dnsperf -v, median run; "
          f"sysc/q: system calls per answered query, all threads, strace -f -c in a 2 s run of its own):")
    print(f"  {'rate/s':>7} {'server':18} {'answered/s':>10} {'cpu us/q':>9} {'user':>6} {'sys':>6} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7} {'runs':>22} {'x unbound':>9} {'x dnsdist':>9} "
          f"{'x best C':>8} {'x floor':>8} {'x baseline':>10} {'sysc/q':>6}")
    for rate, per in table.items():
        if rate == "saturation":
            continue
        cost = {name: e.get("cpu_us_per_query") for name, e in per.items()}
        peers = [c for name, c in cost.items() if name in ("unbound", "dnsdist") and c]
        best = min(peers) if peers else None
        for name, e in per.items():
            cpu = e["cpu_us_per_query"]
            ratio = lambda base: f"{cpu / base:.2f}" if base and cpu else "-"  # noqa: E731
            xb = f"{cpu / cost['nodecache@baseline']:.3f}" if cost.get("nodecache@baseline") and cpu \
                and name == "nodecache" else "-"
            lat = e.get("latency_ms") or {}
            runs = ",".join(f"{v:g}" for v in e["runs"])
            user, system = e.get("user_us"), e.get("sys_us")
            print(f"  {rate:>7} {name:18} {e['achieved']:>10} {cpu:>9} {'-' if user is None else user:>6} "
                  f"{'-' if system is None else system:>6} {lat.get('p50', '-'):>7} {lat.get('p99', '-'):>7} "
                  f"{lat.get('p99.9', '-'):>7} {runs:>22} {ratio(cost.get('unbound')):>9} "
                  f"{ratio(cost.get('dnsdist')):>9} {ratio(best):>8} {ratio(cost.get('bare uvloop')):>8} {xb:>10} "
                  f"{e.get('syscalls') if e.get('syscalls') is not None else '-':>6}")
    sat = table.get("saturation")
    if sat:
        print("  saturation (dnsperf closed loop, 64 in flight, same names; one core each): "
              + "; ".join(f"{name} {e['qps']:,} q/s at {e['cpu_share']:.0%} CPU" for name, e in sat.items()))
    if names > 8000:
        print("  nodecache's non-default settings: " + "; ".join(NODECACHE_NON_DEFAULT))
    print("  unbound's non-default settings: " + "; ".join(UNBOUND_NON_DEFAULT))
    if any("dnsdist" in per for per in table.values()):
        print("  dnsdist's non-default settings: " + "; ".join(DNSDIST_NON_DEFAULT))
