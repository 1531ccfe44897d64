"""``nodecache-bench compare``: nodecache, unbound and dnsmasq side by side.

Each server runs as an equivalent cache on 127.0.0.1 in front of the same
emulated cluster DNS (``nodecache fake-upstream``). Servers are pinned to
CPU 0 and the load generator and the upstream to the other CPUs, when the
machine has more than one. For every scenario, servers take turns
(alternating, ``--rounds`` times, median kept) so machine noise falls on
all of them alike. Per server and scenario:

* saturation: answers/s with a closed loop of 64 queries in flight;
* p99 at half load: open-loop latency at 50% of that server's own
  saturation rate;
* CPU per query: the server's own user+sys time (from /proc/PID/stat)
  during the measurement, divided by the answers.

``pod`` is measured open-loop at a fixed lookup rate (a pod's lookups are
sequences of queries, not a rate to saturate). When dnsperf is installed,
it runs against nodecache too, to check our generator's drive rate and
latency against an independent tool.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .runload import BenchError, preflight, report, run_load
from .loadgen import Spec
from .abcost import at_once, at_once_misses, print_at_once
from .hitcost import hit_cost, print_hit_table
from .misscost import miss_cost, print_miss_table, unbound_command

CLK = os.sysconf("SC_CLK_TCK")
POD_RATE = 200.0


def free_port() -> int:
    from nodecache.emulated.client import free_port as fp
    return fp()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def _pin(cpus: set[int]):
    def apply():
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass
    return apply


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, cwd: str | None = None):
        self.name, self.cmd, self.port, self.cwd = name, cmd, port, cwd
        self.proc: subprocess.Popen | None = None

    def start(self, cpus: set[int]) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_pin(cpus), cwd=self.cwd)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def servers(tmp: Path, upstream: int, wanted: list[str]) -> list[Server]:
    out = []
    py = sys.executable
    if "nodecache" in wanted:
        port = free_port()
        conf = tmp / "Corefile"
        conf.write_text(f".:{port} {{\n    cache\n    bind 127.0.0.1\n    forward . 127.0.0.1:{upstream}\n}}\n")
        out.append(Server("nodecache", [py, "-m", "nodecache", "run", "-conf", str(conf), "-handoff=false",
                                        "-metrics-listen-address", "", "-status-socket", str(tmp / "s")], port))
    if "unbound" in wanted and shutil.which("unbound"):
        port = free_port()
        out.append(Server("unbound", unbound_command(tmp, port, upstream), port))
    if "dnsmasq" in wanted and shutil.which("dnsmasq"):
        port = free_port()
        out.append(Server("dnsmasq", [shutil.which("dnsmasq"), "--keep-in-foreground", f"--port={port}",
                                      "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                                      "--no-hosts", f"--server=127.0.0.1#{upstream}", "--cache-size=10000",
                                      "--pid-file=", "--user=root", "--dns-forward-max=10000"], port))
    return out


def measure(server: Server, spec: Spec, load_cpus: set[int]) -> dict:
    _pin(load_cpus)()
    c0 = cpu_seconds(server.proc.pid)
    result = run_load(spec, workers=1, check=False)
    cpu = cpu_seconds(server.proc.pid) - c0
    rep = report(spec, result, 1)
    rep["cpu_us_per_query"] = round(cpu / result.answered * 1e6, 2) if result.answered else None
    return rep


def warm(server: Server, scenario: str, load_cpus: set[int]) -> None:
    if scenario in ("hits", "zipf", "pod"):
        names = 300 if scenario == "hits" else 10000
        spec = Spec("127.0.0.1", server.port, mode="closed", concurrency=32, scenario=scenario,
                    names=names, duration=3 if scenario != "pod" else 2, qps=POD_RATE,
                    max_queries=names * 2)
        run_load(spec, workers=1, check=False)


def _median(values: list[dict], key) -> dict:
    values = sorted(values, key=key)
    return values[len(values) // 2]


def cmd_compare(args) -> int:
    if args.at_once and not (args.baseline and (args.hits or args.misses)):
        raise BenchError("--at-once measures nodecache against --baseline at the --hits/--misses rates: give both")
    if os.sep in args.baseline:  # the baseline runs in a directory of its own: a relative path would not
        args.baseline = os.path.abspath(args.baseline)
    both = tuple(args.both_flags.split())  # for the baseline too
    flags = tuple(args.flags.split()) + both
    if args.bind != "127.0.0.1" and not args.at_once:
        raise BenchError("--bind is for the --at-once comparison (both nodecaches bind it): give --at-once")
    if args.upstream != "tcp" and (args.at_once or not args.misses):
        raise BenchError("--upstream is for the --misses table (not --at-once): give --misses")
    if flags and not (args.hits or args.misses):
        raise BenchError("--flags are for this checkout's nodecache in the --hits/--misses tables: give one")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[0]}
    load_cpus = set(cpus[1:]) or {cpus[0]}
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        up_port = free_port()
        upstream = subprocess.Popen([sys.executable, "-m", "nodecache", "fake-upstream", "--listen",
                                     f"127.0.0.1:{up_port}", "--services", "10000", "--ttl", "3600"],
                                    stdout=subprocess.DEVNULL, preexec_fn=_pin(load_cpus))
        srvs = servers(tmp, up_port, wanted)
        missing = [w for w in wanted if w not in {s.name for s in srvs}]
        try:
            time.sleep(1.0)
            for s in srvs:
                s.start(server_cpus)
            for s in srvs:
                preflight(Spec("127.0.0.1", s.port), wait=2.0, tries=5)
            for scenario in scenarios:
                for s in srvs:
                    warm(s, scenario, load_cpus)
                sat: dict[str, list] = {s.name: [] for s in srvs}
                half: dict[str, list] = {s.name: [] for s in srvs}
                for _ in range(args.rounds):
                    for s in srvs:
                        if scenario == "pod":
                            spec = Spec("127.0.0.1", s.port, mode="open", qps=POD_RATE, scenario="pod",
                                        duration=args.duration, timeout=5.0)
                            half[s.name].append(measure(s, spec, load_cpus))
                            continue
                        spec = Spec("127.0.0.1", s.port, mode="closed", concurrency=64, scenario=scenario,
                                    duration=args.duration)
                        sat[s.name].append(measure(s, spec, load_cpus))
                for _ in range(args.rounds):
                    for s in srvs:
                        if scenario == "pod":
                            continue
                        rate = _median(sat[s.name], lambda r: r["qps"])["qps"] / 2
                        spec = Spec("127.0.0.1", s.port, mode="open", qps=max(rate, 100.0),
                                    scenario=scenario, duration=args.duration)
                        half[s.name].append(measure(s, spec, load_cpus))
                for s in srvs:
                    entry = {}
                    if sat[s.name]:
                        best = _median(sat[s.name], lambda r: r["qps"])
                        entry["saturation_qps"] = best["qps"]
                        entry["saturation_lost"] = sum(r["lost"] for r in sat[s.name])
                    h = _median(half[s.name], lambda r: r["latency_ms"]["p99"])
                    entry["half_load_qps"] = h["target_rate"]
                    entry["p50_ms"] = h["latency_ms"]["p50"]
                    entry["p99_ms"] = h["latency_ms"]["p99"]
                    entry["lost"] = sum(r["lost"] for r in half[s.name])
                    cpu_runs = [r["cpu_us_per_query"] for r in sat[s.name] + half[s.name] if r["cpu_us_per_query"]]
                    entry["cpu_us_per_query"] = sorted(cpu_runs)[len(cpu_runs) // 2] if cpu_runs else None
                    results.setdefault(scenario, {})[s.name] = entry
            target = next((s for s in srvs if s.name == "unbound"), srvs[0] if srvs else None)
            dnsperf = run_dnsperf(target, tmp, load_cpus, args.duration) if target and scenarios else None
        finally:
            for s in srvs:
                s.stop()
            upstream.terminate()
            upstream.wait(10)
        rates = [int(r) for r in args.misses.split(",") if r.strip()]
        if args.at_once:
            misses = at_once_misses(rates, args.duration, args.rounds, tmp, cpus, free_port, _pin, Server,
                                    args.baseline, flags, args.bind, both) if rates else {}
        else:
            misses = miss_cost(rates, args.duration, args.rounds, tmp, cpus, free_port, _pin, Server,
                               args.baseline, flags, both, args.upstream) if rates else {}
        hit_rates = [int(r) for r in args.hits.split(",") if r.strip()]
        name_sets = [int(n) for n in args.names.split(",") if n.strip()] or [1000]
        if args.at_once:
            hits = {str(names): at_once(hit_rates, args.duration, args.rounds, tmp, cpus, free_port, _pin,
                                        Server, args.baseline, names, flags, args.bind, both)
                    for names in name_sets} if hit_rates else {}
        else:
            hits = {str(names): hit_cost(hit_rates, args.duration, args.rounds, tmp, cpus, free_port, _pin,
                                         cpu_seconds, Server, args.baseline, names, flags, both)
                    for names in name_sets} if hit_rates else {}
    if args.json:
        print(json.dumps({"results": results, "dnsperf": dnsperf, "missing": missing, "misses": misses,
                          "hits": hits}))
        return 0
    print_tables(results, missing, dnsperf, cpus)
    if flags:
        print(f"\n(this checkout's nodecache, 'nodecache' below, runs with {' '.join(flags)})")
    if misses and args.at_once:
        print_at_once(misses, args.duration, "misses over TCP, names never asked before")
    elif misses:
        print_miss_table(misses, args.duration, args.rounds, args.upstream)
    for names, table in hits.items():
        if args.at_once:
            print_at_once(table, args.duration, f"{int(names):,} cached names")
        else:
            print_hit_table(table, args.duration, args.rounds, int(names))
    return 0


def run_dnsperf(server: Server, tmp: Path, load_cpus: set[int], duration: float, rounds: int = 2) -> dict | None:
    """The generator's drive rate against dnsperf's: both closed loop, 64 in
    flight, one socket (dnsperf's ``-c 1``), one core, against ``server`` (unbound when it runs: the fastest
    server here, so that the generators, not the server, are what is
    measured), alternating ``rounds`` times; medians."""
    exe = shutil.which("dnsperf")
    if exe is None:
        return None
    qfile = tmp / "queries.txt"
    from .scenarios import cluster_names
    qfile.write_text("".join(f"{n} A\n" for n in cluster_names(300)))
    theirs, ours, lat_theirs, lat_ours = [], [], [], []
    for _ in range(rounds):
        proc = subprocess.run([exe, "-s", "127.0.0.1", "-p", str(server.port), "-d", str(qfile),
                               "-l", str(int(duration)), "-c", "1", "-q", "64"],
                              capture_output=True, text=True, timeout=duration + 30,
                              preexec_fn=_pin(load_cpus))
        qps = re.search(r"Queries per second:\s+([\d.]+)", proc.stdout)
        lat = re.search(r"Average Latency \(s\):\s+([\d.]+)", proc.stdout)
        if qps:
            theirs.append(float(qps.group(1)))
        if lat:
            lat_theirs.append(float(lat.group(1)) * 1000)
        spec = Spec("127.0.0.1", server.port, mode="closed", concurrency=64, duration=duration, sockets=1)
        rep = report(spec, _pinned_run(spec, load_cpus), 1)
        ours.append(rep["qps"])
        lat_ours.append(rep["latency_ms"]["mean"])
    if not theirs:
        return None
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"server": server.name, "dnsperf_qps": round(med(theirs)), "ours_qps": round(med(ours)),
            "dnsperf_avg_latency_ms": med(lat_theirs) if lat_theirs else None,
            "ours_avg_latency_ms": med(lat_ours), "ratio": round(med(ours) / med(theirs), 2)}


def _pinned_run(spec: Spec, cpus: set[int]):
    """One worker of our generator, on ``cpus`` like dnsperf."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        return run_load(spec, workers=1, check=False)
    finally:
        os.sched_setaffinity(0, old)


