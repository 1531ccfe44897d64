"""Regenerate bench/RESULTS.md: runs every benchmark and writes the tables.

    .venv/bin/python -m bench.results   # ~65 minutes on the 2-core machine (30: the soak)
    make bench                                    # the same

Each section says its method and the exact command; the numbers are the
commands' own output, pasted unedited.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PY = sys.executable

HIT_METHOD = """\
`nodecache-bench compare --hits`: nodecache, unbound (one thread) and a bare
uvloop responder (the floor for a server on uvloop's datagram transport) pinned to
CPU 0; dnsperf on CPU 1 sends 1,000 cached names at a fixed rate (`-Q`).
Server CPU (utime+stime from /proc) per answered query; servers alternate,
5 rounds of 5 s, median, every run listed."""

MISS_METHOD = """\
`nodecache-bench compare --misses`: nodecache (`cache`, `forward . UP {
force_tcp }`) and unbound (one thread, `forward-tcp-upstream: yes`) pinned to
CPU 0, both forwarding over TCP to one unbound acting as the cluster DNS
(every name under `svc.cluster.local.` answers, on CPU 1 with the load).
dnsperf on CPU 1 sends names never asked before at a fixed rate (`-Q`, so
every query is a miss, as for expired and new names on a node). Server CPU
(utime+stime from /proc) per answered query; servers alternate, 5 rounds of
5 s, median, the runs listed beside it. Target: at most 1.5x unbound."""

COALESCE_METHOD = """\
`nodecache-bench compare --hits ... --misses ... --flags=-udp-coalesce=2ms --baseline .venv/bin/python`:
`nodecache` is this checkout with `-udp-coalesce=2ms` (a busy socket read by a 2 ms timer,
all queued at once, the misses' upstream queries one write per poll and their replies read
by the next: server/udpbatch.py, upstream/cork.py), `nodecache@baseline` the same code with
its defaults, beside unbound, dnsdist (packet cache, TCP backend) and the bare uvloop
responder, all pinned to CPU 0; dnsperf (`-Q`, one client) and the stand-in cluster DNS
(unbound) on CPU 1. Hits over 1,000, 8,000
and 100,000 cached names at 1,000-80,000 q/s, misses (names never asked before, over TCP)
at 1,000 and 5,000/s; 3 alternating rounds of 5 s, median. CPU per answered query exact
from schedstat, user/system split from the tick samples, latency percentiles from dnsperf's
per-query lines (the median run), system calls per query from `strace -f -c` in a 2 s run
of its own. `x baseline`: the coalescing build's CPU over the default's, within one run."""

ABUSE_METHOD = """\
`python -m bench.abuse`: a fresh `nodecache run` per scenario (pinned to CPU 0; the
emulated upstream, the clients and the abuser on CPU 1, the abuser in a
process of its own). A well-behaved client on 127.0.0.2 sends 200 queries/s
(90% cached, 10% new names) and a TCP query each second; the hostile client
on 127.0.0.1 runs one abuse for 8 s. VmRSS sampled every 100 ms; hit latency
is the agent's, miss latency includes the shared single-threaded upstream,
which the abuser loads too."""

SECTIONS = [
    ("Cost of a cache hit", ["-m", "bench.hotpath", "--rounds", "5"], """\
1. *Handler only*: on a warm cache of 300 cluster names, ~1M hits, user CPU
   of this process per hit: the UDP transport's one-datagram handler with the
   kernel left out (`readable_one`, fed from a list; a memoised reply after
   the first pass, see docs/architecture.md) and the full hit path it
   avoids (`QueryPath.dispatch` over TCP: scan in place, route by zone, cache lookup,
   render, count). A warm loop: real rates cost 2-4x more per hit (next
   sections).
2. *Real UDP socket*: each server runs as its own process on 127.0.0.1; a
   client keeps 64 queries in flight over the same 300 cached names, 200,000
   answered queries per run; the server's own CPU (utime+stime from
   /proc/PID/stat) divided by the queries it answered. Servers alternate over
   5 rounds; the median run is shown with the min..max. The bare uvloop
   responder (receive, copy the ID into a fixed reply, send) is the floor for
   a server on uvloop's datagram transport; unbound runs with one thread as a cache in
   front of the same emulated upstream."""),
    ("Cost of a cache hit at fixed rates", ["-m", "nodecache_bench.cli", "compare", "--scenarios", "",
                                            "--hits", "5000,30000,80000", "--duration", "5", "--rounds", "5"],
     HIT_METHOD),
    ("Side by side: nodecache, unbound, dnsmasq", ["-m", "nodecache_bench.cli", "compare", "--duration", "5",
                                                   "--rounds", "3"], """\
