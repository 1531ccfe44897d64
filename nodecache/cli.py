"""Command line: ``nodecache run|check|demo|fake-upstream``.

Flags keep node-cache's single-dash spelling (``-conf``), which argparse
accepts as long options; ``--conf`` works too.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from . import __version__
from .config.corefile import CorefileError
from .config.plugins import load

EXIT_CONFIG = 2


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stdout,
                        format="[%(levelname)s] %(message)s")


def _run_loop(coro):
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; this is for odd platforms
        return asyncio.run(coro)
    return uvloop.run(coro)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodecache", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"nodecache {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve DNS as the Corefile says, until SIGTERM/SIGINT")
    run.add_argument("-conf", "--conf", default="Corefile", help="Corefile path (default ./Corefile)")
    run.add_argument("-debug", "--debug", action="store_true", help="debug logging")

    check = sub.add_parser("check", help="validate a Corefile and print the parsed chains")
    check.add_argument("-conf", "--conf", default="Corefile")

    demo = sub.add_parser("demo", help="run the agent against an emulated cluster DNS, on loopback")
    demo.add_argument("--quiet-log", action="store_true", help=argparse.SUPPRESS)

    fake = sub.add_parser("fake-upstream", help="serve the emulated cluster DNS")
    fake.add_argument("--listen", default="127.0.0.1:5300", help="ADDR:PORT (default 127.0.0.1:5300)")
    fake.add_argument("--domain", default="cluster.local")
    fake.add_argument("--services", type=int, default=100, help="svc-0..svc-N-1 per namespace")
    fake.add_argument("--ttl", type=int, default=30)
    fake.add_argument("--delay-ms", type=float, default=0.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "check":
        return cmd_check(args.conf)
    if args.command == "run":
        _setup_logging(args.debug)
        return cmd_run(args.conf)
    if args.command == "demo":
        from .demo import run_demo
        return _run_loop(run_demo())
    if args.command == "fake-upstream":
        _setup_logging(False)
        return _run_loop(fake_upstream(args))
    return 2


def _load_or_report(path: str):
    try:
        return load(path)
    except CorefileError as exc:
        print(f"nodecache: {exc}", file=sys.stderr)
        return None


def cmd_check(path: str) -> int:
    config = _load_or_report(path)
    if config is None:
        return EXIT_CONFIG
    print(describe(config))
    return 0


def describe(config) -> str:
    from .stages.base import ORDER
    lines = []
    for b in config.blocks:
        where = ", ".join(b.binds) or "all addresses"
        lines.append(f"{' '.join(b.zones)} port {b.port} on {where}  ({b.source})")
        chain = [name for name in ORDER if getattr(b, name, None)]
        lines.append("  chain: " + (" -> ".join(chain) or "(empty: REFUSED)"))
        if b.cache:
            c = b.cache
            lines.append(f"  cache: success {c.success.capacity} ttl {c.success.min_ttl}..{c.success.max_ttl}"
                         f", denial {c.denial.capacity} ttl {c.denial.min_ttl}..{c.denial.max_ttl}"
                         f", servfail {c.servfail_ttl:g}s"
                         + (f", prefetch {c.prefetch.amount}/{c.prefetch.duration:g}s/{c.prefetch.percentage}%"
                            if c.prefetch else "")
                         + (f", serve_stale {c.serve_stale.duration:g}s "
                            f"{'verify' if c.serve_stale.verify else 'immediate'}" if c.serve_stale else ""))
        if b.forward:
            f = b.forward
            proto = "tcp" if f.force_tcp else "udp (tcp on truncation)"
            lines.append(f"  forward {f.from_zone} -> {', '.join(map(str, f.to))} over {proto}, "
                         f"policy {f.policy}, expire {f.expire:g}s, max_fails {f.max_fails}"
                         + (f", except {' '.join(f.except_zones)}" if f.except_zones else "")
                         + (f", max_concurrent {f.max_concurrent}" if f.max_concurrent else ""))
    return "\n".join(lines)


def cmd_run(path: str) -> int:
    config = _load_or_report(path)
    if config is None:
        return EXIT_CONFIG
    return _run_loop(serve(config))


async def serve(config) -> int:
    from .server.agent import Agent, ListenError
    log = logging.getLogger("nodecache")
    agent = Agent(config)
    try:
        await agent.start()
    except ListenError as exc:
        log.error("%s", exc)
        await agent.stop(0)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("nodecache %s serving (%d server blocks)", __version__, len(config.blocks))
    await stop.wait()
    log.info("shutting down")
    await agent.stop()
    return 0


async def fake_upstream(args) -> int:
    from .fakeupstream import ClusterDNS, FakeUpstream
    host, _, port = args.listen.rpartition(":")
    server = FakeUpstream(ClusterDNS(args.domain, args.services, ttl=args.ttl).answer,
                          delay=args.delay_ms / 1000)
    await server.start(host.strip("[]"), int(port))
    logging.getLogger("nodecache").info("emulated cluster DNS for %s on %s:%d", args.domain,
                                        host, server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    return 0
