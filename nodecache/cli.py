"""Command line: ``nodecache run|check|demo|fake-upstream``.

Flags keep node-cache's single-dash spelling (``-conf``), which argparse
accepts as long options; ``--conf`` works too.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from . import __version__
from .config.corefile import CorefileError
from .config.plugins import load

EXIT_CONFIG = 2


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _setup_logging(debug: bool, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("[%(levelname)s] %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler])


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

    run = sub.add_parser("run", help="serve DNS as the Corefile says, until SIGTERM/SIGINT",
                         description="Flags are node-cache's, so its DaemonSet args work unchanged.")
    run.add_argument("-conf", "-corefile", "--conf", dest="conf", default="Corefile",
                     help="Corefile to serve (default ./Corefile); node-cache's -corefile too")
    run.add_argument("-basecorefile", default="/etc/coredns/Corefile.base",
                     help="node-cache template; when it exists it is used instead of -conf")
    run.add_argument("-localip", default="", help="comma-separated IPs for the interface and rules")
    run.add_argument("-interfacename", default="nodelocaldns")
    run.add_argument("-setupinterface", type=go_bool, nargs="?", const=True, default=True)
    run.add_argument("-setupiptables", type=go_bool, nargs="?", const=True, default=True)
    run.add_argument("-setupebtables", type=go_bool, nargs="?", const=True, default=False,
                     help="accepted for compatibility; ebtables is not supported")
    run.add_argument("-syncinterval", type=go_seconds, default=60.0, help="reconcile period (s)")
    run.add_argument("-watch-node", dest="watch_node", type=go_bool, nargs="?", const=True, default=True,
                     help="also reconcile at once when netlink reports our interface, an address or a rule "
                          "removed (node-cache's teardown during a migration); false: only every "
                          "-syncinterval (default true)")
    run.add_argument("-initialdelay", type=go_seconds, default=0.0,
                     help="accepted for compatibility; rules are set once listeners serve")
    run.add_argument("-health-port", dest="health_port", type=int, default=8080)
    run.add_argument("-skipteardown", type=go_bool, nargs="?", const=True, default=False)
    run.add_argument("-failopen", type=go_bool, nargs="?", const=True, default=True,
                     help="NOTRACK pod DNS only while the agent's socket is bound, so a dead agent's "
                          "traffic falls through to kube-proxy / a fallback DNAT (default true)")
    run.add_argument("-rules", default="auto", choices=("auto", "iptables", "nftables"),
                     help="how to write the NOTRACK rules: iptables, native nftables (a table of our own), "
                          "or auto: nftables where kube-proxy has its nftables tables, else iptables "
                          "(default auto; -setupiptables=false writes none)")
    run.add_argument("-pidfile", default="")
    run.add_argument("-metrics-listen-address", dest="metrics_listen", default="0.0.0.0:9353")
    run.add_argument("-upstreamsvc", default="kube-dns",
                     help="service whose <NAME>_SERVICE_HOST fills __PILLAR__CLUSTER__DNS__")
    run.add_argument("-kubednscm", default="", help="directory of the kube-dns ConfigMap")
    run.add_argument("-dns.port", dest="dns_port", type=int, default=53)
    run.add_argument("-configsync", type=go_seconds, default=10.0,
                     help="how often templates and ConfigMap are re-read (s)")
    run.add_argument("-handoff", type=go_bool, nargs="?", const=True, default=True,
                     help="take over from a running agent at the handoff socket (default true)")
    run.add_argument("-handoff-dir", dest="handoff_dir", default="/run/nodecache")
    run.add_argument("-handoff-grace", dest="handoff_grace", type=go_seconds, default=10.0,
                     help="after a handoff, how long the old agent stays able to resume if the new one "
                          "dies (s)")
    run.add_argument("-max-inflight", dest="max_inflight", type=int, default=4096,
                     help="queries not answered from the cache that may be in progress at once; "
                          "more are REFUSED (default 4096)")
    run.add_argument("-max-inflight-per-client", dest="max_inflight_per_client", type=int, default=512,
                     help="the share of -max-inflight one client address may hold (default 512)")
    run.add_argument("-miss-rate-per-client", dest="miss_rate_per_client", type=float, default=5000.0,
                     help="queries per second one client address may send that are not cache hits; "
                          "more are REFUSED; 0: no limit (default 5000)")
    run.add_argument("-cache-bytes", dest="cache_bytes", type=_size, default=64 << 20,
                     help="bytes all caches together may hold (records + ~400 B per entry); "
                          "oldest unused entries go first (default 64Mi)")
    run.add_argument("-cache-max-item", dest="cache_max_item", type=_size, default=16 << 10,
                     help="a reply whose records exceed this is served but not cached (default 16Ki)")
    run.add_argument("-drain", type=go_seconds, default=5.0,
                     help="how long in-flight queries may finish on shutdown or handoff (s)")
    run.add_argument("-cache-file", dest="cache_file", default="",
                     help="save the cache here on shutdown and load it on a cold start")
    run.add_argument("-status-socket", dest="status_socket", default="/tmp/nodecache.status.sock",
                     help="where `nodecache probe` asks this process for its state")
    run.add_argument("-log-format", dest="log_format", choices=("text", "json"), default="text")
    run.add_argument("-debug", "--debug", action="store_true", help="debug logging")

    probe = sub.add_parser("probe", help="exec probe: exit 0 if the agent is alive / ready")
    probe.add_argument("what", choices=("live", "ready"))
    probe.add_argument("-status-socket", dest="status_socket", default="/tmp/nodecache.status.sock")

    handoff = sub.add_parser("handoff", help="hot handoff tools")
    hsub = handoff.add_subparsers(dest="handoff_command", required=True)
    status = hsub.add_parser("status", help="which process holds the sockets")
    status.add_argument("-handoff-dir", dest="handoff_dir", default="/run/nodecache")
    reload_ = hsub.add_parser("reload", help="start a successor with the running agent's command "
                                             "line and wait until it took over (systemd ExecReload)")
    reload_.add_argument("-handoff-dir", dest="handoff_dir", default="/run/nodecache")
    reload_.add_argument("-timeout", type=float, default=30.0)

    check = sub.add_parser("check", help="validate a Corefile and print the parsed chains")
    check.add_argument("-conf", "--conf", default="Corefile")

    demo = sub.add_parser("demo", help="run the agent against an emulated cluster DNS, on loopback")
    demo.add_argument("--bench", type=float, default=10.0, help="seconds of nodecache-bench at the end (0: none)")

    fake = sub.add_parser("fake-upstream", help="serve the emulated cluster DNS")
    fake.add_argument("--listen", default="127.0.0.1:5300", help="ADDR:PORT (default 127.0.0.1:5300)")
    fake.add_argument("--domain", default="cluster.local")
    fake.add_argument("--services", type=int, default=100, help="svc-0..svc-N-1 per namespace")
    fake.add_argument("--ttl", type=int, default=30)
    fake.add_argument("--delay-ms", type=float, default=0.0)
    fake.add_argument("--slow", default="", metavar="PREFIX=MS",
                      help="answer names whose first label is PREFIX after MS milliseconds (a slow zone)")
    fake.add_argument("--log-queries", default="", help="append 'proto client qtype name' per query to FILE")
    return p


def _size(text: str) -> int:
    """A byte count: 65536, 64Ki, 64Mi, 1Gi (Kubernetes' binary suffixes) or k/M/G."""
    units = {"ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "k": 1000, "m": 1000**2, "g": 1000**3}
    t = text.strip().lower()
    for suffix in sorted(units, key=len, reverse=True):
        if t.endswith(suffix) and t[:-len(suffix)].isdigit():
            return int(t[:-len(suffix)]) * units[suffix]
    if t.isdigit():
        return int(t)
    raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (e.g. 65536, 64Ki, 64Mi)")


def go_bool(text: str) -> bool:
    """Go's flag package booleans: -flag, -flag=true, -flag=false, 1, 0."""
    value = str(text).lower()
    if value in ("1", "t", "true"):
        return True
    if value in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}")


def go_seconds(text: str) -> float:
    """Seconds, as a number ("60") or a Go duration ("60s", "1m")."""
    from .config.corefile import CorefileError, Token
    from .config.plugins import _Ctx, parse_duration
    try:
        return parse_duration(_Ctx("flag"), Token(str(text), 0))
    except CorefileError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "check":
        return cmd_check(args.conf)
    if args.command == "run":
        _setup_logging(args.debug, args.log_format)
        return cmd_run(args)
    if args.command == "probe":
        from .runtime import probe
        return probe(args.status_socket, args.what)
    if args.command == "demo":
        from .demo import run_demo
        return _run_loop(run_demo(args.bench))
    if args.command == "handoff":
        from .handoff import control
        if args.handoff_command == "reload":
            return control.cmd_reload(args.handoff_dir, args.timeout)
        return control.cmd_status(args.handoff_dir)
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


def cmd_run(args) -> int:
    from .node.nodeconfig import ConfigMapError, cluster_dns_ip
    from .node.reconcile import NodeParams
    from .lifecycle import run_node
    from .runner import ConfigSource, RunParams, parse_local_ips
    from .fdlimit import raise_nofile
    log = logging.getLogger("nodecache")
    old, new = raise_nofile()
    if new != old:
        log.info("open file limit raised from %d to %d", old, new)
    ips, problems = parse_local_ips(args.localip)
    if args.setupebtables:
        log.warning("-setupebtables: ebtables rules are not supported; ignored")
    log.debug("node flags: localip=%s", ",".join(ips))
    node = NodeParams(ips, args.interfacename, args.setupinterface and bool(ips),
                      args.setupiptables and bool(ips), args.health_port, args.syncinterval,
                      args.skipteardown, args.failopen, cluster_dns_ip(args.upstreamsvc, dict(os.environ)),
                      args.rules, args.watch_node)
    params = RunParams(args.conf, args.basecorefile, args.kubednscm, args.upstreamsvc, ips, node,
                       args.pidfile, args.configsync, args.metrics_listen, args.dns_port,
                       args.handoff, args.handoff_dir, args.drain, args.handoff_grace,
                       args.max_inflight, args.max_inflight_per_client, args.miss_rate_per_client,
                       args.cache_bytes,
                       args.cache_max_item, args.cache_file,
                       args.status_socket, tuple(problems))
    source = ConfigSource(params, dict(os.environ))
    try:
        config = source.load(strict=False)
    except (CorefileError, ConfigMapError) as exc:
        print(f"nodecache: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return _run_loop(run_node(params, source, config))


async def fake_upstream(args) -> int:
    from .testing.fakeupstream import ClusterDNS, FakeUpstream
    host, _, port = args.listen.rpartition(":")
    delay = args.delay_ms / 1000
    if args.slow:
        prefix, _, ms = args.slow.partition("=")
        slow_wire, slow_delay, base = bytes([len(prefix)]) + prefix.encode(), float(ms) / 1000, delay
        delay = lambda data: slow_delay if data[12:12 + len(slow_wire)] == slow_wire else base  # noqa: E731
    server = FakeUpstream(ClusterDNS(args.domain, args.services, ttl=args.ttl).answer,
                          delay=delay, log_path=args.log_queries or None, record=False)
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
