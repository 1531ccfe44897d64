"""The load generator measures what the server does: known delay and loss,
stalls visible in open loop, the right query mix, the report's schema."""
import asyncio
import random
import time

import pytest

from nodecache.server import mmsg
from nodecache_bench.histogram import Histogram
from nodecache_bench.loadgen import Engine, Spec
from nodecache_bench.scenarios import NxDomain, PodLookups, QueryFile, Zipf, pod_plan
from nodecache_lab.fakes import run


class ScriptedServer(asyncio.DatagramProtocol):
    """Answers every query after ``delay`` seconds, drops a share ``loss``,
    and can stall everything for a while, or answer with a wrong ID."""

    def __init__(self, delay=0.0, loss=0.0, stall_at=None, stall_for=0.0, wrong_id=False, seed=1):
        self.delay, self.loss, self.wrong_id = delay, loss, wrong_id
        self.stall_at, self.stall_for = stall_at, stall_for
        self.rng = random.Random(seed)
        self.t0 = time.monotonic()
        self.received = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.received += 1
        if self.rng.random() < self.loss:
            return
        reply = bytearray(data)
        reply[2] |= 0x80
        if self.wrong_id:
            reply[0] ^= 0x55
        wait = self.delay
        now = time.monotonic() - self.t0
        if self.stall_at is not None and self.stall_at <= now < self.stall_at + self.stall_for:
            wait += self.stall_at + self.stall_for - now  # held until the stall ends
        asyncio.get_running_loop().call_later(wait, self.transport.sendto, bytes(reply), addr)


async def drive(server: ScriptedServer, **kw):
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        spec = Spec("127.0.0.1", port, **kw)
        return await Engine(spec).run()
    finally:
        transport.close()


@pytest.fixture(params=["batched", "uvloop"])
def udp_path(request, monkeypatch):
    """Both ways the generator does UDP: recvmmsg/sendmmsg batches, or uvloop's transport."""
    if request.param == "batched" and not mmsg.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    monkeypatch.setattr(mmsg, "available", lambda: request.param == "batched")
    return request.param


@pytest.mark.usefixtures("udp_path")
def test_closed_loop_keeps_its_window_and_loses_nothing():
    server = ScriptedServer()
    r = run(drive(server, mode="closed", concurrency=32, duration=1.0, sockets=1))
    assert r.answered > 1000 and r.answered == r.sent == server.received
    assert r.errors == 0 and r.lost == 0 and r.late == 0


@pytest.mark.usefixtures("udp_path")
def test_known_delay_and_loss_are_measured():
    r = run(drive(ScriptedServer(delay=0.010, loss=0.10), qps=1000, duration=2.0, timeout=0.5))
    assert 1900 <= r.sent <= 2100
    assert abs(r.lost / r.sent - 0.10) < 0.03 and r.lost + r.answered == r.sent
    assert 0.009 <= r.hist.percentile(50) <= 0.014  # 10 ms injected, ±1% histogram, loop jitter
    assert r.errors == 0 and r.late == 0


@pytest.mark.usefixtures("udp_path")
def test_open_loop_shows_a_200ms_stall():
    r = run(drive(ScriptedServer(stall_at=0.5, stall_for=0.2), qps=1000, duration=2.0))
    # ~10% of the queries were due during the stall: p99 must show it
    assert r.hist.percentile(99) >= 0.1, r.hist.percentile(99)
    assert r.hist.percentile(50) < 0.01


@pytest.mark.usefixtures("udp_path")
def test_closed_loop_counts_wrong_ids_as_errors():
    r = run(drive(ScriptedServer(wrong_id=True), mode="closed", concurrency=4, duration=1.0, timeout=0.2))
    assert r.answered == 0 and r.errors > 0 and r.lost > 0


def test_pod_plan_follows_glibc_search_rules():
    assert pod_plan("svc-1") == ["svc-1.default.svc.cluster.local.", "svc-1.svc.cluster.local.",
                                 "svc-1.cluster.local.", "svc-1."]
    assert pod_plan("www.example.com")[0] == "www.example.com.default.svc.cluster.local."
    assert pod_plan("www.example.com")[-1] == "www.example.com."
    assert pod_plan("a.b.c.d.e.f") == ["a.b.c.d.e.f.", "a.b.c.d.e.f.default.svc.cluster.local.",
                                       "a.b.c.d.e.f.svc.cluster.local.", "a.b.c.d.e.f.cluster.local."]
    assert pod_plan("fqdn.example.com.") == ["fqdn.example.com."]


def test_scenario_mixes():
    z = Zipf(names=100, s=1.0, seed=3)
    counts = {}
    for _ in range(20000):
        q = next(z)
        counts[q] = counts.get(q, 0) + 1
    top = counts[z.questions[0]] / 20000
    assert abs(top - 1 / sum(1 / k for k in range(1, 101))) < 0.02  # rank 1 ~ 19%
    nx = NxDomain(seed=1)
    assert len({next(nx) for _ in range(1000)}) == 1000
    kinds = [next(PodLookups(seed=s)) for s in range(200)]
    assert any(k.count(".") == 0 for k in kinds) and any(k.endswith("example.com") for k in kinds)


def test_query_file(tmp_path):
    f = tmp_path / "q.txt"
    f.write_text("# dnsperf format\nwww.example.com A\nexample.com AAAA\n\nx.example.com TYPE65\n")
    assert len(QueryFile(str(f)).questions) == 3
    f.write_text("www.example.com BOGUS\n")
    with pytest.raises(ValueError, match=r"q.txt:1: unknown type 'BOGUS'"):
        QueryFile(str(f))


def test_histogram_merges_and_is_accurate():
    a, b = Histogram(), Histogram()
    for i in range(1, 1001):
        (a if i % 2 else b).record(i / 1e4)
    a.merge(b)
    assert a.total == 1000 and abs(a.percentile(50) - 0.05) < 0.0006 and abs(a.percentile(99) - 0.099) < 0.001
    assert Histogram.from_dict(a.to_dict()).percentile(90) == a.percentile(90)
