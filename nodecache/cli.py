"""Command line: ``nodecache run|check|demo|fake-upstream``.

Flags keep node-cache's single-dash spelling (``-conf``); ``--conf`` and
``-conf=value`` work too (``cliparse``).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .cliparse import (Parser, at_least, coalesce_window, flag, go_bool, go_seconds, listen_address, port,
                       positive_seconds, size)
from .config.corefile import CorefileError

from . import defaults as D

EXIT_CONFIG = 2


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        from datetime import datetime, timezone
        when = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        out = {"time": when, "level": record.levelname.lower(),
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
    p = Parser(prog="nodecache", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"nodecache {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="serve DNS as the Corefile says, until SIGTERM/SIGINT",
                         description="Flags are node-cache's, so its DaemonSet args work unchanged; each is "
                                     "accepted as -flag, --flag and -flag=value.")
    _template_flags(run)
    _agent_flags(run)

    probe = sub.add_parser("probe", help="exec probe: exit 0 if the agent is alive / ready")
    probe.add_argument("what", choices=("live", "ready"))
    flag(probe, "status-socket", dest="status_socket", default=D.STATUS_SOCKET,
         help="the agent's -status-socket")

    top = sub.add_parser("top", help="which clients and names make this node's DNS traffic (live, or --json)")
    flag(top, "status-socket", dest="status_socket", default=D.STATUS_SOCKET, help="the agent's -status-socket")
    top.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes of the live view")
    top.add_argument("--sort", default="queries", choices=("queries", "nxdomain", "servfail", "refused",
                                                          "walk_steps", "tcp", "storm", "hit_ratio"))

    handoff = sub.add_parser("handoff", help="hot handoff tools")
    hsub = handoff.add_subparsers(dest="handoff_command", required=True, parser_class=Parser)
    status = hsub.add_parser("status", help="which process holds the sockets")
    flag(status, "handoff-dir", dest="handoff_dir", default=D.HANDOFF_DIR, help="the agent's -handoff-dir")
    reload_ = hsub.add_parser("reload", help="start a successor with the running agent's command "
                                             "line and wait until it took over (systemd ExecReload)")
    flag(reload_, "handoff-dir", dest="handoff_dir", default=D.HANDOFF_DIR, help="the agent's -handoff-dir")
    flag(reload_, "timeout", type=positive_seconds, default=30.0, help="seconds to wait for the successor")

    check = sub.add_parser("check", help="render a Corefile (node-cache templates too) with these flags, "
                                         "validate it, print it and the parsed chains",
                           description="The Corefile is rendered as `nodecache run` would with the same "
                                       "flags (__PILLAR__ values from -localip, the -upstreamsvc "
                                       "environment variable or -clusterdns, the kube-dns ConfigMap). "
                                       "Every flag of `run` is accepted, so a DaemonSet's args can be "
                                       "pasted; those outside the template's change nothing here.")
    _template_flags(check, base_default="")
    flag(check, "clusterdns", default="", help="the ClusterIP of -upstreamsvc, for __PILLAR__CLUSTER__DNS__ "
                                               "(default: its $NAME_SERVICE_HOST variable)")
    _agent_flags(check)

    demo = sub.add_parser("demo", help="run the agent against an emulated cluster DNS, on loopback")
    flag(demo, "bench", type=at_least(0, float), default=10.0, help="seconds of nodecache-bench at the end (0: none)")

    fake = sub.add_parser("fake-upstream", help="serve the emulated cluster DNS")
    flag(fake, "listen", default="127.0.0.1:5300", help="ADDR:PORT")
    flag(fake, "domain", default="cluster.local", help="the cluster domain")
    flag(fake, "services", type=at_least(1), default=100, help="svc-0..svc-N-1 per namespace")
    flag(fake, "ttl", type=at_least(0), default=30, help="TTL of every answer")
    flag(fake, "delay-ms", type=at_least(0, float), default=0.0, help="answer after this many milliseconds")
    flag(fake, "slow", default="", metavar="PREFIX=MS",
         help="answer names whose first label is PREFIX after MS milliseconds (a slow zone)")
    flag(fake, "log-queries", default="", help="append 'proto client qtype name' per query to FILE")
    return p


def _agent_flags(p: argparse.ArgumentParser) -> None:
    """``run``'s flags beyond the template's: node-cache's and ours. ``check``
    takes them too (and ignores them), so a DaemonSet's args can be pasted."""
    f = lambda *a, **k: flag(p, *a, **k)  # noqa: E731
    f("interfacename", default="nodelocaldns", help="the interface that holds the -localip addresses")
    f("setupinterface", type=go_bool, nargs="?", const=True, default=True,
      help="create the interface and its addresses, and keep them")
    f("setupiptables", type=go_bool, nargs="?", const=True, default=True,
      help="write the NOTRACK/ACCEPT rules for -localip, and keep them")
    f("setupebtables", type=go_bool, nargs="?", const=True, default=False,
      help="accepted for compatibility; ebtables is not supported")
    f("syncinterval", type=positive_seconds, default=D.SYNC_INTERVAL,
      help="how often interface and rules are checked and repaired (s or Go duration)")
    f("watch-node", dest="watch_node", type=go_bool, nargs="?", const=True, default=True,
      help="also repair at once when netlink reports our interface, an address or a rule removed "
           "(node-cache's teardown during a migration); false: only every -syncinterval")
    f("initialdelay", type=go_seconds, default=0.0,
      help="accepted for compatibility; rules are set once the listeners serve")
    f("health-port", dest="health_port", type=port, default=8080,
      help="the health plugin's port, NOTRACKed for probes")
    f("skipteardown", type=go_bool, nargs="?", const=True, default=False,
      help="leave interface and rules in place on exit")
    f("failopen", type=go_bool, nargs="?", const=True, default=True,
      help="NOTRACK pod DNS only while the agent's socket is bound, so a dead agent's "
           "traffic falls through to kube-proxy / a fallback DNAT")
    f("rules", default="auto", choices=("auto", "iptables", "nftables"),
      help="how to write the rules: iptables, native nftables (a table of our own), "
           "or auto: nftables where kube-proxy has its nftables tables, else iptables")
    f("pidfile", default="", help="write the process ID here once serving")
    f("metrics-listen-address", dest="metrics_listen", default=D.METRICS_LISTEN, type=listen_address,
      help="node-cache's setup-error metrics (ADDR:PORT; empty: off)")
    f("tls-enabled", dest="tls_enabled", type=go_bool, nargs="?", const=True, default=False,
      help="serve -metrics-listen-address over HTTPS (node-cache's metrics TLS)")
    f("tls-cert-file", dest="tls_cert_file", default="/etc/ssl/tls.crt", help="with -tls-enabled: the certificate")
    f("tls-private-key-file", dest="tls_key_file", default="/etc/ssl/tls.key", help="with -tls-enabled: its key")
    f("tls-client-auth-type", dest="tls_client_auth", default="NoClientCert",
      choices=("NoClientCert", "RequestClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven",
               "RequireAndVerifyClientCert"),
      help="with -tls-enabled: client certificates (Go's names; verified against -tls-client-ca-file)")
    f("tls-client-ca-file", dest="tls_client_ca", default="", help="with -tls-enabled: CAs for client certificates")
    f("tls-min-version", dest="tls_min_version", default="VersionTLS13",
      help="with -tls-enabled: VersionTLS10 .. VersionTLS13")
    f("prometheus-listen-address", dest="prometheus_listen", default="", type=listen_address,
      help="also serve CoreDNS's metrics (the prometheus plugin's) on this ADDR:PORT")
    f("reloadwithsignal", type=go_bool, nargs="?", const=True, default=False,
      help="accepted for compatibility: the configuration is always reloaded on change and on SIGUSR1")
    f("quiet", type=go_bool, nargs="?", const=True, default=False,
      help="CoreDNS's: accepted for compatibility (start-up lines are ordinary log lines here)")
    f("plugins", action="store_true", help="CoreDNS's: list the plugins (directives) this build has, and exit")
    f("configsync", type=positive_seconds, default=D.CONFIG_SYNC,
      help="how often the template and the kube-dns ConfigMap are re-read (s)")
    f("handoff", type=go_bool, nargs="?", const=True, default=True,
      help="take over from a running agent at the handoff socket")
    f("handoff-dir", dest="handoff_dir", default=D.HANDOFF_DIR,
      help="directory of the handoff socket, shared by the old and new pod")
    f("handoff-grace", dest="handoff_grace", type=go_seconds, default=D.HANDOFF_GRACE,
      help="after a handoff, how long the old agent stays able to resume if the new one dies (s)")
    f("max-inflight", dest="max_inflight", type=at_least(1), default=D.MAX_INFLIGHT,
      help="queries not answered from the cache that may be in progress at once; more are REFUSED")
    f("max-inflight-per-client", dest="max_inflight_per_client", type=at_least(1), default=D.MAX_INFLIGHT_PER_CLIENT,
      help="the share of -max-inflight one client address may hold")
    f("miss-rate-per-client", dest="miss_rate_per_client", type=at_least(0, float), default=D.MISS_RATE_PER_CLIENT,
      help="queries per second one client address may send that are not cache hits; more are "
           "REFUSED; 0: no limit")
    f("storm-threshold", dest="storm_threshold", type=at_least(0), default=D.STORM_THRESHOLD,
      help="after this many failing answers (NXDOMAIN, SERVFAIL) to one client's same question in 5 s, answer "
           "the rest of those 5 s at the node over UDP (every 2nd truncated: real clients retry over TCP); 0: off")
    f("cache-bytes", dest="cache_bytes", type=size, default=D.CACHE_BYTES,
      help="bytes all caches together may hold (records + ~400 B per entry); oldest unused go first")
    f("cache-max-item", dest="cache_max_item", type=size, default=D.CACHE_MAX_ITEM,
      help="a reply whose records exceed this is served but not cached")
    f("drain", type=go_seconds, default=D.DRAIN,
      help="how long in-flight queries may finish on shutdown or handoff (s)")
    f("cache-file", dest="cache_file", default="",
      help="save the cache here on shutdown and load it on a cold start")
    f("status-socket", dest="status_socket", default=D.STATUS_SOCKET,
      help="where `nodecache probe` asks this process for its state")
    f("forward-retry", dest="forward_retry", type=go_bool, nargs="?", const=True, default=True,
      help="re-send a query whose upstream connection died and retry refusals until its deadline; false: "
           "fail as soon as every upstream failed once (for diagnosis)")
    f("udp-batch", dest="udp_batch", type=go_bool, nargs="?", const=True, default=True,
      help="read and answer UDP in recvmmsg/sendmmsg batches where the kernel allows; false: uvloop's "
           "datagram transport, one datagram per call (for diagnosis)")
    f("udp-coalesce", dest="udp_coalesce", type=coalesce_window, default=0.0,
      help="off (0), or wait up to this long (1ms..10ms) before reading UDP while queries keep coming, "
           "then read and answer all queued at once: fewer wakeups, less CPU per query at a few thousand "
           "queries/s, for up to this much more latency (needs -udp-batch)")
    f("pod-names", dest="pod_names", type=go_bool, nargs="?", const=True, default=False,
      help="show clients as namespace/pod in nodecache top: list and watch this node's pods (needs a service-"
           "account token, RBAC for list/watch pods and NODE_NAME: daemonset/components/pod-names)")
    f("metrics-top-clients", dest="metrics_top_clients", type=at_least(0), default=0,
      help="export nodecache_top_client_queries for the N busiest clients (0: off; a series per client "
           "address, so at most N, and off by default for its cardinality)")
    f("log-format", dest="log_format", choices=("text", "json"), default="text",
      help="json: one object per line, RFC 3339 times")
    f("debug", action="store_true", help="debug logging")


