"""What happens to an emulated node (``nodecache_lab.emunode``) while it is
measured: a pod resolving with glibc back to back, and the cluster DNS
replicas rolled and killed. Shared by the e2e tests and bench/datapaths.py."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

from .emunode import CLUSTER_V4, LOCAL_V4, LOCAL_V6, NODE_COREFILE, UPSTREAM_V4, EmulatedNode, http_status, sh
from . import lab_env
from .layouts import LAYOUTS, Layout


class Lookups:
    """glibc lookups from the pod, back to back in ``workers`` threads, each
    a distinct name (misses and hits). Several workers, because a lookup
    whose query dies with a killed agent holds its thread for glibc's 5 s
    timeout: the others go on sampling what happens meanwhile."""

    def __init__(self, n: EmulatedNode, seconds: float, workers: int = 3):
        self.n, self.seconds = n, seconds
        self.results: list[tuple[str, int]] = []
        self.seconds_each: list[float] = []  # how long each lookup took (a glibc retry shows here)
        self.started: list[float] = []       # when each began (time.monotonic)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(k, workers), daemon=True) for k in range(workers)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _run(self, k: int, workers: int) -> None:
        end, i = time.monotonic() + self.seconds, k
        time.sleep(0.02 * k)  # spread the workers over a lookup's duration
        while time.monotonic() < end:
            name = f"svc-{i % 100}.default"
            t0 = time.monotonic()
            try:
                code = self.n.getent(name, timeout=20).returncode
            except subprocess.TimeoutExpired:
                code = -1  # no answer at all
            with self._lock:
                self.seconds_each.append(time.monotonic() - t0)
                self.started.append(t0)
                self.results.append((name, code))
            i += workers
            time.sleep(0.05)

    @property
    def failed(self) -> list:
        return [r for r in self.results if r[1] != 0]

    @property
    def slow(self) -> list[float]:
        """Lookups that took over a second (a resolver timeout and retry)."""
        return [t for t in self.seconds_each if t > 1.0]


def churn(n: EmulatedNode) -> None:
    """The upstream events, about 8 s in all: a rolling update one replica at
    a time, one OOM-killed while kube-proxy still sends to it, then no
    endpoint answering for a second."""
    time.sleep(1.0)
    for i in (0, 1):
        n.stop_replica(i, signal.SIGTERM)
        time.sleep(0.3)
        n.start_replica(i)
        time.sleep(0.7)
    n.stop_replica(0, signal.SIGKILL)
    time.sleep(1.0)
    n.start_replica(0)
    time.sleep(0.5)
    n.stop_replica(0, signal.SIGKILL)
    n.stop_replica(1, signal.SIGKILL)
    time.sleep(1.0)
    n.start_replica(0, wait=False)
    n.start_replica(1)


STANDBY = "nodelocaldns-nc"


def start_node_cache(n: EmulatedNode, layout: Layout = LAYOUTS["upstream"]) -> subprocess.Popen:
    """The stand-in for node-cache (``nodecache_lab.nodelocaldns``) on the node,
    as ``layout``'s installer runs it, relaying to kube-dns-upstream."""
    cmd = [sys.executable, "-m", "nodecache_lab.nodelocaldns", "-localip", layout.local_ip,
           "-upstream", UPSTREAM_V4, "-health", layout.health, f"-setupiptables={str(layout.setup_iptables).lower()}"]
    proc = subprocess.Popen(["ip", "netns", "exec", n.node, *cmd, *(["-bind-all"] if layout.bind_all else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=lab_env())
    n.procs.append(proc)
    line = proc.stdout.readline().strip()
    if line != "serving":
        raise RuntimeError(f"node-cache stand-in did not start: {line}{proc.stdout.read()}")
    return proc


def _agent_corefile(layout: Layout) -> str:
    """What the agent reads: upstream's layout, the emulated node's Corefile
    with node-cache's health and metrics ports (taken until it exits); any
    other, the installer's own Corefile (what its overlay keeps or copies)."""
    if layout.name == "upstream":
        return NODE_COREFILE.replace("    errors\n", f"    errors\n    health {LOCAL_V4}:8080\n    prometheus :9253\n", 1)
    return layout.corefile(CLUSTER_V4)


def _stop(proc: subprocess.Popen, kill_after: float | None) -> None:
    """The pod's deletion: SIGTERM, and SIGKILL when its grace period ends."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(kill_after if kill_after is not None else 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def migrate(n: EmulatedNode, *flags: str, seconds: float = 6.0, rate: float = 200.0,
            drop_standby: bool = False, layout: Layout = LAYOUTS["upstream"],
            local_ips: str | None = None, corefile: str | None = None) -> dict:
    """The DaemonSet swap from node-local-dns as ``layout``'s installer runs
    it: node-cache serves the pod, which asks the layout's address; under
    glibc lookups and ``rate`` UDP queries/s, the agent starts beside it
    (``flags`` added; ``local_ips``: its -localip, by default the layout's
    address and, upstream's, fd00::10; ``corefile``: what it reads, by
    default the installer's), then node-cache's pod is deleted and
    it tears its networking down. ``drop_standby``: delete the agent's
    standby interface first (the negative control). What the pod saw, the
    interface after, the agent's log."""
    n.pod_nameserver(layout.local_ip)
    old = start_node_cache(n, layout)
    if n.getent("svc-1.default").returncode != 0:
        raise RuntimeError("the pod cannot resolve through the node-cache stand-in")
    lookups = Lookups(n, seconds)
    load = n.pod_load([f"svc-{i % 100}.default.svc.cluster.local" for i in range(int(rate * seconds))], rate,
                      target=layout.local_ip, timeout=3.0)
    lookups.start()
    time.sleep(1.0)
    if local_ips is None:
        local_ips = f"{LOCAL_V4},{LOCAL_V6}" if layout.name == "upstream" else layout.local_ip
    n.start_agent("-syncinterval", "60", *flags, corefile=corefile or _agent_corefile(layout),
                  local_ips=local_ips)
    n.wait_agent(needle="rules in place" if layout.setup_iptables else "serving")   # the surge pod
    standby = sh("ip", "-o", "addr", "show", "dev", STANDBY, ns=n.node, check=False).stdout
    if drop_standby:
        sh("ip", "link", "del", STANDBY, ns=n.node)
    time.sleep(1.0)
    _stop(old, layout.kill_after)                  # the DaemonSet (or helm uninstall) deletes node-cache's pod
    gone = time.monotonic()
    health = _health_after(n, gone, layout.health_url)  # kubelet's liveness probe finds us
    lookups.join(40)
    paced = json.loads(load.stdout.read())
    load.wait(30)
    out = {"lookups": lookups, "paced": paced, "interface": n.interface(), "standby": standby, "health": health,
           "standby_after": sh("ip", "link", "show", STANDBY, ns=n.node, check=False).returncode == 0,
           "log": n.agent_log.read_text(), "rules": n.rules()}
    n.stop_agent()
    return out


def _health_after(n: EmulatedNode, since: float, url: str, limit: float = 6.0) -> float | None:
    """Seconds from ``since`` until GET ``url`` (the liveness probe's) is
    answered by the agent (node-cache held the port), or None."""
    while time.monotonic() - since < limit:
        if http_status(url, ns=n.node) == 200:
            return time.monotonic() - since
        time.sleep(0.2)
    return None
