"""Hot-path cost of a cache hit, in CPU microseconds per query.

1. Through the real handler, no sockets: ``QueryPath.dispatch`` on a warm cache,
   the exact code a UDP datagram runs (scan, route, LRU touch, render),
   measured with this process's user CPU.
2. Through a real UDP socket: the server runs as its own process
   (``nodecache run``), a client in this process keeps a window of queries
   in flight over loopback, and the server's own CPU accounting
   (/proc/PID/stat utime+stime) is divided by the queries it answered.
   Side by side in the same run: a bare uvloop UDP responder (the floor for
   any Python server: receive, copy an ID, send) and, when installed,
   unbound as a cache in front of the same upstream. Ratios are to nodecache.

Bounded: every phase has a query count and a time limit. Traffic only to
127.0.0.1.

    .venv/bin/python -m bench.hotpath [--queries N] [--names K] [--rounds R]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path


from nodecache.emulated.client import build, free_port
from nodecache.config.parse import parse_config
from nodecache.emulated.upstream import ClusterDNS, FakeUpstream
from nodecache.server.agent import Agent
from nodecache_bench.hitcost import BARE

CLK = os.sysconf("SC_CLK_TCK")


def names(k: int) -> list[str]:
    return [f"svc-{i % 100}.{('default', 'other', 'kube-system')[i // 100 % 3]}.svc.cluster.local"
            for i in range(k)]


# -- 1. handler only -------------------------------------------------------
async def handler_only(queries: int, k: int) -> dict:
    up = FakeUpstream(ClusterDNS().answer)
    up_port = await up.start()
    port = free_port()
    agent = Agent(parse_config(textwrap.dedent(f"""\
        cluster.local:{port} {{
            cache {{
                success 9984 30
                denial 9984 5
            }}
            bind 127.0.0.1
            forward . 127.0.0.1:{up_port} {{
                force_tcp
            }}
        }}
        .:{port} {{
            cache 30
            bind 127.0.0.1
            forward . 127.0.0.1:{up_port}
        }}""")))
    await agent.start()
    from nodecache.emulated import client
    msgs = [build(n, 1, qid=i) for i, n in enumerate(names(k))]
    for m in msgs:
        await client.udp("127.0.0.1", port, m)
    listener = agent.listeners[0]
    from nodecache.server.querypath import Fixed
    via = Fixed(lambda reply, addr: None)

    def fast(m):  # the full hit path: over "tcp", so no memo answers it
        return listener.path.dispatch(m, "tcp", via, ("127.0.0.1", 5300))
    reps = max(1, queries // len(msgs))
    for m in msgs:
        assert fast(m).__class__ is bytes, "cache not warm"

    # The UDP transport's handler with the kernel left out: the batched
    # transport's one-datagram read (server.udpbatch: what a node below
    # 12,000 q/s runs) fed from a list, its send a no-op; uvloop's
    # transport (server.udp) where batching is not available.
    udp = listener.udp
    addr = ("127.0.0.1", 5300)
    current = [b""]
    batched = hasattr(udp, "readable_one")
    if batched:
        udp.stop_reading()
        real = udp.recvfrom_into, udp.sendto

        def receive(buffer):
            buffer[:len(current[0])] = current[0]
            return len(current[0]), addr
        udp.recvfrom_into, udp.sendto = receive, (lambda data, to: None)

        def handler(m):
            current[0] = m
            udp.readable_one()
    else:
        class Sink:
            def sendto(self, data, to):
                pass
        real, udp.transport = udp.transport, Sink()

        def handler(m):
            udp.datagram_received(m, addr)
    out = {}
    # what the transport runs (the memoised reply after the first pass),
    # and the full hit path (scan, route, cache, render, count) it avoids
    for name, call in (("udp handler", handler), ("full hit path", fast)):
        t0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        w0 = time.perf_counter()
        for _ in range(reps):
            for m in msgs:
                call(m)
        user = resource.getrusage(resource.RUSAGE_SELF).ru_utime - t0
        wall = time.perf_counter() - w0
        n = reps * len(msgs)
        out[name] = {"queries": n, "user_us": user / n * 1e6, "wall_us": wall / n * 1e6}
    if batched:
        udp.recvfrom_into, udp.sendto = real
    else:
        udp.transport = real
    await agent.stop(0.5)
    await up.stop()
    return out


# -- 2. real sockets -------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def drive(port: int, msgs: list[bytes], total: int, window: int = 64, limit_s: float = 60) -> tuple[int, float]:
    """Keep ``window`` queries in flight; returns (answered, seconds)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(1.0)
    sent = answered = 0
    t0 = time.perf_counter()
    for _ in range(window):
        sock.send(msgs[sent % len(msgs)])
        sent += 1
    while answered < total and time.perf_counter() - t0 < limit_s:
        try:
            sock.recv(4096)
        except TimeoutError:
            for _ in range(window):  # refill after loss
                sock.send(msgs[sent % len(msgs)])
                sent += 1
            continue
        answered += 1
        if sent < total:
            sock.send(msgs[sent % len(msgs)])
            sent += 1
    elapsed = time.perf_counter() - t0
    sock.close()
    return answered, elapsed