def _template_flags(p: argparse.ArgumentParser, base_default: str = "/etc/coredns/Corefile.base") -> None:
    """The flags that decide which Corefile is served and how it is rendered."""
    flag(p, "conf", "corefile", dest="conf", default="Corefile",
         help="the Corefile; written with the rendered template when -basecorefile exists, as node-cache does")
    flag(p, "basecorefile", default=base_default,
         help="node-cache's template; when the file exists it is rendered and served instead of -conf")
    flag(p, "localip", default="", help="comma-separated IPs: __PILLAR__LOCAL__DNS__, the interface and rules "
                                        "(an entry that is not an IP, e.g. an unexpanded $(VAR), stops the start)")
    flag(p, "upstreamsvc", default="kube-dns",
         help="Service whose $NAME_SERVICE_HOST fills __PILLAR__CLUSTER__DNS__")
    flag(p, "kubednscm", default="", help="directory of the kube-dns ConfigMap (stubDomains, upstreamNameservers)")
    flag(p, "dns.port", dest="dns_port", type=port, default=53, help="the port of generated stub-domain blocks")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "check":
        return cmd_check(args)
    if args.command == "run":
        _setup_logging(args.debug, args.log_format)
        return cmd_run(args)
    if args.command == "probe":
        from .run.status import probe
        return probe(args.status_socket, args.what)
    if args.command == "top":
        from .topview import cmd_top
        return cmd_top(args)
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


