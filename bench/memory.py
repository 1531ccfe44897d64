"""Resident memory of `nodecache run`: idle, and with every cache full.

Starts the agent on 127.0.0.1 with a Corefile of node-cache's shape (four
blocks), fills the caches through the real query path from an in-process
emulated upstream to 10,000 and then 100,000 entries, and reads VmRSS from
/proc at each step. Bounded: a fixed number of queries.

    .venv/bin/python -m bench.memory
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path


import uvloop

from nodecache.emulated import client
from nodecache.emulated.upstream import ClusterDNS, FakeUpstream


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _entries(status_socket: str) -> int:
    """Entries the agent holds, from its status socket (``nodecache probe``'s)."""
    from nodecache.run.status import read_status
    return read_status(status_socket, 5)["entries"]


async def fill(port: int, names: list[str], window: int = 200) -> None:
    sem = asyncio.Semaphore(window)

    async def one(name):
        async with sem:
            try:
                await client.udp("127.0.0.1", port, client.build(name, 1), 5)
            except (TimeoutError, OSError):
                pass
    await asyncio.gather(*(one(n) for n in names))


def traced_per_entry(n: int) -> tuple[float, float]:
    """(bytes per entry beyond its records, records bytes per entry), by
    tracemalloc, for ``n`` one-A-record entries inserted into one cache."""
    import tracemalloc
    from dnslib import QTYPE, RR, A, DNSRecord
    from nodecache.ttlcache.store import ByteBudget, Cache
    from nodecache.ttlcache.options import CacheClass, CacheConfig
    from nodecache.dns.reply import analyse
    from nodecache.dns.wire import RD, make_query, question_bytes, scan
    cache = Cache(CacheConfig(success=CacheClass(n, 3600, 5)), lambda: 100.0, ByteBudget(limit=10**10))
    prepared = []
    for i in range(n):
        name = f"svc-{i}.default.svc.cluster.local"
        query = make_query(1, question_bytes(name, QTYPE.A), RD, -1)
        rec = DNSRecord.parse(query).reply()
        rec.add_answer(RR(name, QTYPE.A, ttl=30, rdata=A("10.96.0.1")))
        prepared.append((scan(query)[0], analyse(rec.pack())))
    records = sum(len(reply.tail) + 33 for _, reply in prepared) / n  # the tail object the entry keeps
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for key, reply in prepared:
        cache.insert(key, reply)
    traced = (tracemalloc.get_traced_memory()[0] - base) / n + records
    tracemalloc.stop()
    return traced - records, records


async def main() -> int:
    for n in (10_000, 100_000):
        beyond, records = traced_per_entry(n)
        print(f"{n:>7,} entries in one cache (tracemalloc): {beyond:.0f} bytes per entry beyond its "
              f"records ({records:.0f} bytes of records each)")
    up = FakeUpstream(ClusterDNS(services=10_000).answer, record=False)
    up_port = await up.start()
    port = client.free_port()
    # node-cache's shape (cluster zone, reverse zones, the rest), the last
    # block big enough for the 100,000-entry step
    blocks = "".join(f"""{zone}:{port} {{
    cache {{
        success {cap} 3600
        denial 9984 3600
    }}
    bind 127.0.0.1
    forward . 127.0.0.1:{up_port}
}}
""" for zone, cap in (("cluster.local", 9984), ("in-addr.arpa", 9984), ("ip6.arpa", 9984), (".", 100_000)))
    steps = [("10,000 cluster names", [f"svc-{i}.default.svc.cluster.local" for i in range(9984)]
              + [f"nx-{i}.default.svc.cluster.local" for i in range(16)]),
             ("100,000 names in all", [f"w{i}.example.com" for i in range(90_000)])]
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "Corefile"
        conf.write_text(blocks)
        proc = subprocess.Popen([sys.executable, "-m", "nodecache", "run", "-conf", str(conf),
                                 "-handoff-dir", f"{tmp}/h", "-metrics-listen-address", "",
                                 "-status-socket", f"{tmp}/s", "-miss-rate-per-client", "0"],
                                stdout=subprocess.DEVNULL)  # one filling client: no per-client miss rate
        try:
            await asyncio.sleep(2)
            idle = rss_mib(proc.pid)
            print(f"nodecache run RSS: idle {idle:.1f} MiB (no interface or rules set up)")
            for what, names in steps:
                t0 = time.monotonic()
                await fill(port, names)
                cached = _entries(f"{tmp}/s")
                full = rss_mib(proc.pid)
                print(f"  {what} asked, {cached} entries cached ({time.monotonic() - t0:.0f} s to fill): {full:.1f} MiB, "
                      f"{(full - idle) * 1024 * 1024 / cached:.0f} bytes per entry, records included")
        finally:
            proc.terminate()
            proc.wait(10)
            await up.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(uvloop.run(main()))
