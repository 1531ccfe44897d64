"""An emulated Kubernetes node in network namespaces, for end-to-end tests
and benchmarks (root only).

Topology (every address link-local 169.254.0.0/16 or fd00::/8):

    pod  (169.254.10.2, fd00:10::2) --veth--+
    pod6 (169.254.16.2, fd00:16::2) --veth--+-- node: the agent, interface
    up0  (169.254.11.2, fd00:11::2) --veth--+   "nodelocaldns" with 169.254.20.10
    up1  (169.254.12.2, fd00:12::2) --veth--+   and fd00::10, the iptables rules,
                                                a kube-proxy-like DNAT of the
                                                ClusterIPs 169.254.30.10/.11 and
                                                fd00:30::10/::11 (kube-dns and
                                                kube-dns-upstream) to up0/up1

The agent forwards to kube-dns-upstream, so it may also bind the kube-dns
IP as node-cache does in kube-proxy's iptables mode. ``pod`` has a
Kubernetes resolv.conf pointing at 169.254.20.10 (``pod6`` at
fd00::10): search default.svc.cluster.local svc.cluster.local cluster.local,
options ndots:5, so ``ip netns exec pod getent ahosts NAME`` is a real glibc
resolver in a pod. The upstream replicas run ``nodecache fake-upstream``
and log every query they see. The node's own /etc/resolv.conf (what
``__PILLAR__UPSTREAM__SERVERS__`` becomes) points at the ClusterIP, so no
query ever leaves the namespaces. ``close`` removes everything it created
(processes, namespaces with their links and rules, /etc/netns files), also
after a failure.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from .kubeproxy import nftables_table

LOCAL_V4, LOCAL_V6 = "169.254.20.10", "fd00::10"
CLUSTER_V4, CLUSTER_V6 = "169.254.30.10", "fd00:30::10"      # the kube-dns Service
UPSTREAM_V4, UPSTREAM_V6 = "169.254.30.11", "fd00:30::11"    # kube-dns-upstream, same endpoints
POD_RESOLV = ("search default.svc.cluster.local svc.cluster.local cluster.local\n"
              "options ndots:5\nnameserver {ns}\n")

NODE_COREFILE = """\
cluster.local:53 {
    errors
    cache {
        success 9984 30
        denial 9984 5
    }
    bind __PILLAR__LOCAL__DNS__
    forward . __PILLAR__CLUSTER__DNS__ {
        force_tcp
    }
}
in-addr.arpa:53 {
    errors
    cache 30
    bind __PILLAR__LOCAL__DNS__
    forward . __PILLAR__CLUSTER__DNS__ {
        force_tcp
    }
}
ip6.arpa:53 {
    errors
    cache 30
    bind __PILLAR__LOCAL__DNS__
    forward . __PILLAR__CLUSTER__DNS__ {
        force_tcp
    }
}
.:53 {
    errors
    cache 30
    bind __PILLAR__LOCAL__DNS__
    forward . __PILLAR__UPSTREAM__SERVERS__
}
"""


MODES = ("iptables", "nftables")  # how the emulated kube-proxy programs the ClusterIPs


def missing_requirements(mode: str = "iptables") -> str | None:
    """Why an emulated node in kube-proxy ``mode`` cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    tools = {"iptables": ("ip", "iptables", "ip6tables", "conntrack", "getent"),
             "iptables-legacy": ("ip", "iptables-legacy", "ip6tables-legacy", "iptables-nft", "conntrack", "getent"),
             }.get(mode, ("ip", "nft", "conntrack", "getent"))
    for tool in tools:
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install iproute2 iptables nftables conntrack)"
    probe = f"ncprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "cannot create network namespaces here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*cmd: str, check: bool = True, ns: str | None = None, timeout: float = 30,
       env: dict | None = None, input_text: str | None = None) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=env, input=input_text)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move the calling thread (only it: a network namespace is per thread)
    into the named namespace, as kubelet's probes and Cilium's agent run in
    the node's."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def http_status(url: str, timeout: float = 1.0, ns: str | None = None) -> int:
    """The HTTP status of GET ``url`` (0: no answer), asked from network
    namespace ``ns`` (in a thread that enters it) or from this thread's."""
    out = [0]

    def ask() -> None:
        if ns is not None:
            enter_netns(ns)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:
                out[0] = reply.status
        except urllib.error.HTTPError as exc:
            out[0] = exc.code
        except OSError:
            pass
    if ns is None:
        ask()
        return out[0]
    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout + 5)
    return out[0]


