"""``python -m bench.abuse``: the agent's memory, and a well-behaved client's
latency, while one hostile client abuses it.

Each scenario runs against a fresh ``nodecache run`` (cache + forward over
TCP to an emulated cluster DNS, both on 127.0.0.1). The hostile client sends
from 127.0.0.1; the well-behaved client from 127.0.0.2 sends 200 queries/s
over UDP (90% cached names, 10% names never asked before) and one TCP query
a second, each with a 2 s timeout. Every load loop is bounded in time and
count. The agent runs pinned to CPU 0, everything else on CPU 1; the abuser
in a process of its own. Reported per scenario: the agent's VmRSS before,
its peak while the abuse runs (sampled every 100 ms) and the growth; the
good client's latency on cache hits (p50 / p99 / max) and on misses (p99:
this includes the shared upstream, which the abuser may load too) and its
failures (timeouts, SERVFAIL, REFUSED); what the abuser did.

Scenarios:
  tcp-hoard    one TCP connection pipelining cached queries, never reading a reply
  qtype-sweep  60,000 queries for one name with 60,000 distinct QTYPEs
  unique-flood unique names at 5,000/s whose upstream answers take 1 s
  big-answers  up to 20,000 distinct names with ~10 KB answers, fetched over TCP
  tcp-conns    3,000 idle TCP connections from one address
  everything   all of the above at once
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nodecache_bench.compare import _pin
from nodecache.emulated import client
from nodecache.dns.framing import frame
from nodecache.dns.wire import make_query, question_bytes

GOOD_SRC = "127.0.0.2"
SCENARIOS = ("idle", "tcp-hoard", "qtype-sweep", "unique-flood", "big-answers", "tcp-conns", "everything")
CACHED = [f"svc-{i}.default.svc.cluster.local" for i in range(300)]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Agent:
    def __init__(self, tmp: Path, extra: list[str]):
        self.up_port, self.port = client.free_port(), client.free_port()
        py = sys.executable
        self.up = subprocess.Popen([py, "-m", "nodecache", "fake-upstream", "--listen",
                                    f"127.0.0.1:{self.up_port}", "--services", "1000", "--ttl", "3600",
                                    "--slow", "flood=1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        conf = tmp / "Corefile"
        conf.write_text(f".:{self.port} {{\n    cache 3600\n    bind 127.0.0.1\n"
                        f"    forward . 127.0.0.1:{self.up_port} {{\n        force_tcp\n    }}\n}}\n")
        self.log = tmp / "agent.log"
        cpus = sorted(os.sched_getaffinity(0))
        self.proc = subprocess.Popen([py, "-m", "nodecache", "run", "-conf", str(conf), "-handoff=false",
                                      "-metrics-listen-address", "", "-status-socket", str(tmp / "st"), *extra],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     preexec_fn=_pin({cpus[0]}))

    async def ready(self) -> None:
        """Wait (at most 10 s) until the agent answers, then cache CACHED."""
        for _ in range(100):
            try:
                await client.udp("127.0.0.1", self.port, client.build(CACHED[0], 1), 0.5)
                break
            except (asyncio.TimeoutError, OSError):
                await asyncio.sleep(0.1)
        for i in range(0, len(CACHED), 50):
            await asyncio.gather(*(client.udp("127.0.0.1", self.port, client.build(n, 1), 2)
                                   for n in CACHED[i:i + 50]))

    def stop(self) -> None:
        for p in (self.proc, self.up):
            p.kill()
            p.wait(10)


async def _tcp_from(src: str, port: int, data: bytes, timeout: float) -> bytes:
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
        try:
            writer.write(frame(data))
            n = struct.unpack("!H", await reader.readexactly(2))[0]
            return await reader.readexactly(n)
        finally:
            writer.close()
    return await asyncio.wait_for(go(), timeout)


class GoodClient:
    def __init__(self, port: int):
        self.port = port
        self.latencies: list[float] = []
        self.miss_latencies: list[float] = []
        self.failures: dict[str, int] = {}

    def _fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1

    async def one(self, data: bytes, tcp: bool, miss: bool = False) -> None:
        t0 = time.monotonic()
        try:
            if tcp:
                reply = await _tcp_from(GOOD_SRC, self.port, data, 2.0)
            else:
                reply = await client.udp("127.0.0.1", self.port, data, 2.0, source=GOOD_SRC)
        except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            self._fail("timeout" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__)
            return
        (self.miss_latencies if miss else self.latencies).append(time.monotonic() - t0)
        rcode = reply[3] & 0xF
        if rcode in (2, 5):
            self._fail({2: "SERVFAIL", 5: "REFUSED"}[rcode])

    async def run(self, seconds: float, rate: float = 200.0) -> None:
        loop = asyncio.get_running_loop()
        tasks, start, i = [], loop.time(), 0
        while loop.time() - start < seconds:
            name = CACHED[i % len(CACHED)] if i % 10 else f"good-{i}-{os.getpid()}.example.com"
            tasks.append(loop.create_task(self.one(client.build(name, 1), tcp=False, miss=not i % 10)))
            if i % int(rate) == 0:
                tasks.append(loop.create_task(self.one(client.build(CACHED[i % 50], 1), tcp=True)))
            i += 1
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        await asyncio.gather(*tasks)

    def summary(self) -> tuple[float, float, float, float]:
        """Cache hits (UDP and TCP): p50, p99, max; misses: p99 (ms)."""
        lat = sorted(self.latencies) or [0.0]
        miss = sorted(self.miss_latencies) or [0.0]
        pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] * 1000  # noqa: E731
        return pick(lat, 0.5), pick(lat, 0.99), lat[-1] * 1000, pick(miss, 0.99)


# -- the abusers (each bounded by ``seconds``) --------------------------------
async def tcp_hoard(port: int, seconds: float) -> str:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    chunk = b"".join(frame(client.build(CACHED[i % 300], 1)) for i in range(100))
    sent, end, reset, pending = 0, time.monotonic() + seconds, "", b""
    while time.monotonic() < end:
        try:
            if not pending:
                pending, sent = chunk, sent + 100
            pending = pending[sock.send(pending):]
        except BlockingIOError:
            await asyncio.sleep(0.002)
        except OSError as exc:
            reset = f"; the agent closed the connection after {time.monotonic() - end + seconds:.1f} s ({exc.strerror})"
            break
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return f"{sent} queries sent, ~{sent * 75 / 2**20:.0f} MiB of replies asked for, none read{reset}"


async def _udp_spray(port: int, queries, rate: float, seconds: float) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    start, sent = time.monotonic(), 0
    for data in queries:
        if time.monotonic() - start > seconds:
            break
        try:
            sock.sendto(data, ("127.0.0.1", port))
        except BlockingIOError:
            pass
        sent += 1
        try:
            while True:
                sock.recv(65535)
        except BlockingIOError:
            pass
        if sent % 50 == 0:
            await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    sock.close()
    return sent


async def qtype_sweep(port: int, seconds: float) -> str:
    types = [t for t in range(1, 65536) if t not in (41, 251, 252)][:60000]
    q = (make_query(i & 0xFFFF, question_bytes("sweep.example.com", t)) for i, t in enumerate(types))
    sent = await _udp_spray(port, q, 60000 / max(seconds - 1, 1), seconds)
    return f"{sent} queries, one per QTYPE"


async def unique_flood(port: int, seconds: float) -> str:
    q = (client.build(f"flood.{i}.example.com", 1) for i in range(200000))
    return f"{await _udp_spray(port, q, 5000, seconds)} unique slow names"


async def big_answers(port: int, seconds: float) -> str:
    end, fetched = time.monotonic() + seconds, 0
    for batch in range(400):
        if time.monotonic() > end:
            break
        queries = [client.build(f"big-100.u{batch * 50 + i}.example.com", 16, do=0) for i in range(50)]
        try:
            replies = await client.tcp_many("127.0.0.1", port, queries, timeout=10)
            fetched += len(replies)
        except (OSError, asyncio.TimeoutError):
            pass
    return f"{fetched} distinct answers of ~10 KB fetched"


async def tcp_conns(port: int, seconds: float) -> str:
    socks, refused = [], 0
    for _ in range(3000):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError:
            refused += 1
        socks.append(s)
        if len(socks) % 100 == 0:
            await asyncio.sleep(0.01)
    await asyncio.sleep(max(0.0, seconds - 1))
    alive = 0
    for s in socks:
        try:
            alive += s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
        s.close()
    return f"3000 connections opened, {alive} still open at the end"


async def idle(port: int, seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "nothing"


async def everything(port: int, seconds: float) -> str:
    """Every abuse above at once: every cap full (the DaemonSet limit's worst case)."""
    done = await asyncio.gather(*(f(port, seconds) for f in (tcp_hoard, qtype_sweep, unique_flood,
                                                            big_answers, tcp_conns)))
    return "all at once: " + "; ".join(done)


ABUSERS = {"idle": idle, "everything": everything, "tcp-hoard": tcp_hoard, "qtype-sweep": qtype_sweep, "unique-flood": unique_flood,
           "big-answers": big_answers, "tcp-conns": tcp_conns}


async def _abuser_process(name: str, port: int, seconds: float) -> str:
    """The abuser runs in its own process, so it cannot stall the good client's loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.abuse", "--abuser", name, "--port", str(port),
        "--seconds", str(seconds), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
    if proc.returncode != 0:  # an abuser that did not run would make every figure meaningless
        raise RuntimeError(f"abuser {name} failed ({proc.returncode}): {err.decode()[-800:]}")
    return out.decode().strip()


async def scenario(name: str, seconds: float, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent(Path(tmp), extra)
        try:
            await agent.ready()
            await asyncio.sleep(0.5)
            before = rss_mib(agent.proc.pid)
            peak = [before]

            async def sample():
                while True:
                    peak[0] = max(peak[0], rss_mib(agent.proc.pid))
                    await asyncio.sleep(0.1)
            sampler = asyncio.get_running_loop().create_task(sample())
            good = GoodClient(agent.port)
            did, _ = await asyncio.gather(_abuser_process(name, agent.port, seconds), good.run(seconds + 1))
            await asyncio.sleep(0.5)
            sampler.cancel()
            alive = agent.proc.poll() is None
            p50, p99, worst, miss99 = good.summary()
            tracebacks = agent.log.read_text().count("Traceback")
            return {"scenario": name, "rss_before": before, "rss_peak": peak[0], "growth": peak[0] - before,
                    "p50": p50, "p99": p99, "max": worst, "miss_p99": miss99,
                    "answered": len(good.latencies) + len(good.miss_latencies),
                    "failures": good.failures, "did": did, "alive": alive, "tracebacks": tracebacks}
        finally:
            agent.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--agent-args", default="", help="extra `nodecache run` flags, space separated")
    ap.add_argument("--abuser", help=argparse.SUPPRESS)  # internal: run one abuser in this process
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.abuser:
        print(asyncio.run(ABUSERS[args.abuser](args.port, args.seconds)))
        return 0
    cpus = sorted(os.sched_getaffinity(0))
    _pin(set(cpus[1:]) or {cpus[0]})()  # the agent gets CPU 0 to itself (see Agent)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    for name in args.scenarios.split(","):
        rows.append(asyncio.run(scenario(name.strip(), args.seconds, args.agent_args.split())))
        r = rows[-1]
        print(f"{r['scenario']:13} rss {r['rss_before']:6.1f} -> peak {r['rss_peak']:6.1f} MiB "
              f"(+{r['growth']:5.1f}) | good client: {r['answered']} answered; hits p50 {r['p50']:.2f} ms, "
              f"p99 {r['p99']:.2f} ms, max {r['max']:.0f} ms; misses p99 {r['miss_p99']:.1f} ms; "
              f"failures {r['failures'] or 0} | "
              f"{'alive' if r['alive'] else 'DEAD'}, {r['tracebacks']} tracebacks | abuser: {r['did']}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
