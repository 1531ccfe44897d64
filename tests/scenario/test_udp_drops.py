"""Dropped queries seen: a listener that stops reading (as a stalled event
loop does) while a flood arrives has its kernel drops counted in
nodecache_udp_receive_drops_total, makes readiness false while it keeps
overflowing, and ready again once it reads and the drops stop. Control:
the same stall and flood without the watch (node-local-dns's case): the
kernel drops as much, and nothing counts it or says so."""
from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

from prometheus_client.parser import text_string_to_metric_families

from nodecache.emulated.client import build
from nodecache.observe import udpdrops
from nodecache.run.metrics import exposition
from nodecache.run.status import Phase
from nodecache_lab.harness import CLUSTER, node
from test_observe import runtime_for

FLOOD_SECONDS = 4.5


def _flood(port: int, stop: threading.Event) -> None:
    """Datagrams to the listener for at most FLOOD_SECONDS (bounded)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    query = build("svc-1.default.svc.cluster.local", 1)
    end = time.monotonic() + FLOOD_SECONDS
    while not stop.is_set() and time.monotonic() < end:
        for _ in range(200):
            try:
                sock.sendto(query, ("127.0.0.1", port))
            except OSError:
                pass
        time.sleep(0.001)
    sock.close()


def _drops(rt) -> float:
    text = exposition(rt.dns_registry)[2].decode()
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "nodecache_udp_receive_drops"
               for s in f.samples)


async def _run(watching: bool):
    async with node(CLUSTER) as n:
        rt = await runtime_for(n)
        rt.enter(Phase.SERVING)
        udp = n.agent.listeners[0].udp
        loop = asyncio.get_running_loop()
        loop.remove_reader(udp.fd)  # the socket stays ours (fileno), nobody reads it: a stalled loop
        watch = loop.create_task(rt.watch_drops()) if watching else None
        stop = threading.Event()
        sender = threading.Thread(target=_flood, args=(n.port, stop))
        sender.start()
        unready = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < FLOOD_SECONDS - 0.5:
            await asyncio.sleep(0.25)
            unready.append(bool(rt.unready_reasons()))
        reasons = rt.unready_reasons()
        stop.set()
        sender.join(5)
        udp.use_batches(udp.batching)  # reading again: the reader is back on the loop
        await asyncio.sleep(2.5)  # the queue drains; a check without new drops
        after = rt.unready_reasons()
        drops = _drops(rt)
        kernel = udpdrops.read().get(os.fstat(udp.fd).st_ino, 0)
        if watch is not None:
            watch.cancel()
        rt.close()
        return any(unready), reasons, after, drops, kernel


def test_a_listener_that_overflows_is_counted_and_not_ready_until_it_reads_again():
    was_unready, reasons, after, drops, kernel = asyncio.run(_run(watching=True))
    assert 0 < drops <= kernel
    assert was_unready and any("udp receive queue of dns://127.0.0.1" in r for r in reasons), reasons
    assert after == []


def test_control_without_the_watch_the_drops_go_unseen():
    was_unready, _, after, drops, kernel = asyncio.run(_run(watching=False))
    assert kernel > 0  # the kernel dropped queries all the same
    assert drops == 0 and not was_unready and after == []
