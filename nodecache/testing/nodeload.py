"""What happens to an emulated node (``testing.emunode``) while it is
measured: a pod resolving with glibc back to back, and the cluster DNS
replicas rolled and killed. Shared by the e2e tests and bench/datapaths.py."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

from .emunode import LOCAL_V4, NODE_COREFILE, UPSTREAM_V4, EmulatedNode, http_status, sh


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


def start_node_cache(n: EmulatedNode) -> subprocess.Popen:
    """The stand-in for node-cache (``testing.nodelocaldns``) on the node,
    serving 169.254.20.10 by relaying to kube-dns-upstream."""
    proc = subprocess.Popen(["ip", "netns", "exec", n.node, sys.executable, "-m", "nodecache.testing.nodelocaldns",
                             "-localip", LOCAL_V4, "-upstream", UPSTREAM_V4],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    n.procs.append(proc)
    line = proc.stdout.readline().strip()
    if line != "serving":
        raise RuntimeError(f"node-cache stand-in did not start: {line}{proc.stdout.read()}")
    return proc


def migrate(n: EmulatedNode, *flags: str, seconds: float = 6.0, rate: float = 200.0,
            drop_standby: bool = False) -> dict:
    """The DaemonSet swap from node-local-dns: node-cache serves the pod;
    under glibc lookups and ``rate`` UDP queries/s, the agent starts beside
    it (``flags`` added), then node-cache is SIGTERMed and tears its
    networking down. ``drop_standby``: delete the agent's standby interface
    first (the negative control). What the pod saw, the interface after, the
    agent's log."""
    old = start_node_cache(n)
    if n.getent("svc-1.default").returncode != 0:
        raise RuntimeError("the pod cannot resolve through the node-cache stand-in")
    lookups = Lookups(n, seconds)
    load = n.pod_load([f"svc-{i % 100}.default.svc.cluster.local" for i in range(int(rate * seconds))], rate,
                      timeout=3.0)
    lookups.start()
    time.sleep(1.0)
    # node-cache's health and metrics ports are in our Corefile too: taken until it exits
    corefile = NODE_COREFILE.replace("    errors\n", f"    errors\n    health {LOCAL_V4}:8080\n    prometheus :9253\n", 1)
    n.start_agent("-syncinterval", "60", *flags, corefile=corefile)   # the surge pod, beside node-cache
    n.wait_agent()
    standby = sh("ip", "-o", "addr", "show", "dev", STANDBY, ns=n.node, check=False).stdout
    if drop_standby:
        sh("ip", "link", "del", STANDBY, ns=n.node)
    time.sleep(1.0)
    old.send_signal(signal.SIGTERM)                # the DaemonSet deletes node-cache's pod
    old.wait(20)
    gone = time.monotonic()
    health = _health_after(n, gone)                # kubelet's liveness probe finds us
    lookups.join(40)
    paced = json.loads(load.stdout.read())
    load.wait(30)
    out = {"lookups": lookups, "paced": paced, "interface": n.interface(), "standby": standby, "health": health,
           "standby_after": sh("ip", "link", "show", STANDBY, ns=n.node, check=False).returncode == 0,
           "log": n.agent_log.read_text()}
    n.stop_agent()
    return out


def _health_after(n: EmulatedNode, since: float, limit: float = 6.0) -> float | None:
    """Seconds from ``since`` until GET http://169.254.20.10:8080/health is
    answered by the agent (node-cache held the port), or None."""
    while time.monotonic() - since < limit:
        if http_status(f"http://{LOCAL_V4}:8080/health", ns=n.node) == 200:
            return time.monotonic() - since
        time.sleep(0.2)
    return None
