"""A UDP flood on one listener never freezes the agent: every read has a
budget per wakeup, so the other listeners, TCP and the upstream's replies
keep their turn (with -udp-coalesce a poll used to read for as long as the
socket stayed full: 0 answers anywhere for seconds under a flood)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dnslib import QTYPE

from nodecache.server import mmsg, udppoll
from nodecache.emulated import client
from nodecache.emulated.client import build
from nodecache_lab.harness import node

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg not available here")

TWO_LISTENERS = """\
.:{{port}} {{{{
    cache 30
    bind 127.0.0.1
    forward . 127.0.0.1:{{up0}}
}}}}
.:{other} {{{{
    cache 30
    bind 127.0.0.1
    forward . 127.0.0.1:{{up0}}
}}}}
"""
# A bounded flood from another process: at most COUNT datagrams, at most SECONDS.
FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", int(sys.argv[1])))
q = bytes.fromhex(sys.argv[2])
end, n = time.monotonic() + float(sys.argv[3]), 0
while n < int(sys.argv[4]) and time.monotonic() < end:
    try:
        s.send(q)
    except OSError:
        pass
    n += 1
"""
# Another process asks the other listener (UDP hit, UDP miss: the upstream's
# reply, TCP hit) every 20 ms while the flood lasts; prints the worst time
# one of them took, or -1 for one unanswered within 3 s.
PROBE = """
import json, socket, struct, sys, time
sys.path.insert(0, sys.argv[3])
from nodecache.emulated.client import build
port, seconds = int(sys.argv[1]), float(sys.argv[2])
def udp(q):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3); s.sendto(q, ("127.0.0.1", port)); s.recv(65535)
def tcp(q):
    with socket.create_connection(("127.0.0.1", port), 3) as s:
        s.settimeout(3); s.sendall(struct.pack(">H", len(q)) + q); s.recv(65535)
worst, end, k = 0.0, time.monotonic() + seconds, 0
while time.monotonic() < end:
    k += 1
    for ask, q in ((udp, build("www.example.com", 1)), (udp, build(f"m{k}.example.com", 1)),
                   (tcp, build("www.example.com", 1))):
        t0 = time.monotonic()
        try:
            ask(q)
        except OSError:
            worst = -1.0
            break
        worst = max(worst, time.monotonic() - t0) if worst >= 0 else worst
    time.sleep(0.02)
print(json.dumps({"worst": worst, "rounds": k}))
"""
SECONDS, COUNT = 2.0, 400_000


async def _worst_latency_on_the_other_listener(budget: int, monkeypatch) -> float:
    monkeypatch.setattr(udppoll, "POLL_BUDGET", budget)
    other = client.free_port()
    async with node(TWO_LISTENERS.format(other=other), udp_coalesce=0.002) as n:
        flooded = next(lst for lst in n.agent.listeners if lst.port == n.port)
        dispatch = flooded.path.dispatch

        def slow_dispatch(data: bytes, proto, via, ref):  # 25 us a datagram: 40,000/s or more outruns the reader
            t = time.perf_counter() + 0.000025
            while time.perf_counter() < t:
                pass
            return dispatch(data, proto, via, ref)
        flooded.udp.dispatch = slow_dispatch
        cached = build("www.example.com", QTYPE.A)
        await client.udp("127.0.0.1", other, cached)
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(n.port), cached.hex(), str(SECONDS), str(COUNT)])
        probe = subprocess.Popen([sys.executable, "-c", PROBE, str(other), str(SECONDS - 0.4), str(ROOT)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            while probe.poll() is None:
                await asyncio.sleep(0.05)
            assert flooded.udp.polls, "the flooded socket was never polled"
        finally:
            flood.kill()
            flood.wait()
            probe.kill()
        result = json.loads(probe.stdout.read())
        assert result["rounds"] > 0
        return result["worst"] if result["worst"] >= 0 else float("inf")


async def test_a_flooded_listener_leaves_the_others_answering_within_100ms(monkeypatch):
    worst = await _worst_latency_on_the_other_listener(udppoll.POLL_BUDGET, monkeypatch)
    assert worst < 0.1, f"worst answer on the other listener took {worst * 1000:.0f} ms"


async def test_negative_control_an_unbounded_poll_freezes_the_agent(monkeypatch):
    worst = await _worst_latency_on_the_other_listener(10 ** 9, monkeypatch)
    assert worst > 0.3, f"the unbounded poll did not hold the loop ({worst * 1000:.0f} ms)"