`nodecache-bench compare`: each server is an equivalent cache on 127.0.0.1
in front of the same emulated cluster DNS, pinned to CPU 0; the load
generator (one worker) and the upstream on CPU 1. Scenarios: `hits` (300
names, all cached), `zipf` (10,000 names, Zipf s=1), `nxdomain` (unique
random names: every query a miss), `pod` (glibc-style lookups: search list,
A+AAAA in parallel, at 200 lookups/s). Saturation: closed loop, 64 in flight;
p50/p99 at half of each server's own saturation rate, open loop; CPU µs per
query from the server's own accounting; servers alternate, 3 rounds, median.
The last line is the generator's drive rate: dnsperf and nodecache-bench
the same way (closed loop, one core, 64 in flight) against unbound, the
fastest server here, so that the generators are what is measured; 2
alternating rounds, median."""),
    ("Cost of a cache miss", ["-m", "nodecache_bench.cli", "compare", "--scenarios", "", "--misses",
                              "1000,5000", "--duration", "5", "--rounds", "5"], MISS_METHOD),
    ("Cost of a miss over DNS over TLS and HTTPS",
     ["-m", "bench.tlsmisses"], """\
`nodecache-bench compare --misses 1000 --upstream tls|https`: the miss table's method, with
the stand-in cluster DNS (unbound, certificate from a CA made by openssl) serving DNS over
TLS and HTTPS, and every cache forwarding over it: nodecache (`forward . tls://...` or
`https://...`, `tls CA`, `tls_servername`), unbound (`forward-tls-upstream: yes`, also in
the DoH table: it has no DoH client) and dnsdist (`newServer{tls="openssl"}`, with
`dohPath` for DoH), then the plain TCP table of the same run for scale. 3 alternating
rounds of 5 s, median."""),
    ("TLS handshakes per 1,000 misses",
     ["-m", "nodecache_bench.cli", "handshakes", "--rate", "1000", "--duration", "5", "--expire", "0.5"], """\
`nodecache-bench handshakes`: one forwarder in the benchmark's process sends 1,000 names
never asked before per second to unbound and dnsdist over DoT and DoH, its connections
recycled every 0.5 s (the default `expire` is 10 s: 20 times fewer handshakes than here),
with session resumption on and, as the control, off. Per 1,000 misses: new connections,
full and resumed handshakes, the process's CPU per miss."""),
    ("Coalescing (-udp-coalesce): hits and misses against the C peers",
     ["-m", "nodecache_bench.cli", "compare", "--scenarios", "", "--servers", "", "--hits", "1000,5000,30000,80000",
      "--names", "1000,8000,100000", "--misses", "1000,5000", "--rounds", "3", "--duration", "5",
      "--baseline", ".venv/bin/python", "--flags=-udp-coalesce=2ms"], COALESCE_METHOD),
    ("One hostile client: memory and fairness", ["-m", "bench.abuse", "--seconds", "8"], ABUSE_METHOD),
    ("Hostile input: 1,000,000 packets", ["-m", "bench.fuzz"], """\
A running agent (per-client limits lifted so that every packet reaches the
parsers) gets 1,000,000 hostile UDP packets at 8,000/s and abusive TCP
clients; a well-behaved client sends 100 queries/s throughout."""),
    ("Coverage-guided fuzzing", ["-m", "bench.guided", "--seconds", "120"], """\
`python -m bench.guided`: each target of `nodecache_lab.fuzz` (query scan and
parse with the fast/slow agreement, upstream reply analysis and rendering, TCP framing,
snapshot decoding, the Corefile parser, the kube-dns ConfigMap reader) under atheris
(libFuzzer) for 120 s from the seed corpus in tests/data/fuzz. `cov`/`ft`: libFuzzer's
edges and features over the instrumented nodecache and dnslib code. A finding fails the
command. `make test` runs each for 4,000-20,000 inputs."""),
    ("Soak: 30 minutes of mixed traffic and churn", ["-m", "bench.soak", "--minutes", "30",
                                                    "--handoff", "300", "--sample", "60",
                                                    "--plot", "bench/soak.png"], """\
`python -m bench.soak`: one `nodecache run` (the demo's two-zone Corefile) for 30
minutes: pods on 127.0.0.2 at 1,500 UDP queries/s (70% cached names, 10% never-asked
names, 20% ndots:5 search walks) plus a TCP client; a hostile client on 127.0.0.3 (2,000
distinct misses and garbage datagrams/s); the cluster DNS replica replaced every 2 min, a
hot handoff to a new process every 5 min, a Corefile change + reload every 2.5 min. Per
minute: the serving process's RSS and fds (/proc), tasks, cache entries, memos, slow-path
queries in flight (status socket), the pods' rate, p99, lost (no reply in 3 s) and failed
(SERVFAIL/REFUSED/FORMERR/NOTIMP) queries. Plot: [soak.png](soak.png)."""),
    ("Every guarantee per datapath", ["-m", "bench.datapaths"], """\
`python -m bench.datapaths` (root): the emulated node (namespaces, glibc in a pod,
two CoreDNS replicas behind the ClusterIPs) with kube-proxy in iptables mode (DNAT rules)
and in nftables mode (its `ip`/`ip6 kube-proxy` tables as proxier.go writes them, no
iptables for the agent), `-rules auto`. The same events in both: SIGKILL + restart with
pods on the kube-dns ClusterIP; SIGKILL and 3 s down with pods on the link-local address;
3 hot handoffs under glibc lookups and 200 UDP q/s; CoreDNS replicas rolled, OOM-killed and
both gone for a second under 300 misses/s."""),
    ("Hot handoff", ["-m", "nodecache_bench.handoff", "--handoffs", "30"], """\
(1) In one process, an agent whose cache holds N entries publishes its
handoff socket and a heir takes over in a thread (connect to END = donor
serialising + transfer; then decode on the heir, then restore into the
heir's cache). (2) Real `nodecache run` processes on 127.0.0.1 with an
in-process emulated upstream; a constant open-loop UDP load at 5,000
queries/s over 8 sockets plus a TCP client (one query at a time,
reconnecting when the server closes the connection, as RFC 7766 clients do),
400 cached names; 30 back-to-back handoffs, each followed by SIGTERM to the
donor. Every query is accounted for (3 s patience)."""),
    ("Hot handoff with a DNS-over-TLS upstream",
     ["-m", "nodecache_bench.handoff", "--handoffs", "10", "--upstream", "tls"], """\
The hot handoff table's method with a real unbound as the cluster DNS, reached over DNS
over TLS, and one query in ten a name never asked before, so misses are in flight over
TLS at each handoff; 10 handoffs. The heir opens its own TLS connections: TLS state
cannot move between processes."""),
    ("Probe cost: exec against HTTP", ["-m", "bench.probes"], """\
`python -m bench.probes`: a `nodecache run` on loopback serving /health and /ready.
Exec: 15 runs of `nodecache probe ready` (what the DaemonSet's probes ran until this
release), each child's own CPU (getrusage) and peak RSS, median. HTTP: 500 GETs of
/ready, the agent's CPU per GET from /proc and this Python client's CPU (an upper bound
for kubelet's Go client). Per node at the manifest's periods (readiness 2 s, liveness
10 s)."""),
    ("Memory", ["-m", "bench.memory"], """\
Bytes per entry two ways: tracemalloc around inserting 10,000 and 100,000
one-A-record entries into one cache (what an entry costs beyond its
records), and the VmRSS of a `nodecache run` (four blocks of node-cache's
shape) filled through the real query path to 10,000 and then 100,000
entries (everything: records, keys, allocator slack, the slow path's own
growth). The DaemonSet's memory limit is sized from this, and its request
from the idle figure with the interface and rules set up (38 MiB on an
emulated node: pyroute2's IPRoute adds ~4 MiB, its whole package ~9.5) plus a
few thousand names."""),
    ("Search path: ndots:5 walks with k8s_schema off and on",
     ["-m", "nodecache_bench.cli", "searchpath", "--rate", "50", "--duration", "5", "--rounds", "2"], """`nodecache-bench searchpath`: a pod in namespace default looks up external
names never asked before, as glibc's getaddrinfo walks them (A and AAAA at
each step, the next step on NXDOMAIN): three steps under cluster.local, one
node search domain, then the name. The cluster DNS (1 ms) and an external
resolver (20 ms) are emulated on loopback; the agent is a real `nodecache
run`. Per lookup: the queries each upstream saw, latency p50/p99."""),
]


