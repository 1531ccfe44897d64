"""Cilium's Local Redirect Policy on an emulated node (root): agent pods in
the pod network, and a stand-in for Cilium's redirect.

Each agent "pod" is a network namespace of its own with a veth to the node
and its own address (169.254.40.2, 169.254.41.2, ...), running ``nodecache
run`` with node-cache's LRP flags (``-skipteardown=true
-setupinterface=false -setupiptables=false``), ``bind 0.0.0.0``, health and
readiness on the pod's address, and the DaemonSet's shared hostPath
handoff directory. Their resolv.conf is the node's (``dnsPolicy: Default``).

``Redirect`` plays Cilium: every ``period`` seconds (kubelet's readiness
probe feeding the endpoint's Ready condition, which Cilium follows) it asks
each pod's ``/ready`` and rewrites, in one nft transaction, the DNAT of the
kube-dns ClusterIP (``table ip lrp``, before kube-proxy's DNAT) to the
Ready local pods; with none Ready the chain is empty and kube-proxy's DNAT
sends the query to CoreDNS, as Cilium does without a local backend (PR
#41463). A backend it drops has its conntrack entries deleted, as
kube-proxy does for a removed UDP endpoint. ``gated=False`` models
redirection that ignores readiness: a pod is a backend from the moment its
process starts until it exits (the negative control).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

from .emunode import CLUSTER_V4, UPSTREAM_V4, EmulatedNode, enter_netns, http_status, sh
from .nodeload import Lookups

LRP_COREFILE = """\
cluster.local:53 {
    errors
    cache {
        success 9984 30
        denial 9984 5
    }
    reload
    bind 0.0.0.0
    forward . __PILLAR__CLUSTER__DNS__ {
        force_tcp
    }
    prometheus :9253
    health :8080
    ready :8181
}
.:53 {
    errors
    cache 30
    bind 0.0.0.0
    forward . __PILLAR__UPSTREAM__SERVERS__
    prometheus :9253
}
"""
LRP_FLAGS = ("-skipteardown=true", "-setupinterface=false", "-setupiptables=false")


def pod_ip(i: int) -> str:
    return f"169.254.{40 + i}.2"


def _get_ready(ip: str, timeout: float) -> bool:
    return http_status(f"http://{ip}:8181/ready", timeout) == 200


class AgentPods:
    """Agent pods on ``n``; ``start(i)`` runs pod i's agent."""

    def __init__(self, n: EmulatedNode, count: int = 2):
        self.n = n
        self.names = [f"{n.node[:-5]}-lrp{i}" for i in range(count)]
        for i, name in enumerate(self.names):
            n._netns(name)
            n._link(name, 40 + i)
            n._etc_file(name, "resolv.conf", f"nameserver {UPSTREAM_V4}\n")
        self.procs: dict[int, subprocess.Popen] = {}
        (n.tmp / "Corefile.lrp").write_text(LRP_COREFILE)

    def start(self, i: int, handoff_dir: str, *extra: str) -> subprocess.Popen:
        n = self.n
        log = n.tmp / f"lrp{i}.log"
        cmd = ["ip", "netns", "exec", self.names[i], sys.executable, "-m", "nodecache", "run",
               "-localip", f"169.254.20.10,{CLUSTER_V4}", "-conf", str(n.tmp / f"Corefile.lrp{i}"),
               "-basecorefile", str(n.tmp / "Corefile.lrp"), "-upstreamsvc", "kube-dns-upstream",
               *LRP_FLAGS, "-handoff-dir", handoff_dir, "-status-socket", str(n.tmp / f"lrp{i}.status"),
               "-metrics-listen-address", "", *extra]
        env = dict(os.environ, KUBE_DNS_UPSTREAM_SERVICE_HOST=UPSTREAM_V4, KUBE_DNS_SERVICE_HOST=CLUSTER_V4)
        proc = subprocess.Popen(cmd, stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env)
        n.procs.append(proc)
        self.procs[i] = proc
        return proc

    def touched(self) -> list[str]:
        """Any interface or rule of ours in the node's or a pod's namespace
        (there must be none: -setupinterface=false -setupiptables=false)."""
        found = []
        for ns in [self.n.node, *self.names]:
            if sh("ip", "link", "show", "nodelocaldns", ns=ns, check=False).returncode == 0:
                found.append(f"{ns}: interface nodelocaldns")
            if "nodecache" in sh("nft", "list", "tables", ns=ns, check=False).stdout:
                found.append(f"{ns}: nft table nodecache")
            if "nodecache" in sh("iptables-save", ns=ns, check=False).stdout:
                found.append(f"{ns}: iptables rules")
        return found

    def log(self, i: int) -> str:
        return (self.n.tmp / f"lrp{i}.log").read_text()

    def ready(self, i: int, timeout: float = 0.15) -> bool:
        """Pod i's /ready, asked from the node as kubelet asks it (in a
        thread that enters the node's namespace)."""
        return http_status(f"http://{pod_ip(i)}:8181/ready", timeout, ns=self.n.node) == 200

    def wait_ready(self, i: int, limit: float = 20.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            if self.procs[i].poll() is not None:
                raise RuntimeError(f"agent pod {i} exited: {self.log(i)}")
            if self.ready(i):
                return time.monotonic() - t0
            time.sleep(0.05)
        raise RuntimeError(f"agent pod {i} not ready: {self.log(i)}")


class Redirect(threading.Thread):
    """The LRP stand-in (see the top); ``changes`` logs (time, backends)."""

    def __init__(self, n: EmulatedNode, pods: AgentPods, period: float = 0.2, gated: bool = True):
        super().__init__(daemon=True)
        self.n, self.pods, self.period, self.gated = n, pods, period, gated
        self.backends: tuple[int, ...] = ()
        self.changes: list[tuple[float, tuple[int, ...]]] = []
        self.stopped = threading.Event()
        sh("nft", "-f", "-", ns=n.node, input_text="table ip lrp {\n chain pre {\n"
           "  type nat hook prerouting priority dstnat - 10; policy accept;\n }\n}\n")

    def _wanted(self) -> tuple[int, ...]:
        if self.gated:  # this thread is in the node's namespace (run)
            return tuple(i for i in sorted(self.pods.procs) if _get_ready(pod_ip(i), 0.15))
        return tuple(i for i, p in sorted(self.pods.procs.items()) if p.poll() is None)

    def _apply(self, backends: tuple[int, ...]) -> None:
        lines = ["flush chain ip lrp pre"]
        if backends:
            ips = [pod_ip(i) for i in backends]
            to = ips[0] if len(ips) == 1 else \
                "numgen random mod %d map { %s }" % (len(ips), ", ".join(f"{k} : {ip}" for k, ip in enumerate(ips)))
            for proto in ("udp", "tcp"):
                lines.append(f"add rule ip lrp pre ip daddr {CLUSTER_V4} {proto} dport 53 dnat to {to}")
        sh("nft", "-f", "-", ns=self.n.node, input_text="\n".join(lines) + "\n")
        for gone in set(self.backends) - set(backends):
            sh("conntrack", "-D", "-d", CLUSTER_V4, "-r", pod_ip(gone), ns=self.n.node, check=False)
        self.backends = backends
        self.changes.append((time.monotonic(), backends))

    def run(self) -> None:
        enter_netns(self.n.node)
        while not self.stopped.is_set():
            wanted = self._wanted()
            if wanted != self.backends:
                self._apply(wanted)
            self.stopped.wait(self.period)

    def wait_for(self, backends: tuple[int, ...], limit: float = 5.0) -> None:
        deadline = time.monotonic() + limit
        while self.backends != backends:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the redirect has {self.backends}, not {backends}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


WARM = re.compile(r"^svc-\d+\.default\.svc\.cluster\.local\.?$")


def refill(n: EmulatedNode, marks: list[int]) -> int:
    """The cluster DNS's A queries for the warm names since ``marks``
    (``upstream_marks``; glibc's AAAA queries were never warmed)."""
    return sum(1 for _, qtype, name in n.upstream_log(after=marks) if qtype == 1 and WARM.match(name))


def surge_rollout(n: EmulatedNode, gated: bool = True, shared_handoff: bool = True,
                  rate: float = 200.0, seconds: float = 9.0) -> dict:
    """Pod 0 serves and caches 100 names; under glibc lookups and ``rate``
    UDP queries/s to the kube-dns ClusterIP, pod 1 starts (the surge pod),
    becomes Ready, then pod 0 is SIGTERMed. What the client saw, the
    refill, how soon pod 0 was unready, both logs, the redirect's changes."""
    pods = AgentPods(n)
    redirect = Redirect(n, pods, gated=gated)
    pods.start(0, str(n.tmp / "handoff"))
    pods.wait_ready(0)
    redirect.start()
    redirect.wait_for((0,))                         # pod 0 is the backend before anything is asked
    n.pod_nameserver(CLUSTER_V4)
    names = [f"svc-{i % 100}.default.svc.cluster.local" for i in range(int(rate * seconds))]
    n.pod_load(names[:200], rate, target=CLUSTER_V4).wait(30)   # pod 0 caches every name
    time.sleep(0.5)
    load = n.pod_load(names, rate, target=CLUSTER_V4, timeout=3.0)
    lookups = Lookups(n, seconds)
    lookups.start()
    time.sleep(1.0)
    before = n.upstream_marks()
    pods.start(1, str(n.tmp / ("handoff" if shared_handoff else "handoff-other")))
    ready_in = pods.wait_ready(1)
    time.sleep(1.0)                                 # the redirect sees it Ready
    pods.procs[0].send_signal(signal.SIGTERM)       # the DaemonSet deletes the old pod
    unready_after, t0 = None, time.monotonic()
    while time.monotonic() - t0 < 3 and unready_after is None:
        if not pods.ready(0):
            unready_after = time.monotonic() - t0
        time.sleep(0.02)
    touched = pods.touched()
    lookups.join(60)
    paced = json.loads(load.stdout.read())
    load.wait(30)
    pods.procs[0].wait(20)
    redirect.stop()
    warm = re.search(r"serving with (\d+) cache entries", pods.log(1))
    return {"lookups": lookups, "paced": paced, "refill": refill(n, before), "unready_after": unready_after,
            "ready_in": ready_in, "warm_entries": int(warm.group(1)) if warm else 0, "logs": (pods.log(0), pods.log(1)), "changes": redirect.changes,
            "touched": touched + pods.touched()}


def lone_backend_killed(n: EmulatedNode, seconds: float = 9.0) -> dict:
    """The only agent pod SIGKILLed under glibc lookups: when the redirect
    fell back to the cluster DNS, and each lookup's (start, exit code)."""
    pods = AgentPods(n, count=1)
    redirect = Redirect(n, pods)
    pods.start(0, str(n.tmp / "handoff"))
    pods.wait_ready(0)
    redirect.start()
    redirect.wait_for((0,))
    n.pod_nameserver(CLUSTER_V4)
    lookups = Lookups(n, seconds)
    lookups.start()
    time.sleep(1.5)
    pods.procs[0].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    pods.procs[0].wait(10)
    lookups.join(60)
    redirect.stop()
    fallback = next((t - killed for t, backends in redirect.changes if t > killed and backends == ()), None)
    after = [(t, code) for t, (_, code) in zip(lookups.started, lookups.results) if t >= killed]
    return {"killed": killed, "fallback_after": fallback, "after_kill": after,
            "failed": len(lookups.failed), "lookups": len(lookups.results), "slow": len(lookups.slow)}
