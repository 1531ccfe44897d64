"""Soak: one agent for a long time under mixed traffic and churn, sampled
so that leaks and slow growth show.

    python -m bench.soak --minutes 30 --plot bench/soak.png

A real `nodecache run` (node-cache's two-zone shape, the demo Corefile)
on 127.0.0.1 in front of an emulated cluster DNS, with at once:

* well-behaved "pods" on 127.0.0.2 over UDP: cached names (A/AAAA), names
  never asked before (misses, NXDOMAIN), and ndots:5 search-path walks for
  external names (``name.default.svc.cluster.local`` ... then ``name.``);
* a TCP client on the same address, one query at a time on a persistent
  connection, reconnecting as RFC 7766 clients do;
* a hostile client on 127.0.0.3: distinct misses far above its rate limit
  plus garbage datagrams (its replies are not counted; REFUSED is what it
  should get);
* churn: the cluster DNS "replica" replaced every ``--roll`` seconds (its
  connections reset, refused for a moment, a fresh one on the same
  address), a hot handoff to a new process every ``--handoff`` seconds, a
  Corefile change and reload (SIGUSR1) every ``--reload`` seconds.

Every ``--sample`` seconds: the serving agent's RSS and open fds (/proc),
its asyncio tasks, cache entries, memos and slow-path queries in flight
(its status socket), and the well-behaved queries' rate, p99 latency, lost
(no reply within 3 s) and failed (SERVFAIL, REFUSED, FORMERR: any rcode a
pod should not get) counts. Target: 0 lost, 0 failed; the command exits 1
otherwise. Traffic only to 127.0.0.0/8; bounded in time.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

from nodecache.demo import COREFILE
from nodecache.dns.framing import FrameReader, frame
from nodecache.run.status import read_status
from nodecache.emulated import client
from nodecache.emulated.client import build
from nodecache.emulated.upstream import ClusterDNS, FakeUpstream
from nodecache_bench.procs import AgentProc

POD, HOSTILE = "127.0.0.2", "127.0.0.3"
HITS = [f"svc-{i}.{ns}.svc.cluster.local" for ns in ("default", "other") for i in range(100)]
SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")
EXTERNAL = [f"host-{i}.example.com" for i in range(50)]
BAD_RCODES = (1, 2, 4, 5)  # FORMERR, SERVFAIL, NOTIMP, REFUSED: never right for these queries
PATIENCE = 3.0


class Window:
    """What the well-behaved clients saw in one sample interval."""

    def __init__(self):
        self.sent = self.answered = self.lost = self.failed = 0
        self.latencies: list[float] = []

    def p99_ms(self) -> float:
        if not self.latencies:
            return float("nan")
        values = sorted(self.latencies)
        return values[min(len(values) - 1, int(0.99 * len(values)))] * 1000


class _Pod(asyncio.DatagramProtocol):
    def __init__(self, load: "MixedLoad"):
        self.load, self.pending, self.qid = load, {}, 0

    def datagram_received(self, data, addr):
        sent = self.pending.pop(data[0] << 8 | data[1], None)
        if sent is not None:
            self.load.answered(sent, data[3] & 0xF)


class MixedLoad:
    def __init__(self, port: int, rate: int, hostile_rate: int, sockets: int = 8):
        self.port, self.rate, self.hostile_rate, self.nsock = port, rate, hostile_rate, sockets
        self.window, self.total = Window(), Window()
        self.hostile_sent = self.hostile_refused = self.tcp_reconnects = 0
        self.running = False
        self._miss = self._walk = 0

    def take_window(self) -> Window:
        window, self.window = self.window, Window()
        return window

    def _count(self, attr: str, n: int = 1) -> None:
        setattr(self.window, attr, getattr(self.window, attr) + n)
        setattr(self.total, attr, getattr(self.total, attr) + n)

    def answered(self, sent: float, rcode: int) -> None:
        self._count("answered")
        latency = time.monotonic() - sent
        self.window.latencies.append(latency)
        if rcode in BAD_RCODES:
            self._count("failed")

    def _next_query(self, i: int) -> bytes:
        """70% cached names, 10% never-asked names, 20% steps of a search walk."""
        pick = i % 10
        if pick < 7:
            return build(HITS[i % len(HITS)], 1 if i % 2 else 28, qid=0)
        if pick == 7:
            self._miss += 1
            return build(f"new-{self._miss}.default.svc.cluster.local", 1, qid=0)
        self._walk += 1
        name, step = EXTERNAL[(self._walk // 4) % len(EXTERNAL)], self._walk % 4
        return build(name if step == 3 else f"{name}.{SEARCH[step]}", 1, qid=0)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        socks = [await loop.create_datagram_endpoint(lambda: _Pod(self), local_addr=(POD, 0),
                                                     remote_addr=("127.0.0.1", self.port))
                 for _ in range(self.nsock)]
        self.running = True
        side = [loop.create_task(self._tcp()), loop.create_task(self._hostile()),
                loop.create_task(self._expire([p for _, p in socks]))]
        tick, i, next_at = 0.01, 0, time.monotonic()
        per_tick = max(1, round(self.rate * tick))
        while not stop.is_set():
            now = time.monotonic()
            for _ in range(per_tick):
                transport, pod = socks[i % self.nsock]
                pod.qid = (pod.qid + 1) & 0xFFFF
                if pod.qid in pod.pending:  # wrapped while still waiting: lost
                    del pod.pending[pod.qid]
                    self._count("lost")
                pod.pending[pod.qid] = now
                transport.sendto(pod.qid.to_bytes(2, "big") + self._next_query(i)[2:])
                self._count("sent")
                i += 1
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        self.running = False
        await asyncio.sleep(PATIENCE)
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        for transport, pod in socks:
            self._count("lost", len(pod.pending))
            transport.close()

    async def _expire(self, pods: list[_Pod]) -> None:
        while True:
            await asyncio.sleep(0.5)
            cutoff = time.monotonic() - PATIENCE
            for pod in pods:
                old = [q for q, t in pod.pending.items() if t < cutoff]
                for q in old:
                    del pod.pending[q]
                self._count("lost", len(old))

    async def _tcp(self) -> None:
        reader = writer = None
        i = 0
        while self.running:
            i += 1
            query = build(HITS[i % len(HITS)], 1, qid=i & 0xFFFF)
            self._count("sent")
            t0 = time.monotonic()
            for _ in range(5):
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(POD, 0))
                        frames = FrameReader()
                    writer.write(frame(query))
                    got = None
                    while got is None:
                        chunk = await asyncio.wait_for(reader.read(4096), PATIENCE)
                        if not chunk:
                            raise ConnectionError("closed")
                        got = next(iter(frames.feed(chunk)), None)
                    self.answered(t0, got[3] & 0xF)
                    break
                except (OSError, ConnectionError, asyncio.TimeoutError):
                    self.tcp_reconnects += 1
                    if writer is not None:
                        writer.close()
                    reader = writer = None
            else:
                self._count("lost")
            await asyncio.sleep(0.02)
        if writer is not None:
            writer.close()

    async def _hostile(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOSTILE, 0))
        sock.setblocking(False)
        tick, n, next_at = 0.01, 0, time.monotonic()
        try:
            while self.running:
                for _ in range(max(1, round(self.hostile_rate * tick))):
                    n += 1
                    data = (os.urandom(n % 40 + 2) if n % 10 == 0
                            else build(f"flood-{n}.other.svc.cluster.local", 1, qid=n & 0xFFFF))
                    try:
                        sock.sendto(data, ("127.0.0.1", self.port))
                        self.hostile_sent += 1
                    except OSError:
                        pass
                while True:
                    try:
                        reply = sock.recv(4096)
                    except BlockingIOError:
                        break
                    self.hostile_refused += (reply[3] & 0xF) == 5
                next_at += tick  # on a schedule, as the pods' load: a slow tick is caught up, the rate holds
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            sock.close()


def _proc(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open fds) of a process, from /proc."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    def __init__(self, args, tmp: Path):
        self.args, self.tmp = args, tmp
        self.samples: list[dict] = []
        self.events = {"roll": 0, "handoff": 0, "reload": 0}

    async def run(self) -> MixedLoad:
        args, tmp = self.args, self.tmp
        self.up = FakeUpstream(ClusterDNS(ttl=30).answer, record=False)
        self.up_port = await self.up.start("127.0.0.1", 0)
        port = client.free_port()
        self.conf = tmp / "Corefile"
        self.port = port
        self._write_corefile(0)
        self.limit = ("-miss-rate-per-client", f"{args.client_limit:g}",
                      *(() if args.forward_retry else ("-forward-retry=false",)))
        self.agent = AgentProc(tmp, self.conf, tmp / "handoff", 0, *self.limit)
        self.generation = 0
        load = MixedLoad(port, args.rate, args.hostile_rate)
        stop = asyncio.Event()
        try:
            await self.agent.wait_for("serving")
            traffic = asyncio.get_running_loop().create_task(load.run(stop))
            start = time.monotonic()
            due = {"roll": args.roll, "handoff": args.handoff, "reload": args.reload}
            next_sample = start + args.sample
            while time.monotonic() - start < args.minutes * 60:
                now = time.monotonic()
                for event, every in (("roll", args.roll), ("handoff", args.handoff), ("reload", args.reload)):
                    if every and now - start >= due[event]:
                        due[event] += every
                        await getattr(self, event)()
                        self.events[event] += 1
                if now >= next_sample:
                    next_sample += args.sample
                    await self._sample(now - start, load)
                await asyncio.sleep(0.05)
            stop.set()
            await traffic
            await self._sample(time.monotonic() - start, load)
        finally:
            self.agent.kill()
            await self.up.stop()
        return load

    def _write_corefile(self, n: int) -> None:
        text = COREFILE.format(port=self.port, upstream=self.up_port)
        self.conf.write_text(text.replace("cache 30", f"cache {30 + n % 2}"))  # a real change each reload

    async def roll(self) -> None:
        """The cluster DNS replica replaced: its connections reset, then a new one."""
        await self.up.stop()
        await asyncio.sleep(0.05)
        self.up = FakeUpstream(ClusterDNS(ttl=30).answer, record=False)
        await self.up.start("127.0.0.1", self.up_port)

    async def handoff(self) -> None:
        self.generation += 1
        heir = AgentProc(self.tmp, self.conf, self.tmp / "handoff", self.generation, *self.limit)
        await heir.wait_for("READY sent")
        old, self.agent = self.agent, heir
        await old.terminate()

    async def reload(self) -> None:
        self._write_corefile(self.events["reload"] + 1)
        os.kill(self.agent.proc.pid, signal.SIGUSR1)

    async def _sample(self, at: float, load: MixedLoad) -> None:
        window = load.take_window()
        pid = self.agent.proc.pid
        try:
            rss, fds = _proc(pid)
            status = await asyncio.to_thread(read_status, str(self.agent.status))
        except (OSError, ValueError):
            rss, fds, status = float("nan"), -1, {}
        row = {"t": at, "pid": pid, "rss": rss, "fds": fds, "tasks": status.get("tasks", -1),
               "entries": status.get("entries", -1), "memos": status.get("memos", -1),
               "inflight": status.get("slow_inflight", -1), "qps": window.answered / self.args.sample,
               "p99": window.p99_ms(), "lost": window.lost, "failed": window.failed}
        self.samples.append(row)
        print(f"{at:7.0f} {pid:>7} {rss:8.1f} {fds:5} {row['tasks']:6} {row['entries']:8} {row['memos']:6} "
              f"{row['inflight']:9} {row['qps']:7.0f} {row['p99']:8.2f} {window.lost:5} {window.failed:6}", flush=True)


def plot(samples: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    minutes = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 2, figsize=(11, 8), sharex=True)
    for ax, (key, label) in zip(axes.flat, (("rss", "RSS (MiB)"), ("fds", "open fds"), ("tasks", "asyncio tasks"),
                                           ("entries", "cache entries"), ("memos", "memos"),
                                           ("p99", "p99 latency (ms)"))):
        ax.plot(minutes, [s[key] for s in samples], marker=".")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("minutes")
    fig.suptitle("nodecache soak: one agent under mixed traffic, rolls, handoffs, reloads")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="how long (default 5; 30 for the record)")
    ap.add_argument("--rate", type=int, default=1500, help="well-behaved UDP queries/s (default 1500)")
    ap.add_argument("--hostile-rate", type=int, default=2000, help="the hostile client's datagrams/s (default 2000)")
    ap.add_argument("--client-limit", type=float, default=1000,
                    help="the agent's -miss-rate-per-client, below --hostile-rate so that the hostile client is "
                         "refused (default 1000; the product's default is 5000)")
    ap.add_argument("--no-forward-retry", dest="forward_retry", action="store_false",
                    help="run the agents with -forward-retry=false (the negative control: rolls fail queries)")
    ap.add_argument("--roll", type=float, default=120, help="seconds between cluster DNS rolls (0: none)")
    ap.add_argument("--handoff", type=float, default=180, help="seconds between hot handoffs (0: none)")
    ap.add_argument("--reload", type=float, default=150, help="seconds between Corefile reloads (0: none)")
    ap.add_argument("--sample", type=float, default=30, help="seconds between samples (default 30)")
    ap.add_argument("--plot", help="draw the samples to this PNG (needs matplotlib)")
    args = ap.parse_args(argv)
    for name in ("minutes", "rate", "sample"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name} must be positive")
    if min(args.hostile_rate, args.roll, args.handoff, args.reload) < 0:
        ap.error("rates and intervals cannot be negative")
    print(f"soak: {args.minutes:g} min, {args.rate} q/s from pods (70% cached, 10% new names, 20% search walks) "
          f"+ a TCP client, hostile {args.hostile_rate}/s; roll every {args.roll:g} s, handoff every "
          f"{args.handoff:g} s, reload every {args.reload:g} s")
    print(f"{'t (s)':>7} {'pid':>7} {'RSS MiB':>8} {'fds':>5} {'tasks':>6} {'entries':>8} {'memos':>6} "
          f"{'inflight':>9} {'q/s':>7} {'p99 ms':>8} {'lost':>5} {'failed':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        soak = Soak(args, Path(tmp))
        load = asyncio.run(soak.run())
    total, rows = load.total, soak.samples
    rss = [r["rss"] for r in rows if r["rss"] == r["rss"]]
    print(f"queries from pods: {total.sent} sent, {total.answered} answered, lost {total.lost}, failed "
          f"{total.failed}; TCP reconnects {load.tcp_reconnects}; hostile: {load.hostile_sent} sent, "
          f"{load.hostile_refused} REFUSED")
    print(f"events: {soak.events['roll']} rolls, {soak.events['handoff']} handoffs, {soak.events['reload']} reloads")
    if rss:
        print(f"RSS: first sample {rss[0]:.1f} MiB, max {max(rss):.1f}, last {rss[-1]:.1f}; "
              f"fds first {rows[0]['fds']}, max {max(r['fds'] for r in rows)}, last {rows[-1]['fds']}")
    if args.plot:
        try:
            plot(rows, args.plot)
            print(f"plot: {args.plot}")
        except ImportError:
            print("plot skipped: matplotlib is not installed (pip install matplotlib)")
    return 0 if total.lost == 0 and total.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
