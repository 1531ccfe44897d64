"""``nodecache-bench``: the load generator people run against nodecache.

    nodecache-bench run -s 127.0.0.1 -p 53 --qps 20000 --duration 10 --scenario zipf
    nodecache-bench run --concurrency 64 --proto tcp            # closed loop: find the maximum
    nodecache-bench compare [--quick]                            # nodecache vs unbound vs dnsmasq
    nodecache-bench handoff --handoffs 10                        # queries lost during hot handoffs

``run`` splits the load over worker processes (``--workers``, default: the
cores not used by the server when it runs here, at least 1), merges their
histograms, and prints sent/answered/lost, rcodes, achieved rate and
latency percentiles; ``--json`` prints the same as one JSON object,
``--plot FILE.png`` draws latency over time and its distribution
(matplotlib, an optional extra). Ctrl-C stops the run and prints what was
measured so far.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .loadgen import Result, Spec
from .runload import BenchError, report, run_load

def print_report(rep: dict) -> None:
    lat = rep["latency_ms"]
    what = f"{rep['mode']}-loop " + (f"at {rep['target_rate']:g}/s" if rep["mode"] == "open"
                                     else f"with {rep['concurrency']} in flight")
    print(f"{rep['scenario']} over {rep['proto']} to {rep['server']}, {what}, {rep['workers']} worker(s), "
          f"{rep['duration_s']:.1f} s")
    print(f"  sent {rep['sent']}  answered {rep['answered']}  lost {rep['lost']}  late {rep['late']}  "
          f"errors {rep['errors']}")
    print("  rcodes " + ", ".join(f"{k} {v}" for k, v in rep["rcodes"].items()))
    if "lookups" in rep:
        print(f"  lookups {rep['lookups']} ({rep['lookups_per_s']}/s), failed {rep['lookup_failures']}; "
              f"latency is per lookup")
    print(f"  achieved {rep['qps']:.0f} answers/s; latency ms: p50 {lat['p50']}  p90 {lat['p90']}  "
          f"p99 {lat['p99']}  p99.9 {lat['p99.9']}  max {lat['max']}")
    for w in rep["warnings"]:
        print(f"  warning: {w}")


def _pyplot():
    """matplotlib's pyplot, or the BenchError that says how to get it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install -e '.[plot]' in this checkout") from None
    return plt


def plot(result: Result, path: str, title: str) -> None:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if result.samples:
        t, lat = zip(*result.samples)
        a.scatter(t, [x * 1000 for x in lat], s=2)
    a.set_xlabel("time (s)")
    a.set_ylabel("latency (ms)")
    a.set_yscale("log")
    a.set_title("latency over time")
    h = result.hist
    ps = [50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100]
    b.plot(ps, [h.percentile(p) * 1000 for p in ps], marker="o")
    b.set_xlabel("percentile")
    b.set_ylabel("latency (ms)")
    b.set_yscale("log")
    b.set_title("latency distribution")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def default_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


