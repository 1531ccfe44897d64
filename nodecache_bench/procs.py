"""Real `nodecache run` processes on loopback and a load that accounts for
every query: shared by the handoff tests and bench/handoff.py.

Traffic goes only to 127.0.0.1; every load is bounded in time."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from nodecache.emulated.client import build
from nodecache.dns.framing import FrameReader, frame

CLI = [sys.executable, "-m", "nodecache"]
NAMES = [f"svc-{i}.{ns}.svc.cluster.local" for ns in ("default", "other") for i in range(100)]


def corefile(port: int, upstream: int, target: str = "", options: str = "force_tcp") -> str:
    """``target``: the forward's TO (default: 127.0.0.1:upstream); ``options``: its block."""
    return f"""cluster.local:{port} {{
    cache {{
        success 9984 3600
    }}
    bind 127.0.0.1
    forward . {target or f"127.0.0.1:{upstream}"} {{
        {options}
    }}
}}
"""


class AgentProc:
    def __init__(self, tmp: Path, conf: Path, handoff_dir: Path, n: int, *extra: str):
        self.log = tmp / f"agent{n}.log"
        self.status = tmp / f"agent{n}.status"
        self.proc = subprocess.Popen(CLI + ["run", "-conf", str(conf), "-handoff-dir", str(handoff_dir),
                                            "-drain", "2", "-handoff-grace", "0.3",
                                            "-metrics-listen-address", "",
                                            "-status-socket", str(self.status), *extra],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text()

    async def wait_for(self, needle: str, limit: float = 20.0) -> None:
        deadline = time.monotonic() + limit
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} within {limit}s:\n{self.text()}")
            await asyncio.sleep(0.02)

    async def terminate(self, limit: float = 15.0) -> int:
        self.proc.terminate()
        deadline = time.monotonic() + limit
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"agent did not exit on SIGTERM:\n{self.text()}")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, load: "Load"):
        self.load = load

    def datagram_received(self, data, addr):
        self.load.answered_udp(self, data)


class Load:
    """Open-loop UDP queries at ``qps`` over several sockets, plus a TCP client
    sending one query at a time and retrying on a closed connection (as
    RFC 7766 clients do). Every query is accounted for: answered, duplicate,
    error (non-NOERROR), or unanswered after ``patience`` seconds
    (``lost_sent_at``: when each unanswered query was sent, so a test can
    tell a query a killed process had in hand from one nobody read).
    ``misses``: the share of queries for a name never asked before (under
    cluster.local: the upstream must answer any name there)."""

    def __init__(self, port: int, qps: int = 5000, sockets: int = 8, patience: float = 3.0, misses: float = 0.0):
        self.port, self.qps, self.nsock, self.patience = port, qps, sockets, patience
        self.miss_every = round(1 / misses) if misses else 0
        self.pending: dict[tuple[int, int], float] = {}
        self.sent = self.answered = self.duplicates = self.errors = self.unanswered = 0
        self.tcp_sent = self.tcp_answered = self.tcp_retries = 0
        self.sent_times: list[float] = []
        self.lost_sent_at: list[float] = []
        self.latencies: list[tuple[float, float]] = []  # (sent at, latency)
        self.running = False

    def answered_udp(self, proto, data: bytes) -> None:
        key = (id(proto), data[0] << 8 | data[1])
        t = self.pending.pop(key, None)
        if t is None:
            self.duplicates += 1
            return
        self.answered += 1
        self.latencies.append((t, time.monotonic() - t))
        if data[3] & 0xF:
            self.errors += 1

    async def run(self, stop: asyncio.Event, limit: float) -> None:
        loop = asyncio.get_running_loop()
        socks = [await loop.create_datagram_endpoint(lambda: _Udp(self), remote_addr=("127.0.0.1", self.port))
                 for _ in range(self.nsock)]
        msgs = [build(n, 1, qid=0) for n in NAMES]
        self.running = True
        tcp = loop.create_task(self._tcp())
        start = time.monotonic()
        tick, i = 0.005, 0
        per_tick = max(1, int(self.qps * tick))
        next_at = start
        while not stop.is_set() and time.monotonic() - start < limit:
            for _ in range(per_tick):
                transport, proto = socks[i % self.nsock]
                qid = (i // self.nsock) & 0xFFFF
                key = (id(proto), qid)
                if key in self.pending:  # ID wrapped while outstanding: count it lost now
                    self.unanswered += 1
                    self.lost_sent_at.append(self.pending.pop(key))
                if self.miss_every and i % self.miss_every == 0:
                    m = build(f"m{i}-{int(start)}.miss.cluster.local", 1, qid=0)
                else:
                    m = msgs[i % len(msgs)]
                transport.sendto(qid.to_bytes(2, "big") + m[2:])
                now = time.monotonic()
                self.pending[key] = now
                self.sent_times.append(now)
                self.sent += 1
                i += 1
            next_at += tick
            await asyncio.sleep(max(0, next_at - time.monotonic()))
        self.running = False
        await asyncio.sleep(self.patience)
        self.unanswered += len(self.pending)
        self.lost_sent_at.extend(self.pending.values())
        await tcp
        for transport, _ in socks:
            transport.close()

    async def _tcp(self) -> None:
        i = 0
        reader = writer = None
        while self.running:
            name = NAMES[i % len(NAMES)]
            i += 1
            query = build(name, 28, qid=i & 0xFFFF)
            self.tcp_sent += 1
            for attempt in range(5):
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                        frames = FrameReader()
                    writer.write(frame(query))
                    got = None
                    while got is None:
                        chunk = await asyncio.wait_for(reader.read(4096), self.patience)
                        if not chunk:
                            raise ConnectionError("closed")
                        for msg in frames.feed(chunk):
                            got = msg
                    if got[3] & 0xF:
                        self.errors += 1
                    self.tcp_answered += 1
                    break
                except (OSError, ConnectionError, asyncio.TimeoutError):
                    self.tcp_retries += 1
                    if writer is not None:
                        writer.close()
                    reader = writer = None
            else:
                self.unanswered += 1
            await asyncio.sleep(0.01)
        if writer is not None:
            writer.close()
