"""TLS handshakes per 1,000 misses, with and without session resumption.

``nodecache-bench handshakes``: one forwarder in this process sends names
never asked before at a fixed rate to a real unbound (or dnsdist) over DoT
and DoH (nodecache_bench.tlsup), its connections recycled every
``--expire`` seconds (CoreDNS's and our default is 10 s; a short one makes
many handshakes in a short run). Per 1,000 misses: full and resumed
handshakes, and this process's CPU (``time.process_time``: user + system,
exact), with resumption on and, as the control, off. Bounded in
count and time; traffic to 127.0.0.1 only.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import uvloop

from nodecache.dns import key as K
from nodecache.dns.wire import encode_name
from nodecache.upstream.forwarder import Forwarder
from nodecache.upstream.options import ForwardConfig, TlsFiles, Upstream
from . import tlsup

HANDSHAKES = 100


def _forwarder(port: int, proto: str, ca: Path, resume: bool, **options) -> Forwarder:
    """A forwarder to the one TLS upstream on ``port``, resuming sessions or not."""
    fwd = Forwarder(ForwardConfig(".", (Upstream("127.0.0.1", port, proto),), tls=TlsFiles(ca=str(ca)),
                                  tls_servername=tlsup.SERVER_NAME, **options))
    fwd.upstreams[0].pool.resume = resume
    return fwd


async def _run(port: int, proto: str, ca: Path, rate: int, seconds: float, expire: float, resume: bool) -> dict:
    fwd = _forwarder(port, proto, ca, resume, expire=expire)
    pool = fwd.upstreams[0].pool
    loop = asyncio.get_running_loop()
    tag = f"{proto}{int(resume)}{os.getpid()}{int(loop.time() * 1000) % 100000}"
    tasks, failed = [], 0
    try:
        await fwd.resolve(K.make(encode_name(f"warm.{tag}.example."), 1))  # the first handshake: not counted
        first = pool.handshakes + pool.resumed
        before = time.process_time()
        start = loop.time()
        for i in range(int(rate * seconds)):
            tasks.append(loop.create_task(fwd.resolve(K.make(encode_name(f"m{i}.{tag}.example."), 1))))
            delay = start + (i + 1) / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            failed += isinstance(result, Exception)
        cpu = time.process_time() - before
    finally:
        fwd.close()
    n = len(tasks)
    return {"misses": n, "failed": failed, "full": pool.handshakes - first,  # (the warm-up one was full)
            "resumed": pool.resumed, "opened": pool.opened - 1, "cpu_us_per_miss": cpu / n * 1e6}


async def _handshake_cpu(port: int, proto: str, ca: Path, n: int, resume: bool) -> tuple[float, int]:
    """This process's CPU per new connection (TCP connect + TLS handshake
    (+ HTTP/2 preface), closed again), opened one after another; and how
    many of the n resumed the session."""
    fwd = _forwarder(port, proto, ca, resume)
    pool = fwd.upstreams[0].pool
    try:
        await fwd.resolve(K.make(encode_name("warm.example."), 1))  # a full handshake, and a session
        resumed = pool.resumed
        before = time.process_time()
        for _ in range(n):
            channel = await pool.open(5.0)
            channel.retired = True
            channel._maybe_close()
        return (time.process_time() - before) / n * 1e6, pool.resumed - resumed
    finally:
        fwd.close()


def main(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pki = tlsup.make_pki(tmp / "pki")
        print(f"TLS handshakes per 1,000 misses: {args.rate}/s for {args.duration:g} s per run, connections "
              f"recycled every {args.expire:g} s, names never asked before; CPU: this process (user+system)")
        print(f"  {'server':8} {'proto':6} {'resumption':10} {'misses':>7} {'failed':>6} {'conns':>6} "
              f"{'full/1k':>8} {'resumed/1k':>10} {'cpu us/miss':>11}")
        with tlsup.tls_servers(tmp, pki) as servers:
            for name, server in servers.items():
                for proto in ("tls", "https"):
                    for resume in (True, False):
                        r = uvloop.run(_run(server.ports[proto], proto, pki.ca, args.rate, args.duration,
                                            args.expire, resume))
                        per_k = 1000 / r["misses"]
                        print(f"  {name:8} {proto:6} {'on' if resume else 'off':10} {r['misses']:7d} "
                              f"{r['failed']:6d} {r['opened']:6d} {r['full'] * per_k:8.2f} "
                              f"{r['resumed'] * per_k:10.2f} {r['cpu_us_per_miss']:11.1f}")
            print(f"\nCPU of this process per new connection (time.process_time; {HANDSHAKES} opened one after another and closed; "
                  f"TCP connect, TLS handshake with verification, HTTP/2 preface for DoH):")
            print(f"  {'server':8} {'proto':6} {'full us':>8} {'resumed us':>10} {'resumed/full':>12} {'resumed':>8}")
            for name, server in servers.items():
                for proto in ("tls", "https"):
                    full, _ = uvloop.run(_handshake_cpu(server.ports[proto], proto, pki.ca, HANDSHAKES, False))
                    short, n = uvloop.run(_handshake_cpu(server.ports[proto], proto, pki.ca, HANDSHAKES, True))
                    print(f"  {name:8} {proto:6} {full:8.0f} {short:10.0f} {short / full:12.2f} "
                          f"{n:>4}/{HANDSHAKES}")
    return 0