def add_run_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("-s", "--server", default="127.0.0.1", help="server address (IPv4 or IPv6)")
    ap.add_argument("-p", "--port", type=int, default=53, help="server port")
    ap.add_argument("--proto", choices=("udp", "tcp"), default="udp",
                    help="transport; tcp pipelines queries on each connection (RFC 7766)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--qps", type=float, help="open loop: queries (pod: lookups) per second, sent on "
                      "schedule whatever the server does (default 1000)")
    mode.add_argument("--concurrency", type=int, help="closed loop: keep this many queries in flight "
                      "(measures saturation)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds (bounds every run)")
    ap.add_argument("--max-queries", type=int, default=10_000_000, help="bounds every run")
    ap.add_argument("--timeout", type=float, default=2.0, help="a query unanswered this long is lost")
    ap.add_argument("--scenario", choices=("hits", "zipf", "nxdomain", "pod", "file"), default="hits",
                    help="hits: a small set, all cached (asked once before measuring); zipf: 10,000 names, "
                    "Zipf s=1; nxdomain: unique random names (all misses); pod: glibc-style lookups "
                    "(search list, A+AAAA); file: --queries")
    ap.add_argument("--names", type=int, default=0, help="names in the hits/zipf set (0: the scenario's own)")
    ap.add_argument("--queries", default="", help="dnsperf-format query file (--scenario file)")
    ap.add_argument("--workers", type=int, default=0,
                    help="generator processes (0: one per core but one, left for the server)")
    ap.add_argument("--connections", type=int, default=4, help="UDP sockets / TCP connections per worker")
    ap.add_argument("--edns", choices=("none", "edns", "do"), default="none",
                    help="OPT record in each query: none (as glibc), edns (1232 bytes), do (DNSSEC OK)")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object")
    ap.add_argument("--plot", default="", help="write latency over time and its distribution to this PNG "
                    "(needs matplotlib: pip install -e '.[plot]' in this checkout)")
    ap.add_argument("--quiet", action="store_true", help="no progress line")


def _check_bounds(args) -> None:
    """One clear line for a value that cannot run (not a silent default)."""
    positive = [("--duration", args.duration), ("--timeout", args.timeout), ("--max-queries", args.max_queries),
                ("--connections", args.connections)]
    if args.qps is not None:
        positive.append(("--qps", args.qps))
    if args.concurrency is not None:
        positive.append(("--concurrency", args.concurrency))
    for flag, value in positive:
        if not value > 0:
            raise BenchError(f"{flag} must be above 0 (got {value:g})")
    if args.workers < 0 or args.names < 0:
        raise BenchError("--workers and --names cannot be negative (0: the default)")
    if not 0 < args.port < 65536:
        raise BenchError(f"--port must be 1..65535 (got {args.port})")


def spec_from(args) -> Spec:
    _check_bounds(args)
    if args.scenario == "file" and not args.queries:
        raise BenchError("--scenario file needs --queries FILE")
    return Spec(host=args.server, port=args.port, proto=args.proto,
                mode="closed" if args.concurrency else "open",
                qps=1000.0 if args.qps is None else args.qps,
                concurrency=args.concurrency or 16, duration=args.duration, max_queries=args.max_queries,
                timeout=args.timeout, scenario=args.scenario, names=args.names, query_file=args.queries,
                sockets=args.connections, edns={"none": -1, "edns": 0, "do": 1}[args.edns],
                sample_every=0 if not args.plot else 10)