def main(argv: list[str] | None = None) -> int:
    """All sections, or (``--only TEXT...``) those whose title contains one of
    the texts, the others kept as the current RESULTS.md has them."""
    import argparse
    ap = argparse.ArgumentParser(description="Regenerate bench/RESULTS.md")
    ap.add_argument("--only", nargs="*", default=[], help="rerun only sections whose title contains TEXT")
    args = ap.parse_args(argv)
    root = BENCH.parent
    kept = _current_sections() if args.only else {}
    parts = [f"""# Benchmark results

Generated by `.venv/bin/python -m bench.results` on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores,
Python {platform.python_version()}, Linux {platform.release()}. The machine is shared and noisy:
compare figures within a table (one run, side by side), not across tables or runs.
"""]
    for title, cmd, method in SECTIONS:
        if args.only and not any(text in title for text in args.only) and title in kept:
            parts.append(kept[title])
            continue
        print(f"running: {title}", file=sys.stderr)
        proc = subprocess.run([PY, *cmd], cwd=root, capture_output=True, text=True, timeout=3600)
        output = proc.stdout.strip() or proc.stderr.strip()
        parts.append(f"## {title}\n\nCommand: `.venv/bin/python {' '.join(cmd)}`\n\n{method}\n\n```\n{output}\n```\n")
    (BENCH / "RESULTS.md").write_text("\n".join(parts) + "\n" + POINTER)
    return 0


POINTER = "How to read these figures, why they come out so, and what was tried: bench/READING.md.\n"


def _current_sections() -> dict[str, str]:
    """The sections of the current RESULTS.md, by title (each up to the next
    section or the pointer to READING.md)."""
    text = (BENCH / "RESULTS.md").read_text()
    if POINTER in text:
        text = text[:text.index(POINTER)]
    out = {}
    for block in text.split("\n## ")[1:]:
        title = block.split("\n", 1)[0]
        out[title] = "## " + block.rstrip("\n") + "\n"
    return out


if __name__ == "__main__":
    raise SystemExit(main())