class EmulatedNode:
    _count = 0

    def __init__(self, replicas: int = 2, mode: str = "iptables", replica_args: tuple[str, ...] = ()):
        """``mode``: kube-proxy's, "iptables" (DNAT rules in the nat table),
        "iptables-legacy" (the same through iptables-legacy) or "nftables"
        (its ``kube-proxy`` tables, and no iptables for the agent).
        ``replica_args``: more flags for every ``nodecache fake-upstream``
        replica (e.g. ``--slow PREFIX=MS``)."""
        self.mode = mode
        self.replica_args = tuple(replica_args)
        EmulatedNode._count += 1
        tag = f"nc{os.getpid() % 100000}x{EmulatedNode._count}"
        self.node, self.pod, self.pod6 = f"{tag}-node", f"{tag}-pod", f"{tag}-pod6"
        self.ups = [f"{tag}-up{i}" for i in range(replicas)]
        self.tmp = Path(tempfile.mkdtemp(prefix="nodecache-emunode-"))
        self.procs: list[subprocess.Popen] = []
        self.agent: subprocess.Popen | None = None
        self.agent_log = self.tmp / "agent.log"
        self._made_ns: list[str] = []
        self._etc: list[Path] = []

    # -- building -------------------------------------------------------
    def __enter__(self) -> "EmulatedNode":
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self._made_ns.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)

    def _link(self, other: str, index: int) -> None:
        """veth node<->other on 169.254.<index>.0/24 and fd00:<index>::/64."""
        a, b = f"nc{index}a", f"nc{index}b"
        sh("ip", "link", "add", a, "netns", self.node, "type", "veth", "peer", "name", b, "netns", other)
        for ns, dev, host in ((self.node, a, 1), (other, b, 2)):
            sh("ip", "addr", "add", f"169.254.{index}.{host}/24", "dev", dev, ns=ns)
            sh("ip", "-6", "addr", "add", f"fd00:{index}::{host}/64", "dev", dev, "nodad", ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
        sh("ip", "route", "add", "default", "via", f"169.254.{index}.1", ns=other)
        sh("ip", "-6", "route", "add", "default", "via", f"fd00:{index}::1", ns=other)

    def _etc_file(self, ns: str, name: str, text: str) -> None:
        d = Path("/etc/netns") / ns
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
        self._etc.append(d)

    def build(self) -> None:
        for ns in [self.node, self.pod, self.pod6, *self.ups]:
            self._netns(ns)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=self.node)
        sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns=self.node)
        self._link(self.pod, 10)
        self._link(self.pod6, 16)
        for i, up in enumerate(self.ups):
            self._link(up, 11 + i)
        self._etc_file(self.pod, "resolv.conf", POD_RESOLV.format(ns=LOCAL_V4))
        self._etc_file(self.pod6, "resolv.conf", POD_RESOLV.format(ns=LOCAL_V6))
        self._etc_file(self.node, "resolv.conf", f"nameserver {UPSTREAM_V4}\n")
        self._kube_proxy() if self.mode.startswith("iptables") else self._kube_proxy_nft()
        self.replicas: list[subprocess.Popen | None] = [None] * len(self.ups)
        for i in range(len(self.ups)):
            self.start_replica(i, wait=False)
        self._wait_upstreams()

    # -- the cluster DNS replicas ------------------------------------------
    def start_replica(self, i: int, wait: bool = True) -> None:
        """(Re)start replica i (a CoreDNS pod); it keeps its address, so it
        stays the same kube-proxy endpoint."""
        log = self.tmp / f"up{i}.log"
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ups[i], sys.executable, "-m", "nodecache", "fake-upstream",
             "--listen", "[::]:53", "--log-queries", str(log), *self.replica_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.replicas[i] = proc
        self.procs.append(proc)
        if wait:
            self._wait_upstreams(only=i)

    def stop_replica(self, i: int, sig: int = signal.SIGTERM) -> None:
        """Stop replica i (SIGTERM: a rollout; SIGKILL: an OOM kill) while
        kube-proxy still sends it traffic."""
        proc = self.replicas[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(10)
        self.replicas[i] = None

    def _tool(self, family: int) -> str:
        """kube-proxy's iptables binary: the system's, or in "iptables-legacy"
        mode the legacy variant (a node whose kube-proxy image predates nft)."""
        base = "iptables" if family == 4 else "ip6tables"
        return f"{base}-legacy" if self.mode == "iptables-legacy" else base

    def _kube_proxy(self) -> None:
        """DNAT the ClusterIP to the replicas at random, as kube-proxy's iptables mode does
        (and, as kubelet does, its hint chain in the variant in use)."""
        n = len(self.ups)
        for fam in (4, 6):
            sh(self._tool(fam), "-w", "5", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT", ns=self.node)
            # kube-proxy's entry chain, jumped to from PREROUTING and OUTPUT (what the agent looks for)
            sh(self._tool(fam), "-w", "5", "-t", "nat", "-N", "KUBE-SERVICES", ns=self.node)
            for chain in ("PREROUTING", "OUTPUT"):
                sh(self._tool(fam), "-w", "5", "-t", "nat", "-A", chain, "-m", "comment", "--comment",
                   "kubernetes service portals", "-j", "KUBE-SERVICES", ns=self.node)
        # a route for the ClusterIP, so locally generated packets reach the DNAT
        sh("ip", "route", "add", "169.254.30.0/24", "via", "169.254.11.2", ns=self.node)
        sh("ip", "-6", "route", "add", "fd00:30::/64", "via", "fd00:11::2", ns=self.node)
        for fam, tool, cluster in ((4, self._tool(4), CLUSTER_V4), (6, self._tool(6), CLUSTER_V6),
                                   (4, self._tool(4), UPSTREAM_V4), (6, self._tool(6), UPSTREAM_V6)):
            for i in range(n):
                target = f"169.254.{11 + i}.2" if fam == 4 else f"[fd00:{11 + i}::2]"
                stat = ["-m", "statistic", "--mode", "random", "--probability",
                        f"{1 / (n - i):.5f}"] if i < n - 1 else []
                for proto in ("udp", "tcp"):
                    sh(tool, "-w", "5", "-t", "nat", "-A", "KUBE-SERVICES", "-d", cluster, "-p", proto,
                       "--dport", "53", *stat, "-j", "DNAT", "--to-destination", f"{target}:53",
                       ns=self.node)

    def _kube_proxy_nft(self) -> None:
        """kube-proxy's nftables mode (nodecache_lab.kubeproxy): its ``ip`` and ``ip6
        kube-proxy`` tables for both Services, every replica an endpoint."""
        sh("ip", "route", "add", "169.254.30.0/24", "via", "169.254.11.2", ns=self.node)
        sh("ip", "-6", "route", "add", "fd00:30::/64", "via", "fd00:11::2", ns=self.node)
        eps4 = [f"169.254.{11 + i}.2" for i in range(len(self.ups))]
        eps6 = [f"fd00:{11 + i}::2" for i in range(len(self.ups))]
        names = ("kube-system/kube-dns", "kube-system/kube-dns-upstream")
        text = (nftables_table("ip", list(zip((CLUSTER_V4, UPSTREAM_V4), names)), eps4, "169.254.30.0/24",
                               "169.254.0.0/16")
                + nftables_table("ip6", list(zip((CLUSTER_V6, UPSTREAM_V6), names)), eps6, "fd00:30::/64",
                                 "fd00::/8"))
        sh("nft", "-f", str(self._write("kube-proxy.nft", text)), ns=self.node)
        # the agent's world has no iptables: only nft on its PATH
        self.bin = self.tmp / "bin"
        self.bin.mkdir()
        (self.bin / "nft").symlink_to(shutil.which("nft"))

    def _write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def _wait_upstreams(self, limit: float = 20, only: int | None = None) -> None:
        deadline = time.monotonic() + limit
        for i in range(len(self.ups)) if only is None else (only,):
            while True:
                probe = sh(sys.executable, "-c",
                           "import socket,sys;s=socket.socket();s.settimeout(0.5);"
                           f"sys.exit(s.connect_ex(('169.254.{11 + i}.2',53)))",
                           ns=self.node, check=False)
                if probe.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"upstream replica {i} did not start")
                time.sleep(0.1)

    # -- the agent ------------------------------------------------------
    def start_agent(self, *extra: str, corefile: str = NODE_COREFILE,
                    local_ips: str = f"{LOCAL_V4},{LOCAL_V6}", log_name: str = "agent.log",
                    env: dict[str, str] | None = None) -> subprocess.Popen:
        conf = self.tmp / "Corefile.base"
        conf.write_text(corefile)
        self.agent_log = self.tmp / log_name
        env = dict(os.environ, KUBE_DNS_UPSTREAM_SERVICE_HOST=UPSTREAM_V4, **(env or {}))
        if self.mode == "nftables":
            env["PATH"] = str(self.bin)  # iptables is absent for the agent
        cmd = [shutil.which("ip") or "ip", "netns", "exec", self.node, sys.executable, "-m", "nodecache", "run",
               "-localip", local_ips, "-conf", str(self.tmp / "Corefile"),
               "-basecorefile", str(conf), "-upstreamsvc", "kube-dns-upstream",
               "-kubednscm", str(self.tmp / "kube-dns"), "-handoff-dir", str(self.tmp / "handoff"),
               "-status-socket", str(self.tmp / f"{log_name}.status"), *extra]
        (self.tmp / "kube-dns").mkdir(exist_ok=True)
        self.agent = subprocess.Popen(cmd, stdout=open(self.agent_log, "a"), stderr=subprocess.STDOUT,
                                      env=env)
        self.procs.append(self.agent)
        return self.agent

    def wait_agent(self, limit: float = 20, needle: str = "rules in place") -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise RuntimeError(f"agent exited {self.agent.returncode}: {self.agent_log.read_text()}")
            text = self.agent_log.read_text()
            if "serving" in text and needle in text:
                return
            time.sleep(0.05)
        raise RuntimeError(f"agent not ready: {self.agent_log.read_text()}")

    def stop_agent(self, sig: int = signal.SIGTERM, limit: float = 20) -> int:
        self.agent.send_signal(sig)
        return self.agent.wait(limit)

    def pod_nameserver(self, ip: str) -> None:
        """Point the pod's resolv.conf at ``ip`` (e.g. the kube-dns ClusterIP,
        as pods keep it in kube-proxy's iptables mode)."""
        (Path("/etc/netns") / self.pod / "resolv.conf").write_text(POD_RESOLV.format(ns=ip))

    def set_pod_resolv_options(self, *options: str, ip: str = LOCAL_V4) -> None:
        """The pod's resolv.conf with more ``options`` (e.g. ``use-vc``); none: as built."""
        text = POD_RESOLV.format(ns=ip)
        if options:
            text = text.replace("options ndots:5", "options ndots:5 " + " ".join(options))
        (Path("/etc/netns") / self.pod / "resolv.conf").write_text(text)

    # -- observing ------------------------------------------------------
    def pod_load(self, names: list[str], rate: float, target: str = LOCAL_V4,
                 timeout: float = 5.0) -> subprocess.Popen:
        """Start sending ``names`` (A, UDP) from the pod at ``rate``/s; the
        process prints ``client.paced``'s JSON result when done (bounded by
        len(names) / rate + timeout seconds)."""
        code = ("import asyncio,json,sys;from nodecache.emulated import client;"
                "names=sys.stdin.read().split();"
                f"qs=[client.build(n,1) for n in names];"
                f"print(json.dumps(asyncio.run(client.paced('{target}',53,qs,{rate},{timeout}))))")
        proc = subprocess.Popen(["ip", "netns", "exec", self.pod, sys.executable, "-c", code],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        proc.stdin.write("\n".join(names))
        proc.stdin.close()
        self.procs.append(proc)
        return proc

    def getent(self, name: str, v6: bool = False, timeout: float = 15) -> subprocess.CompletedProcess:
        return sh("getent", "ahosts", name, ns=self.pod6 if v6 else self.pod, check=False,
                  timeout=timeout)

    def upstream_marks(self) -> list[int]:
        """How many queries each replica has logged so far (for ``after``)."""
        out = []
        for i in range(len(self.ups)):
            path = self.tmp / f"up{i}.log"
            out.append(len(path.read_text().splitlines()) if path.exists() else 0)
        return out

    def upstream_log(self, include_pods: bool = False, after: list[int] | None = None) -> list[tuple[str, int, str]]:
        """(proto, qtype, name) the replicas saw; by default only the agent's
        queries (not control queries sent by a pod straight to the ClusterIP).
        ``after``: only those logged since ``upstream_marks()`` returned it
        (per replica: one list of both logs would shift as either grows)."""
        out = []
        for i in range(len(self.ups)):
            path = self.tmp / f"up{i}.log"
            if path.exists():
                for line in path.read_text().splitlines()[after[i] if after else 0:]:
                    proto, client, qtype, name = line.split(" ", 3)
                    client = client.removeprefix("::ffff:")  # v4 on a dual-stack socket
                    if include_pods or not client.startswith(("169.254.10.", "169.254.16.", "fd00:10:", "fd00:16:")):
                        out.append((proto, int(qtype), name))
        return out

    def conntrack(self) -> str:
        return sh("conntrack", "-L", ns=self.node, check=False).stdout

    def rules(self) -> list[str]:
        """Our rules: iptables-save lines (both families, all tables), or in
        nftables mode the rule lines of our table."""
        if self.mode == "nftables":
            out = sh("nft", "list", "table", "inet", "nodecache", ns=self.node, check=False).stdout
            return [ln.strip() for ln in out.splitlines()
                    if ln.strip() and not ln.strip().startswith(("table", "chain", "type", "comment", "}"))]
        lines = []
        for tool in (self._tool(4), self._tool(6)):
            for table in ("raw", "filter"):
                out = sh(tool, "-w", "5", "-t", table, "-S", ns=self.node).stdout
                lines += [f"{tool} {table} {ln}" for ln in out.splitlines() if "nodecache" in ln]
        return lines

    def interface(self) -> str:
        return sh("ip", "-o", "addr", "show", "dev", "nodelocaldns", ns=self.node, check=False).stdout

    # -- cleanup --------------------------------------------------------
    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        for ns in self._made_ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for d in set(self._etc):
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

