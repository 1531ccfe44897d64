"""Resident memory of `nodecache run`: idle, and with every cache full.

Starts the agent on 127.0.0.1 with a Corefile of node-cache's shape (four
blocks, 9,984 success + 9,984 denial entries each at most), fills the
caches through the real query path from an in-process emulated upstream,
and reads VmRSS from /proc. Bounded: a fixed number of queries.

    .venv/bin/python -m nodecache_bench.memory
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path


import uvloop

from nodecache.testing import client
from nodecache.testing.fakeupstream import ClusterDNS, FakeUpstream


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def fill(port: int, names: list[str], window: int = 200) -> None:
    sem = asyncio.Semaphore(window)

    async def one(name):
        async with sem:
            try:
                await client.udp("127.0.0.1", port, client.build(name, 1), 5)
            except (TimeoutError, OSError):
                pass
    await asyncio.gather(*(one(n) for n in names))


async def main() -> int:
    up = FakeUpstream(ClusterDNS(services=10_000).answer, record=False)
    up_port = await up.start()
    port = client.free_port()
    blocks = "".join(f"""{zone}:{port} {{
    cache {{
        success 9984 3600
        denial 9984 3600
    }}
    bind 127.0.0.1
    forward . 127.0.0.1:{up_port}
}}
""" for zone in ("cluster.local", "in-addr.arpa", "ip6.arpa", "."))
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "Corefile"
        conf.write_text(blocks)
        proc = subprocess.Popen([sys.executable, "-m", "nodecache", "run", "-conf", str(conf),
                                 "-handoff-dir", f"{tmp}/h", "-metrics-listen-address", "",
                                 "-status-socket", f"{tmp}/s"], stdout=subprocess.DEVNULL)
        try:
            await asyncio.sleep(2)
            idle = rss_mib(proc.pid)
            names = ([f"svc-{i}.default.svc.cluster.local" for i in range(9984)]
                     + [f"nx-{i}.default.svc.cluster.local" for i in range(9984)]
                     + [f"{i % 250}.{i // 250}.96.10.in-addr.arpa" for i in range(9984)]
                     + [f"w{i}.example.com" for i in range(9984)]
                     + [f"nx{i}.invalid" for i in range(9984)])
            t0 = time.monotonic()
            await fill(port, names)
            full = rss_mib(proc.pid)
            print(f"nodecache run RSS: idle {idle:.1f} MiB; after {len(names)} distinct answers cached "
                  f"({time.monotonic() - t0:.0f} s to fill): {full:.1f} MiB "
                  f"(~{(full - idle) * 1024 * 1024 / len(names):.0f} bytes per entry)")
        finally:
            proc.terminate()
            proc.wait(10)
            await up.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(uvloop.run(main()))
