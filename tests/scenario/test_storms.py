"""A fleet polling a deleted Service (coredns/coredns#7922), whose NXDOMAIN
carries no SOA (not cacheable): with the storm guard the upstream sees a
bounded number of those questions and the fleet still gets NXDOMAIN (or a
truncated reply every other time, which a real client retries over TCP);
the well-behaved pods keep their answers (their p99 beside a quiet run's
is printed: a figure, not an assertion, on a shared machine).
Control: -storm-threshold 0 sends every poll upstream."""
from __future__ import annotations

import asyncio
import socket
import time

from dnslib import RCODE, DNSRecord

from nodecache.emulated.client import build
from nodecache.emulated.upstream import ClusterDNS
from nodecache.server.admission import Admission
from nodecache.server.storms import WINDOW
from nodecache_lab.harness import CLUSTER, node

DELETED = "deleted.default.svc.cluster.local."
FLEET, POLLS, RATE = 12, 100, 40.0     # pods polling the deleted Service: 100 polls each at 40/s (2.5 s: one window)
BOUND = FLEET * (10 + 1)               # what reaches upstream at most in one window with the guard (threshold 10)
CALM, CALM_QUERIES = 4, 120            # well-behaved pods


def _answer(data: bytes) -> bytes | None:
    req = DNSRecord.parse(data)
    if str(req.q.qname).lower() == DELETED:
        reply = req.reply(ra=1)
        reply.header.rcode = RCODE.NXDOMAIN  # no SOA: a denial nobody may cache (RFC 2308 §5)
        return reply.pack()
    return ClusterDNS().answer(data)


async def _pod(port: int, source: str, names: list[str], rate: float) -> list[tuple[float, int]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    out = []
    for i, name in enumerate(names):
        t0 = time.monotonic()
        await loop.sock_sendto(sock, build(name, 1, qid=i), ("127.0.0.1", port))
        reply = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
        out.append((time.monotonic() - t0, reply[2] & 0x02 and -1 or reply[3] & 0xF))  # -1: truncated
        await asyncio.sleep(1 / rate)
    sock.close()
    return out


async def _run(storm: bool, threshold: int):
    async with node(CLUSTER, answer=_answer, admission=Admission(storm_threshold=threshold)) as n:
        calm = [_pod(n.port, f"127.0.2.{i + 1}", [f"svc-{(i * 7 + k) % 60}.default.svc.cluster.local"
                                                   for k in range(CALM_QUERIES)], RATE * 1.5) for i in range(CALM)]
        fleet = [_pod(n.port, f"127.0.3.{i + 1}", [DELETED] * POLLS, RATE) for i in range(FLEET)] if storm else []
        results = await asyncio.gather(*calm, *fleet)
        upstream = sum(1 for s in n.up.seen if s.name == DELETED)
        contained = n.agent.admission.storms.contained
        return results[:CALM], results[CALM:], upstream, contained


def _p99(results) -> float:
    times = sorted(t for r in results for t, _ in r)
    return times[int(len(times) * 0.99)]


def test_a_fleet_polling_a_deleted_service_is_contained(capsys):
    asyncio.run(_run(False, 10))  # (warm: the first run of a process pays its imports)
    quiet, _, _, _ = asyncio.run(_run(False, 10))
    calm, fleet, upstream, contained = asyncio.run(_run(True, 10))
    assert all(code == 0 for r in calm for _, code in r)  # the well-behaved pods' answers
    assert all(code in (RCODE.NXDOMAIN, -1) for r in fleet for _, code in r)
    # at most threshold + 1 upstream exchanges per pod in the window the polls last
    assert upstream <= BOUND and contained > FLEET * POLLS // 2, (upstream, contained)
    quiet_p99, calm_p99 = _p99(quiet), _p99(calm)
    with capsys.disabled():
        print(f"\n  {FLEET} pods x {POLLS} polls: {upstream} reached upstream, {contained} answered at the node; "
              f"well-behaved p99 {1000 * calm_p99:.2f} ms (quiet run {1000 * quiet_p99:.2f} ms)")
    # (the calm pods' p99 beside the quiet run's is printed, not asserted: a latency target is a
    # measurement on a shared machine, not a unit test; docs/observability.md quotes the figures)


def test_control_without_the_guard_the_polls_go_upstream():
    """(The forwarder coalesces the polls that coincide: not every poll, but
    far more than the guard lets through.)"""
    _, fleet, upstream, contained = asyncio.run(_run(True, 0))
    assert contained == 0 and upstream > BOUND, upstream


def test_the_window_ends_and_the_question_goes_upstream_again():
    from nodecache.server.storms import StormGuard
    now = [0.0]
    guard = StormGuard(3, clock=lambda: now[0])
    for _ in range(3):
        guard.failed("10.0.0.1", b"k", RCODE.NXDOMAIN)
    assert guard.storming("10.0.0.1", b"k") == (RCODE.NXDOMAIN, False)
    assert guard.storming("10.0.0.1", b"k") == (RCODE.NXDOMAIN, True)  # every second one slips
    assert guard.storming("10.0.0.1", b"other") is None and guard.storming("10.0.0.2", b"k") is None
    now[0] = WINDOW
    assert guard.storming("10.0.0.1", b"k") is None and guard.contained == 2