def print_tables(results: dict, missing: list[str], dnsperf: dict | None, cpus: list[int]) -> None:
    print(f"servers pinned to CPU {cpus[0]}, load and upstream to CPU(s) {cpus[1:] or cpus[:1]}; "
          f"ratios are to nodecache (CPU: <1 means the peer uses less CPU per query)")
    for scenario, per in results.items():
        print(f"\n{scenario}:")
        print(f"  {'server':10} {'sat. qps':>9} {'x':>5} {'half-load qps':>13} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'lost':>5} {'cpu us/q':>9} {'x':>5}")
        base = per.get("nodecache", {})
        for name, e in per.items():
            sat = e.get("saturation_qps")
            ratio_q = f"{sat / base['saturation_qps']:.2f}" if sat and base.get("saturation_qps") else "-"
            cpu = e.get("cpu_us_per_query")
            ratio_c = f"{cpu / base['cpu_us_per_query']:.2f}" if cpu and base.get("cpu_us_per_query") else "-"
            print(f"  {name:10} {sat if sat is not None else '-':>9} {ratio_q:>5} {e['half_load_qps']:>13} "
                  f"{e['p50_ms']:>7} {e['p99_ms']:>7} {e['lost']:>5} {cpu if cpu else '-':>9} {ratio_c:>5}")
    for name in missing:
        print(f"\n{name}: not installed here (apt-get install {name}); skipped")
    if dnsperf:
        print(f"\ndrive rate, dnsperf vs nodecache-bench: closed loop, 64 in flight, one socket and one core each, against "
              f"{dnsperf['server']} (same 300 cached names, alternating, median): dnsperf {dnsperf['dnsperf_qps']} q/s, "
              f"nodecache-bench {dnsperf['ours_qps']} q/s = {dnsperf['ratio']:.2f}x dnsperf")
