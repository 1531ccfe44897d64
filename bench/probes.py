"""What kubelet's probes cost a node: exec probes (``nodecache probe``, a
Python process per probe) against HTTP probes (kubelet connects to /ready and
/health itself), on a real ``nodecache run`` on loopback.

    python -m bench.probes [--exec N] [--http N]

Exec: N runs of ``nodecache probe ready``, each timed (wall) and charged
its own CPU (utime+stime of the child, from getrusage) and peak RSS. HTTP:
N GETs of /ready; the agent's CPU per GET from /proc, and this client's own
CPU per GET as an upper bound of kubelet's side (a Go HTTP client does
less). Then both at the manifest's periods (readiness every 2 s, liveness
every 10 s): cores used per node, all the time."""
from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nodecache.emulated.client import free_port

from nodecache_bench.procs import CLI

PROBES_PER_S = 1 / 2 + 1 / 10  # readiness every 2 s + liveness every 10 s (daemonset/base)


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _corefile(port: int, http: int) -> str:
    return f""".:{port} {{
    bind 127.0.0.1
    health 127.0.0.1:{http}
    ready 127.0.0.1:{http}
}}
"""


def _get(port: int, path: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\nUser-Agent: kube-probe\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    return int(data.split(b" ", 2)[1])


def _wait_ready(http: int, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if _get(http, "/ready") == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the agent did not become ready")


def measure(exec_runs: int, http_runs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        dns = free_port()
        http = free_port()
        while http == dns:
            http = free_port()
        conf = Path(tmp) / "Corefile"
        conf.write_text(_corefile(dns, http))
        status = f"{tmp}/status.sock"
        agent = subprocess.Popen(CLI + ["run", "-conf", str(conf), "-handoff=false", "-metrics-listen-address", "",
                                        "-status-socket", status], stdout=open(f"{tmp}/agent.log", "w"),
                                 stderr=subprocess.STDOUT)
        try:
            try:
                _wait_ready(http)
            except RuntimeError:
                raise RuntimeError(f"the agent did not become ready: {Path(tmp, 'agent.log').read_text()}") from None
            walls, cpus, rss = [], [], 0
            for _ in range(exec_runs):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.monotonic()
                done = subprocess.run(CLI + ["probe", "ready", "-status-socket", status], capture_output=True)
                walls.append(time.monotonic() - t0)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                assert done.returncode == 0, done.stdout
                cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                rss = max(rss, after.ru_maxrss)
            agent_before, me_before = _cpu_of(agent.pid), time.process_time()
            t0 = time.monotonic()
            for _ in range(http_runs):
                assert _get(http, "/ready") == 200
            http_wall = (time.monotonic() - t0) / http_runs
            agent_cpu = (_cpu_of(agent.pid) - agent_before) / http_runs
            client_cpu = (time.process_time() - me_before) / http_runs
        finally:
            agent.terminate()
            agent.wait(20)
    walls.sort()
    cpus.sort()
    return {"exec_wall": walls[len(walls) // 2], "exec_cpu": cpus[len(cpus) // 2], "exec_rss_kib": rss,
            "http_wall": http_wall, "http_agent_cpu": agent_cpu, "http_client_cpu": client_cpu,
            "exec_runs": exec_runs, "http_runs": http_runs}


def render(m: dict) -> str:
    exec_cores = m["exec_cpu"] * PROBES_PER_S
    http_cores = (m["http_agent_cpu"] + m["http_client_cpu"]) * PROBES_PER_S
    return "\n".join([
        f"exec probe (`nodecache probe ready`, {m['exec_runs']} runs, median): wall {m['exec_wall'] * 1000:.0f} ms, "
        f"CPU {m['exec_cpu'] * 1000:.0f} ms, peak RSS {m['exec_rss_kib'] / 1024:.0f} MiB",
        f"HTTP probe (GET /ready, {m['http_runs']} runs, mean): wall {m['http_wall'] * 1000:.2f} ms, agent CPU "
        f"{m['http_agent_cpu'] * 1e6:.0f} us, client CPU {m['http_client_cpu'] * 1e6:.0f} us (Python; kubelet's "
        f"Go client less)",
        f"at the manifest's periods ({PROBES_PER_S:.1f} probes/s per node): exec {exec_cores * 1000:.1f} "
        f"millicores, HTTP {http_cores * 1000:.3f} millicores ({exec_cores / http_cores:.0f}x less); the "
        f"startup probe (exec) runs only until the pod serves, about once per pod start",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exec", dest="exec_runs", type=int, default=15)
    ap.add_argument("--http", dest="http_runs", type=int, default=500)
    args = ap.parse_args(argv)
    if args.exec_runs < 1 or args.http_runs < 1:
        print("probes: --exec and --http must be at least 1", file=sys.stderr)
        return 2
    print(render(measure(args.exec_runs, args.http_runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