def cmd_run(args) -> int:
    if args.plot:
        _pyplot()  # before the run, not after it: a missing extra is said at once
    spec = spec_from(args)
    if args.scenario == "file":
        from .scenarios import QueryFile
        try:
            QueryFile(args.queries)  # fail fast on a bad file
        except (OSError, UnicodeDecodeError) as exc:
            raise BenchError(f"--queries {args.queries}: {getattr(exc, 'strerror', None) or exc}") from None
        except ValueError as exc:
            raise BenchError(str(exc)) from None
    workers = args.workers or default_workers()
    result = run_load(spec, workers, progress=not args.quiet and not args.json)
    rep = report(spec, result, workers)
    if args.json:
        print(json.dumps(rep))
    else:
        print_report(rep)
    if args.plot:
        plot(result, args.plot, f"{spec.scenario} {spec.proto} {spec.host}:{spec.port}")
    return 130 if getattr(result, "interrupted", False) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nodecache-bench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    add_run_args(sub.add_parser("run", help="load one server"))
    cmp_ = sub.add_parser("compare", help="nodecache vs unbound vs dnsmasq, side by side")
    cmp_.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    cmp_.add_argument("--rounds", type=int, default=2, help="alternating repetitions")
    cmp_.add_argument("--scenarios", default="hits,zipf,nxdomain,pod")
    cmp_.add_argument("--servers", default="nodecache,unbound,dnsmasq")
    cmp_.add_argument("--misses", default="",
                      help="also measure CPU per miss vs unbound at these fixed rates over a TCP "
                           "upstream with dnsperf, e.g. 1000,5000")
    cmp_.add_argument("--upstream", choices=("tcp", "tls", "https"), default="tcp",
                      help="with --misses: every cache forwards to the stand-in cluster DNS (a real unbound) over "
                           "TCP, DNS over TLS or DNS over HTTPS (unbound then over TLS: it has no DoH client)")
    cmp_.add_argument("--hits", default="",
                      help="also measure CPU per cached query vs unbound and the bare uvloop floor at these "
                           "fixed rates with dnsperf, e.g. 5000,30000,80000")
    cmp_.add_argument("--names", default="1000",
                      help="with --hits: the distinct cached names in use, one table each, e.g. 1000,8000,100000")
    cmp_.add_argument("--baseline", default="",
                      help="with --hits/--misses: also run the nodecache installed for this Python (e.g. a "
                           "virtualenv with an older commit installed) side by side, as 'nodecache@baseline'")
    cmp_.add_argument("--at-once", action="store_true",
                      help="with --hits/--misses and --baseline: run the two nodecaches at the same time on one core "
                           "instead of the side-by-side table, one ratio per run (nodecache_bench.abcost: "
                           "the way to see a change of a few percent on a noisy machine)")
    cmp_.add_argument("--bind", default="127.0.0.1",
                      help="with --at-once: the address both nodecaches' Corefiles bind; '' for none (a socket "
                           "on every address: the transport that answers from the address asked)")
    cmp_.add_argument("--flags", default="",
                      help="with --hits/--misses: more `nodecache run` flags for this checkout's nodecache (not "
                           "the baseline), e.g. --flags=-udp-coalesce=1ms (with '=': the value starts with '-'); "
                           "with --baseline .venv/bin/python the same code without them runs beside it")
    cmp_.add_argument("--both-flags", dest="both_flags", default="",
                      help="with --baseline: `nodecache run` flags for both nodecaches, e.g. "
                           "--both-flags=-udp-coalesce=2ms to compare two builds with it on")
    cmp_.add_argument("--json", action="store_true")
    walk = sub.add_parser("searchpath", help="ndots:5 search walks with the k8s_schema stage off and on")
    walk.add_argument("--rate", type=float, default=50.0, help="lookups started per second")
    walk.add_argument("--duration", type=float, default=5.0, help="seconds of lookups per variant")
    walk.add_argument("--rounds", type=int, default=1, help="alternating repetitions of off and on")
    walk.add_argument("--cluster-ms", dest="cluster_ms", type=float, default=1.0, help="the cluster DNS's delay")
    walk.add_argument("--external-ms", dest="external_ms", type=float, default=20.0,
                      help="the external resolver's delay")
    shakes = sub.add_parser("handshakes", help="TLS handshakes per 1,000 misses with and without session resumption")
    shakes.add_argument("--rate", type=int, default=1000, help="misses per second")
    shakes.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    shakes.add_argument("--expire", type=float, default=0.5, help="forward's expire: connections recycled this often")
    hand = sub.add_parser("handoff", help="constant load while hot handoffs happen")
    hand.add_argument("--handoffs", type=int, default=10)
    hand.add_argument("--qps", type=int, default=5000)
    hand.add_argument("--upstream", choices=("dns", "tls", "https"), default="dns",
                      help="the cluster DNS: plain (the emulated one) or a real unbound over DoT or DoH")
    args = ap.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "compare":
            from .compare import cmd_compare
            return cmd_compare(args)
        if args.command == "handshakes":
            from .handshakes import main as handshakes_main
            return handshakes_main(args)
        if args.command == "searchpath":
            from .searchpath import main as searchpath_main
            return searchpath_main(args)
        from .handoff import main as handoff_main
        return handoff_main(["--handoffs", str(args.handoffs), "--qps", str(args.qps), "--upstream", args.upstream])
    except BenchError as exc:
        print(f"nodecache-bench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
