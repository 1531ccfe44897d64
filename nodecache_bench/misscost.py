"""CPU per cache miss, nodecache vs unbound, at fixed rates over a TCP upstream.

``nodecache-bench compare --misses 1000,5000`` (the miss table only with
``--scenarios ""``). Method, as a node runs it:

* the upstream both servers forward to is one unbound instance acting as
  the cluster DNS: every name under ``svc.cluster.local.`` answers A 192.0.2.1
  (C, single thread, so it never limits either server); it runs with the
  load on the second CPU;
* nodecache (``forward . UPSTREAM { force_tcp }``, ``cache``) and unbound
  (``forward-tcp-upstream: yes``, one thread, iterator only) are pinned to
  CPU 0 and forward over pipelined/reused TCP connections;
* dnsperf sends names never asked before (a fresh prefix per run, more
  names than the run needs, so nothing repeats or hits a cache) at a fixed
  rate ``-Q`` (sub-saturation, as pods do), for ``--duration`` seconds;
* per run: the server's own CPU (schedstat, all threads; split into user
  and system by the tick samples) divided by the queries dnsperf saw
  answered, and dnsperf's latency percentiles. Servers alternate,
  ``--rounds`` times; medians. Then a 2 s run per server and rate of its
  own, with fresh names, under ``strace -f -c``: system calls per miss.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from .cpustat import split, syscalls_per_query, times
from .tlsup import Encrypted, make_pki, unbound_one_thread

UPSTREAM_ZONE = "svc.cluster.local."  # not a zone unbound answers itself (RFC 6761 ones are)
# Long enough that a cached name stays cached through a whole comparison:
# with 30 s, 100,000 names (filled at 4,000/s, 25 s per server) had expired
# before they were measured, and every "hit" was a miss, for every server.
UPSTREAM_TTL = 3600


def upstream_conf(tmp: Path, port: int, tls: Encrypted | None = None) -> Path:
    """unbound as the cluster DNS: every name under UPSTREAM_ZONE answers
    (A 192.0.2.1, TTL UPSTREAM_TTL); with ``tls``, over DoT and DoH too."""
    return unbound_one_thread(tmp, "cluster-dns.conf", port,
                              ("" if tls else "    incoming-num-tcp: 64\n")
                              + f"    local-zone: \"{UPSTREAM_ZONE}\" redirect\n"
                              f"    local-data: \"{UPSTREAM_ZONE} {UPSTREAM_TTL} IN A 192.0.2.1\"\n"
                              + (tls.upstream_lines() if tls else ""))


def unbound_forwarder_conf(tmp: Path, port: int, upstream: int, tcp_upstream: bool = True,
                           tls: Encrypted | None = None) -> Path:
    """unbound as a cache forwarding everything to 127.0.0.1:upstream, with
    the UDP receive buffer nodecache gives itself (agent.UDP_RCVBUF, 4 MiB):
    with the system's default (~200 KiB) a burst of the open-loop generator
    at 120,000 q/s overflowed it and unbound lost queries nodecache did not."""
    server_tls, zone_tls = tls.unbound_forward() if tls else ("", "")
    return unbound_one_thread(tmp, f"unbound-{port}.conf", port,
                              "    do-not-query-localhost: no\n    msg-cache-size: 64m\n    rrset-cache-size: 128m\n"
                              "    so-rcvbuf: 4m\n" + server_tls,
                              "forward-zone:\n    name: \".\"\n"
                              + (zone_tls or f"    forward-addr: 127.0.0.1@{upstream}\n")
                              + ("    forward-tcp-upstream: yes\n" if tcp_upstream and not tls else ""))


def nodecache_corefile(tmp: Path, port: int, upstream: int, capacity: int = 0, bind: str = "127.0.0.1",
                       tls: Encrypted | None = None) -> Path:
    """``bind`` "": no bind, every address (the agent's wildcard-socket transport)."""
    conf = tmp / f"Corefile-miss-{port}"
    cache = f"cache {{\n        success {capacity}\n        denial {capacity}\n    }}" if capacity else "cache"
    to, options = tls.nodecache_forward() if tls else (f"127.0.0.1:{upstream}", "force_tcp")
    conf.write_text(f".:{port} {{\n    {cache}\n" + (f"    bind {bind}\n" if bind else "")
                    + f"    forward . {to} {{\n        {options}\n    }}\n}}\n")
    return conf


# With caches sized for more names than nodecache's default cache holds,
# its byte budget (-cache-bytes, 64 MiB by default) is sized with them, as
# unbound's cache sizes are: room for each entry (~520 B at these names)
# and its memo of the finished reply (~400 B; server.memo).
NODECACHE_BYTES_PER_ENTRY = 1024
NODECACHE_NON_DEFAULT = (
    f"with --names above 8,000: cache success/denial N*1.25 and -cache-bytes {NODECACHE_BYTES_PER_ENTRY} per "
    "entry: room for the names in use and their memos, as the peers' caches are sized for them",)
# What the peers run with that is not their default, and why (printed with the tables).
UNBOUND_NON_DEFAULT = (
    "num-threads: 1 and module-config: iterator: one core, a cache and forwarder like the others",
    "forward-zone . to the cluster DNS with forward-tcp-upstream: the same upstream over TCP",
    "so-rcvbuf: 4m: nodecache gives itself the same receive buffer (a burst at 120,000 q/s overflowed the default)",
    "msg-cache-size: 64m, rrset-cache-size: 128m: room for 100,000 names")
DNSDIST_NON_DEFAULT = (
    "newPacketCache(N) on the default pool: dnsdist caches nothing without one (N: the names in use, "
    "at least 10,000)",
    "newServer{tcpOnly=true}: the backend over TCP, as nodecache's force_tcp and unbound's forward-tcp-upstream",
    f"newServer{{checkName={UPSTREAM_ZONE!r}}}: its health check asks a name the stand-in cluster DNS answers "
    "(the default, a.root-servers.net., would mark it down here)",
    "setSecurityPollSuffix(''): no security-poll DNS query leaves the machine (network safety rule)")


def dnsdist_conf(tmp: Path, port: int, upstream: int, capacity: int = 10000, tls: Encrypted | None = None) -> Path:
    """dnsdist with stock settings but for DNSDIST_NON_DEFAULT: a packet cache
    in front of one TCP backend (the cluster DNS), or DoT/DoH with ``tls``."""
    conf = tmp / f"dnsdist-{port}.conf"
    backend = (tls.dnsdist_server(UPSTREAM_ZONE) if tls else
               f'newServer({{address="127.0.0.1:{upstream}", tcpOnly=true, checkName="{UPSTREAM_ZONE}"}})')
    conf.write_text(textwrap.dedent(f"""\
        setLocal("127.0.0.1:{port}")
        setSecurityPollSuffix("")
        {backend}
        getPool(""):setCache(newPacketCache({max(capacity, 10000)}))
        """))
    return conf


def dnsperf_at(port: int, names: list[str], qfile: Path, rate: int, duration: float, pin,
               latency: bool = False) -> dict:
    """One dnsperf run; with ``latency``, also p50/p99/p99.9 in ms from its
    per-query lines (``-v``)."""
    qfile.write_text("".join(f"{n} A\n" for n in names))
    pace = ["-Q", str(rate), "-q", "500"] if rate else ["-q", "64"]  # rate 0: closed loop, 64 in flight
    proc = subprocess.run([shutil.which("dnsperf"), "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
                           "-l", str(int(duration)), "-c", "1", "-t", "5", *pace, *(["-v"] if latency else [])],
                          capture_output=True, text=True, timeout=duration + 60, preexec_fn=pin)
    completed = re.search(r"Queries completed:\s+(\d+)", proc.stdout)
    lost = re.search(r"Queries lost:\s+(\d+)", proc.stdout)
    lat = re.search(r"Average Latency \(s\):\s+([\d.]+)", proc.stdout)
    if completed is None:
        raise RuntimeError(f"dnsperf failed: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    out = {"answered": int(completed.group(1)), "lost": int(lost.group(1)) if lost else 0,
           "avg_ms": float(lat.group(1)) * 1000 if lat else None}
    if latency:
        out["latency_ms"] = percentiles(proc.stdout)
    return out


def percentiles(verbose: str) -> dict:
    """p50/p99/p99.9 (ms) of dnsperf -v's per-query lines (``> RCODE NAME TYPE SECONDS``)."""
    seconds = []
    for line in verbose.splitlines():
        if line.startswith(">"):
            try:
                seconds.append(float(line.rsplit(None, 1)[1]))
            except (IndexError, ValueError):
                continue
    if not seconds:
        return {}
    seconds.sort()
    at = lambda q: round(seconds[min(len(seconds) - 1, int(q * len(seconds)))] * 1000, 3)  # noqa: E731
    return {"p50": at(0.5), "p99": at(0.99), "p99.9": at(0.999)}


@contextlib.contextmanager
def behind_cluster_dns(tmp: Path, free_port, pin, load_cpus: set[int], server_cls, baseline: str = "",
                       capacity: int = 0, flags: tuple[str, ...] = (), bind: str = "127.0.0.1",
                       base_flags: tuple[str, ...] = (), upstream: str = "tcp"):
    """One unbound acting as the cluster DNS (on ``load_cpus``), and nodecache,
    unbound and (when installed) dnsdist as caches forwarding to it over
    TCP (not started yet), each cache sized for ``capacity`` names (0: its
    default): yields (servers, the cluster DNS's port); all of them stop on
    exit, with any server the caller appended to the list. ``flags``: more
    `nodecache run` flags for this checkout's nodecache (not the baseline);
    ``bind``: the address both nodecaches' Corefiles bind ("": none);
    ``upstream`` tls or https: every cache forwards over DoT or DoH
    (unbound over DoT either way: it has no DoH client)."""
    if not shutil.which("dnsperf") or not shutil.which("unbound"):
        raise RuntimeError("needs dnsperf and unbound (apt-get install dnsperf unbound)")
    up_port = free_port()
    tls = Encrypted(upstream, make_pki(tmp / "pki"), free_port(), free_port()) if upstream != "tcp" else None
    upstream = subprocess.Popen([shutil.which("unbound"), "-d", "-c", str(upstream_conf(tmp, up_port, tls))],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin(load_cpus))
    nc_port, ub_port = free_port(), free_port()
    budget = ["-cache-bytes", str(capacity * NODECACHE_BYTES_PER_ENTRY)] if capacity else []
    servers = [server_cls("nodecache", [sys.executable, "-m", "nodecache", "run", "-conf",
                                        str(nodecache_corefile(tmp, nc_port, up_port, capacity, bind, tls)),
                                        "-handoff=false",
                                        "-metrics-listen-address", "", "-status-socket",
                                        str(tmp / f"status-{nc_port}"), *budget, *flags], nc_port),
               server_cls("unbound", [shutil.which("unbound"), "-d", "-c",
                                      str(unbound_forwarder_conf(tmp, ub_port, up_port, tls=tls))], ub_port)]
    if shutil.which("dnsdist"):  # the C peer closest to our design: a packet cache in front of backends
        dd_port = free_port()
        servers.append(server_cls("dnsdist", [shutil.which("dnsdist"), "--supervised", "--disable-syslog", "-C",
                                              str(dnsdist_conf(tmp, dd_port, up_port, capacity, tls))], dd_port))
    if baseline:  # another nodecache (the Python of another install), same Corefile shape
        base_port = free_port()
        servers.insert(1, server_cls("nodecache@baseline", [
            baseline, "-m", "nodecache", "run", "-conf",
            str(nodecache_corefile(tmp, base_port, up_port, capacity, bind, tls)),
            "-handoff=false", "-metrics-listen-address", "", "-status-socket", str(tmp / f"status-{base_port}"),
            *budget, *base_flags],
            base_port, cwd=str(tmp)))  # (not the checkout: its nodecache/ would shadow the baseline's)
    try:
        yield servers, up_port
    finally:
        for s in servers:
            s.stop()
        upstream.terminate()
        upstream.wait(10)


def miss_cost(rates: list[int], duration: float, rounds: int, tmp: Path, cpus: list[int],
              free_port, pin, server_cls, baseline: str = "", flags: tuple[str, ...] = (),
              base_flags: tuple[str, ...] = (), upstream: str = "tcp") -> dict:
    """{rate: {server: {cpu_us_per_miss, user_us, sys_us, latency_ms, syscalls, lost, avg_ms, runs}}}"""
    server_cpus, load_cpus = {cpus[0]}, set(cpus[1:]) or {cpus[0]}
    out: dict = {}
    with behind_cluster_dns(tmp, free_port, pin, load_cpus, server_cls, baseline, 0, flags,
                            base_flags=base_flags, upstream=upstream) as (servers, _):
        for s in servers:
            s.start(server_cpus)
        time.sleep(1.5)
        for rate in rates:
            runs: dict[str, list[dict]] = {s.name: [] for s in servers}
            for r in range(rounds):
                for s in servers:
                    names = fresh_names(f"r{rate}x{r}{s.name[0]}", rate, duration)
                    before = times(s.proc.pid)
                    res = dnsperf_at(s.port, names, tmp / "misses.txt", rate, duration, pin(load_cpus),
                                     latency=True)
                    res.update(split(before, times(s.proc.pid), res["answered"]))
                    runs[s.name].append(res)
            for name, rs in runs.items():
                rs = sorted(rs, key=lambda r: r["cpu"] or 0)
                mid = rs[len(rs) // 2]
                out.setdefault(rate, {})[name] = {
                    "cpu_us_per_miss": mid["cpu"], "runs": [r["cpu"] or 0 for r in rs],
                    "user_us": mid["user"], "sys_us": mid["sys"], "latency_ms": mid.get("latency_ms", {}),
                    "lost": sum(r["lost"] for r in rs),
                    "avg_ms": sorted(r["avg_ms"] or 0 for r in rs)[len(rs) // 2]}
            for s in servers:  # a run of its own, fresh names too: strace slows what it traces
                names = fresh_names(f"r{rate}s{s.name[0]}", rate, 2)
                out[rate][s.name]["syscalls"] = syscalls_per_query(
                    s.proc.pid, lambda: dnsperf_at(s.port, names, tmp / "misses.txt", rate, 2,
                                                   pin(load_cpus))["answered"], tmp)
    return out


def fresh_names(tag: str, rate: int, duration: float) -> list[str]:
    """Names never asked before (a prefix of this run's own), more than a run needs."""
    tag = f"{tag}{int(time.time() * 1000) % 100000}"
    return [f"{tag}-{i}.{UPSTREAM_ZONE}" for i in range(int(rate * (duration + 2)))]


def print_miss_table(table: dict, duration: float, rounds: int, upstream: str = "tcp") -> None:
    over = {"tcp": "a TCP upstream", "tls": "a DNS-over-TLS upstream",
            "https": "a DNS-over-HTTPS upstream (unbound: over TLS, it has no DoH client)"}[upstream]
    print(f"\nmisses over {over} (dnsperf -Q, names never asked before, {duration:g} s x "
          f"{rounds} alternating rounds, median; server CPU per answered query from schedstat, split into user "
          f"and system by the /proc/PID/stat tick samples; latency from dnsperf -v, median run; sysc/q: system "
          f"calls per answered query, all threads, strace -f -c in a 2 s run of its own):")
    print(f"  {'rate/s':>7} {'server':18} {'cpu us/miss':>12} {'user':>6} {'sys':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'p99.9':>7} {'runs':>24} {'lost':>5} {'x unbound':>9} {'x dnsdist':>9} {'sysc/q':>6}")
    for rate, per in table.items():
        for name, e in per.items():
            cpu = e["cpu_us_per_miss"]
            ratio = lambda peer: f"{cpu / per[peer]['cpu_us_per_miss']:.2f}" \
                if peer in per and per[peer]["cpu_us_per_miss"] and cpu else "-"  # noqa: E731
            runs = ",".join(f"{v:g}" for v in e["runs"])
            lat = e.get("latency_ms") or {}
            dash = lambda v: "-" if v is None else v  # noqa: E731
            print(f"  {rate:>7} {name:18} {dash(cpu):>12} {dash(e.get('user_us')):>6} {dash(e.get('sys_us')):>6} "
                  f"{lat.get('p50', '-'):>7} {lat.get('p99', '-'):>7} {lat.get('p99.9', '-'):>7} {runs:>24} "
                  f"{e['lost']:>5} {ratio('unbound'):>9} {ratio('dnsdist'):>9} {dash(e.get('syscalls')):>6}")


def unbound_command(tmp: Path, port: int, upstream: int) -> list[str]:
    """unbound as a one-thread cache on 127.0.0.1:port forwarding everything to upstream."""
    return [shutil.which("unbound"), "-d", "-c", str(unbound_forwarder_conf(tmp, port, upstream, False))]