def cmd_check(args) -> int:
    from .describe import describe
    """Render as ``run`` would, validate, print the Corefile and its chains."""
    from .config.nodeconfig import ConfigMapError
    from .run.configsource import ConfigSource
    try:
        params = _run_params(args, None)
    except LocalIpError as exc:
        print(f"nodecache: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    env = dict(os.environ)
    if args.clusterdns:
        from .config.nodeconfig import service_env
        env[service_env(args.upstreamsvc)] = args.clusterdns
    sources = [ConfigSource(params, env, write_effective=False)]
    if params.base_corefile and Path(params.base_corefile).is_file() and Path(params.conf).is_file():
        # run serves the template; the -conf file named here is checked too (it would be
        # served wherever the template is missing), never passed over in silence
        sources.append(ConfigSource(dataclasses.replace(params, base_corefile=""), env, write_effective=False))
    status = 0
    try:
        for k, source in enumerate(sources):
            try:
                config = source.load(strict=True)
            except (CorefileError, ConfigMapError) as exc:
                print(f"nodecache: {exc}", file=sys.stderr)
                status = EXIT_CONFIG
                continue
            print(f"# the Corefile in effect ({config.source}, rendered with these flags)" if k == 0 else
                  f"\n# -conf {config.source}, which is served only where -basecorefile is missing")
            print(source.text.rstrip())
            print("\n# zones and chains")
            print(describe(config))
        sys.stdout.flush()
    except BrokenPipeError:  # `nodecache check ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return status


def cmd_run(args) -> int:
    from .config.nodeconfig import ConfigMapError
    from .run.lifecycle import run_node
    from .run.configsource import ConfigSource
    from .fdlimit import raise_nofile
    log = logging.getLogger("nodecache")
    old, new = raise_nofile()
    if new != old:
        log.info("open file limit raised from %d to %d", old, new)
    if args.setupebtables:
        log.warning("-setupebtables: ebtables rules are not supported; ignored")
    if args.plugins:  # CoreDNS's -plugins
        from .plugins.registry import ORDER
        print("Server types:\n  dns\n\nOther plugins:\n" + "".join(f"  dns.{name}\n" for name in sorted(ORDER)),
              end="")
        return 0
    if args.reloadwithsignal:
        log.info("-reloadwithsignal: the configuration is reloaded on change and on SIGUSR1 anyway")
    try:
        params = _run_params(args, args)
    except LocalIpError as exc:
        print(f"nodecache: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if params.udp_coalesce and not params.udp_batch:
        print("nodecache: -udp-coalesce needs -udp-batch (a poll reads the socket with recvmmsg)", file=sys.stderr)
        return EXIT_CONFIG
    if params.metrics_tls is not None:
        from .observe.tls import TlsError
        try:
            params.metrics_tls.context()  # a missing or bad certificate stops the start, as in node-cache
        except TlsError as exc:
            print(f"nodecache: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    log.debug("node flags: localip=%s", ",".join(params.local_ips))
    source = ConfigSource(params, dict(os.environ))
    try:
        config = source.load(strict=False)
    except (CorefileError, ConfigMapError) as exc:
        print(f"nodecache: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return _run_loop(run_node(params, source, config))


class LocalIpError(ValueError):
    """A -localip entry that is not an address: the start stops (exit 2)."""


def _run_params(args, run):
    """RunParams from the template flags (``check``) or every flag (``run``)."""
    from .config.nodeconfig import cluster_dns_ip
    from .run.lifecycle import POD_NETWORK_LAMEDUCK
    from .node.reconcile import NodeParams
    from .run.params import RunParams, parse_local_ips
    ips, problems = parse_local_ips(args.localip)
    if problems:  # every address we are told to serve is served, or we do not start
        raise LocalIpError("; ".join(problems))
    template = dict(conf=args.conf, base_corefile=args.basecorefile, kubedns_cm=args.kubednscm,
                    upstream_svc=args.upstreamsvc, local_ips=ips, dns_port=args.dns_port)
    if run is None:
        return RunParams(**template)
    node = NodeParams(ips, interface=run.interfacename, setup_interface=run.setupinterface and bool(ips),
                      setup_iptables=run.setupiptables and bool(ips), health_port=run.health_port,
                      sync_interval=run.syncinterval, skip_teardown=run.skipteardown, fail_open=run.failopen,
                      upstream=cluster_dns_ip(run.upstreamsvc, dict(os.environ)), rules_backend=run.rules,
                      watch_changes=run.watch_node)
    return RunParams(**template, node=node, pidfile=run.pidfile, config_sync=run.configsync,
                     metrics_listen=run.metrics_listen, handoff=run.handoff, handoff_dir=run.handoff_dir,
                     drain=run.drain, handoff_grace=run.handoff_grace, max_inflight=run.max_inflight,
                     max_inflight_per_client=run.max_inflight_per_client,
                     miss_rate_per_client=run.miss_rate_per_client, storm_threshold=run.storm_threshold,
                     cache_bytes=run.cache_bytes,
                     cache_max_item=run.cache_max_item, cache_file=run.cache_file,
                     status_socket=run.status_socket,
                     lameduck=POD_NETWORK_LAMEDUCK if not (run.setupinterface or run.setupiptables) else 0.0,
                     forward_retry=run.forward_retry, udp_batch=run.udp_batch, udp_coalesce=run.udp_coalesce,
                     prometheus_listen=run.prometheus_listen, metrics_tls=_metrics_tls(run),
                     metrics_top_clients=run.metrics_top_clients, pod_names=run.pod_names)


def _metrics_tls(run):
    if not run.tls_enabled:
        return None
    from .observe.tls import MetricsTls
    return MetricsTls(run.tls_cert_file, run.tls_key_file, run.tls_client_auth, run.tls_client_ca,
                      run.tls_min_version)


async def fake_upstream(args) -> int:
    from .emulated.upstream import ClusterDNS, FakeUpstream
    host, _, port_text = args.listen.rpartition(":")
    delay = args.delay_ms / 1000
    try:
        listen_port = port(port_text) if port_text != "0" else 0
        if args.slow:
            prefix, _, ms = args.slow.partition("=")
            slow_wire, slow_delay, base = bytes([len(prefix)]) + prefix.encode(), float(ms) / 1000, delay
            delay = lambda data: slow_delay if data[12:12 + len(slow_wire)] == slow_wire else base  # noqa: E731
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"nodecache fake-upstream: --listen ADDR:PORT / --slow PREFIX=MS: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    server = FakeUpstream(ClusterDNS(args.domain, args.services, ttl=args.ttl).answer,
                          delay=delay, log_path=args.log_queries or None, record=False)
    try:
        await server.start(host.strip("[]"), listen_port)
    except OSError as exc:
        why = exc.strerror or str(exc)
        print(f"nodecache fake-upstream: {why if 'cannot listen' in why else f'cannot listen on {args.listen}: {why}'}",
              file=sys.stderr)
        return 1
    logging.getLogger("nodecache").info("emulated cluster DNS for %s on %s:%d", args.domain,
                                        host, server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    return 0
