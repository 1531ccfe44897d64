"""``python -m bench.fuzz``: a running agent under 1,000,000 hostile UDP
packets and a set of abusive TCP clients (not part of CI: about two minutes).

The agent (``nodecache run``, pinned to CPU 0, per-client limits lifted so
that every packet reaches the parsers; packets paced at ``--rate``, 8,000/s,
so that the agent reads them rather than the kernel dropping them) serves 127.0.0.1 in front of the
emulated cluster DNS. A fuzzer process sends, from a fixed seed:

* random bytes of random length (0..600),
* valid queries with 1-8 random byte flips,
* valid queries cut at a random point,
* crafted shapes: QR set, every opcode, qdcount 0/2/65535, answer/authority
  records in a query, compression pointers (also pointing at themselves),
  labels of 64+ bytes, names of 256+ bytes, OPT with a bad version, two OPTs,
  OPT with a huge rdlength, random QTYPE/QCLASS,

and TCP clients that: trickle partial frames, send oversized frames, send
garbage frames, open and abandon connections, half-close after pipelining.
Meanwhile a well-behaved client on 127.0.0.2 sends 100 queries/s.

Reported: packets sent, whether the agent is alive, tracebacks in its log,
its RSS before and after, and the good client's answers and latency.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import socket
import struct
import tempfile
import time
from pathlib import Path

from bench.abuse import CACHED, Agent, GoodClient, _pin, rss_mib

from nodecache.emulated import client
from nodecache.dns.framing import frame
from nodecache.dns.wire import make_query, question_bytes

SEEDS = [client.build(n, t, do=d) for n in CACHED[:20] + ["www.example.com", "a.b.c.d.example.org"]
         for t in (1, 28, 33, 16) for d in (-1, 0, 1)]


def crafted(rng: random.Random) -> bytes:
    q = bytearray(rng.choice(SEEDS))
    kind = rng.randrange(12)
    if kind == 0:
        q[2] |= 0x80                                   # a response
    elif kind == 1:
        q[2] = (q[2] & 0x87) | (rng.randrange(16) << 3)  # every opcode
    elif kind == 2:
        q[4:6] = rng.choice([b"\x00\x00", b"\x00\x02", b"\xff\xff"])
    elif kind == 3:
        q[6:10] = struct.pack("!HH", rng.randrange(3), rng.randrange(3))
    elif kind == 4:
        q[12:] = b"\xc0\x0c" + q[-4:]                  # a pointer to itself
    elif kind == 5:
        q[12:] = bytes([64]) + b"a" * 64 + b"\x00" + b"\x00\x01\x00\x01"
    elif kind == 6:
        q[12:] = (b"\x3f" + b"b" * 63) * 5 + b"\x00\x00\x01\x00\x01"
    elif kind == 7:
        q = bytearray(make_query(1, question_bytes("x.example", 1), do=0))
        q[-6] = rng.randrange(1, 256)                   # EDNS version
    elif kind == 8:
        q = bytearray(make_query(1, question_bytes("x.example", 1), do=1))
        q[11] = 2
        q += q[-11:]                                    # two OPTs
    elif kind == 9:
        q = bytearray(make_query(1, question_bytes("x.example", 1), do=0))
        q[-2:] = b"\xff\xff"                             # OPT rdlength past the end
    elif kind == 10:
        q[-4:] = struct.pack("!HH", rng.randrange(65536), rng.randrange(65536))
    else:
        q += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30)))  # trailing junk
    return bytes(q)


def hostile(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(601))
    q = bytearray(rng.choice(SEEDS))
    if kind == 1:
        for _ in range(rng.randrange(1, 9)):
            q[rng.randrange(len(q))] ^= rng.randrange(1, 256)
        return bytes(q)
    if kind == 2:
        return bytes(q[:rng.randrange(len(q))])
    return crafted(rng)


def udp_fuzzer(port: int, count: int, seconds: float, seed: int, rate: float) -> int:
    rng = random.Random(seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    start = time.monotonic()
    end, sent = start + seconds, 0
    while sent < count and time.monotonic() < end:
        if sent % 256 == 0:  # paced: packets the agent can read, not ones the kernel drops
            ahead = start + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        try:
            sock.sendto(hostile(rng), ("127.0.0.1", port))
            sent += 1
        except BlockingIOError:
            time.sleep(0.0005)
        if sent % 64 == 0:
            try:
                while True:
                    sock.recv(65535)
            except BlockingIOError:
                pass
    return sent


async def tcp_abusers(port: int, seconds: float) -> dict:
    rng = random.Random(7)
    counts = {"slowloris": 0, "oversized": 0, "garbage": 0, "abandoned": 0, "half-closed": 0}
    end = time.monotonic() + seconds

    async def one(kind: str) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
        except (OSError, asyncio.TimeoutError):
            return
        try:
            if kind == "slowloris":
                for b in frame(rng.choice(SEEDS))[:-1]:
                    if writer.is_closing() or reader.at_eof():
                        break  # the agent closed it: the point of the test
                    writer.write(bytes([b]))
                    await asyncio.sleep(0.5)
            elif kind == "oversized":
                writer.write(b"\xff\xff" + rng.randbytes(4000))
            elif kind == "garbage":
                writer.write(b"".join(frame(hostile(rng)) for _ in range(200)))
            elif kind == "half-closed":
                writer.write(b"".join(frame(rng.choice(SEEDS)) for _ in range(50)))
                writer.write_eof()
            await asyncio.wait_for(reader.read(1 << 20), 3)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
        counts[kind] += 1

    while time.monotonic() < end:
        await asyncio.gather(*(one(k) for k in counts))
    return counts


async def run(count: int, seconds: float, rate: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent(Path(tmp), ["-miss-rate-per-client", "0", "-max-inflight-per-client", "4096"])
        try:
            await agent.ready()
            before = rss_mib(agent.proc.pid)
            loop = asyncio.get_running_loop()
            good = GoodClient(agent.port)
            fuzz = loop.run_in_executor(None, udp_fuzzer, agent.port, count, seconds, 1, rate)
            t0 = time.monotonic()
            tcp = loop.create_task(tcp_abusers(agent.port, seconds))
            good_task = loop.create_task(good.run(seconds, rate=100))
            sent = await fuzz
            elapsed = time.monotonic() - t0
            good_task.cancel()
            tcp.cancel()
            await asyncio.sleep(1.0)
            alive = agent.proc.poll() is None
            after = rss_mib(agent.proc.pid) if alive else 0.0
            log = agent.log.read_text()
            p50, p99, worst, miss99 = good.summary()
            return {"sent": sent, "seconds": elapsed, "alive": alive, "tracebacks": log.count("Traceback"),
                    "errors_logged": log.count("[ERROR]"), "rss_before": before, "rss_after": after,
                    "good_answered": len(good.latencies) + len(good.miss_latencies),
                    "good_failures": good.failures, "p50": p50, "p99": p99, "max": worst,
                    "tcp": await _result(tcp)}
        finally:
            agent.stop()


async def _result(task):
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=180.0, help="bounds the run")
    ap.add_argument("--rate", type=float, default=8000.0, help="hostile packets per second")
    args = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    _pin(set(cpus[1:]) or {cpus[0]})()
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # our abusers write into closed connections
    r = asyncio.run(run(args.packets, args.seconds, args.rate))
    print(f"{r['sent']:,} hostile UDP packets in {r['seconds']:.0f} s ({r['sent'] / r['seconds']:,.0f}/s) "
          f"plus abusive TCP clients")
    print(f"agent: {'alive' if r['alive'] else 'DEAD'}, {r['tracebacks']} tracebacks in its log, "
          f"{r['errors_logged']} [ERROR] lines; RSS {r['rss_before']:.1f} -> {r['rss_after']:.1f} MiB")
    print(f"well-behaved client: {r['good_answered']} answered, failures {r['good_failures'] or 0}; "
          f"cache hits p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, max {r['max']:.0f} ms")
    return 0 if r["alive"] and not r["tracebacks"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