def wait_ready(port: int, msg: bytes, limit: float = 20) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        sock.sendto(msg, ("127.0.0.1", port))
        try:
            sock.recv(4096)
            return
        except (TimeoutError, ConnectionRefusedError):
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} never answered")


def measure(proc: subprocess.Popen, port: int, msgs: list[bytes], queries: int) -> dict:
    wait_ready(port, msgs[0])
    drive(port, msgs, len(msgs) * 3)  # warm: every name cached
    c0 = cpu_seconds(proc.pid)
    answered, secs = drive(port, msgs, queries)
    cpu = cpu_seconds(proc.pid) - c0
    return {"answered": answered, "qps": answered / secs, "cpu_us": cpu / answered * 1e6}


def socket_runs(queries: int, k: int, tmp: Path, rounds: int) -> dict[str, dict]:
    py = sys.executable
    msgs = [build(n, 1, qid=i) for i, n in enumerate(names(k))]
    up_port = free_port()
    procs = [subprocess.Popen([py, "-m", "nodecache", "fake-upstream", "--listen", f"127.0.0.1:{up_port}"],
                              stdout=subprocess.DEVNULL)]
    results = {}
    try:
        wait_ready(up_port, msgs[0])
        port = free_port()
        core = tmp / "Corefile"
        core.write_text(f".:{port} {{\n cache 30\n bind 127.0.0.1\n forward . 127.0.0.1:{up_port}\n}}\n")
        servers = [("nodecache", [py, "-m", "nodecache", "run", "-conf", str(core),
                                  "-handoff-dir", str(tmp / "handoff"), "-metrics-listen-address", "",
                                  "-status-socket", str(tmp / "status.sock")], port)]
        bare_port = free_port()
        wait_ready(up_port, msgs[0])
        reply = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        reply.settimeout(2)
        reply.sendto(msgs[0], ("127.0.0.1", up_port))
        servers.append(("bare uvloop responder", [py, "-c", BARE, str(bare_port), reply.recv(4096).hex()],
                        bare_port))
        reply.close()
        if shutil.which("unbound"):
            from nodecache_bench.misscost import unbound_command
            ub_port = free_port()
            servers.append(("unbound", unbound_command(tmp, ub_port, up_port), ub_port))
        running = []
        for name, cmd, sport in servers:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            running.append((name, proc, sport))
        samples: dict[str, list[dict]] = {name: [] for name, _, _ in running}
        for _ in range(rounds):  # alternate servers, so drift hits all alike
            for name, proc, sport in running:
                samples[name].append(measure(proc, sport, msgs, queries))
        for name, runs in samples.items():
            runs.sort(key=lambda r: r["cpu_us"])
            results[name] = runs[len(runs) // 2]  # the median run
            results[name]["spread"] = (runs[0]["cpu_us"], runs[-1]["cpu_us"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=200_000)
    ap.add_argument("--names", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is shown")
    args = ap.parse_args()
    import uvloop
    h = uvloop.run(handler_only(args.queries * 5, args.names))
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"1. handler only (warm cache, {args.names} names, user CPU per hit):")
    for name, r in h.items():
        print(f"   {name:18} {r['user_us']:.2f} us ({r['wall_us']:.2f} us wall, {r['queries']} hits)")
    with tempfile.TemporaryDirectory() as tmp:
        res = socket_runs(args.queries, args.names, Path(tmp), args.rounds)
    base = res["nodecache"]["cpu_us"]
    print(f"2. real UDP socket on loopback, {args.queries} cached queries per run, window 64, "
          f"server CPU (user+sys) per answered query, median of {args.rounds} alternating runs:")
    print(f"   {'server':24} {'answered':>9} {'qps':>9} {'cpu us/q':>9} {'min..max':>13} {'vs nodecache':>12}")
    for name, r in res.items():
        lo, hi = r["spread"]
        print(f"   {name:24} {r['answered']:9d} {r['qps']:9.0f} {r['cpu_us']:9.2f} "
              f"{lo:6.2f}..{hi:<6.2f} {r['cpu_us'] / base:12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
