"""How each installer lays node-local-dns out on a node, for migration tests.

node-cache is the same program everywhere; what differs between the
installers that ship it is what it is told: the address pods ask (kubelet's
``clusterDNS``), where its ``health`` plugin listens (the liveness probe's
target), whether it binds that address or every address, whether it writes
iptables rules at all, and how long kubelet lets it tear down. Those are
what a migration meets on the node, so they are what a ``Layout`` holds;
each value is read from the installer's own manifests (cited per layout).
The objects around it (names, selectors, who re-applies them) matter to the
API server, not to the node: docs/migrate.md has the steps per installer,
and ``daemonset/overlays/<installer>`` the manifests.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    name: str
    local_ip: str             # -localip and kubelet's clusterDNS
    health: str               # the health plugin's HOST:PORT ("" host: every address)
    bind_all: bool = False    # `bind 0.0.0.0` instead of `bind LOCAL_IP`
    setup_iptables: bool = True
    kill_after: float | None = None  # SIGKILL this long after SIGTERM (the pod's grace period)
    cluster_target: str = "__PILLAR__CLUSTER__DNS__"       # the cluster zone's forward (CLUSTER_IP: literal)
    rest_target: str = "__PILLAR__UPSTREAM__SERVERS__"     # the `.` block's forward
    overlay: str = ""         # daemonset/overlays/<overlay>: nodecache's manifests for it
    args: tuple[str, ...] = ()  # the installer's own node-cache args (its DaemonSet's; CONF: its -conf)

    @property
    def health_port(self) -> int:
        return int(self.health.rsplit(":", 1)[1])

    @property
    def health_url(self) -> str:
        host = self.health.rsplit(":", 1)[0] or self.local_ip
        return f"http://{host}:{self.health_port}/health"

    def corefile(self, cluster_ip: str) -> str:
        """The installer's Corefile on a node whose cluster DNS Service is
        ``cluster_ip``: its binds, its health plugin, the cluster zones
        forwarded over TCP as it forwards them, the rest to the node's
        resolvers."""
        bind = "0.0.0.0" if self.bind_all else self.local_ip
        cluster = self.cluster_target.replace("CLUSTER_IP", cluster_ip)
        blocks = []
        for zone in ("cluster.local", "in-addr.arpa", "ip6.arpa", "."):
            upstream = self.rest_target if zone == "." else f"{cluster} {{\n        force_tcp\n    }}"
            extra = f"    health {self.health}\n" if zone == "cluster.local" else ""
            blocks.append(f"{zone}:53 {{\n    errors\n    cache 30\n    reload\n    loop\n    bind {bind}\n"
                          f"    forward . {upstream}\n    prometheus :9253\n{extra}}}\n")
        return "".join(blocks)


LAYOUTS = {
    # kubernetes/kubernetes cluster/addons/dns/nodelocaldns (and the addon
    # manager's copy of it): 169.254.20.10, health on it at 8080, 30 s grace
    "upstream": Layout("upstream", "169.254.20.10", "169.254.20.10:8080",
                       args=("-localip", "169.254.20.10,10.96.0.10", "-conf", "CONF", "-upstreamsvc",
                             "kube-dns-upstream")),
    # kubespray roles/kubernetes-apps/ansible/templates/nodelocaldns-*.yml.j2:
    # nodelocaldns_ip 169.254.25.10, nodelocaldns_health_port 9254,
    # terminationGracePeriodSeconds 0, which kubelet raises to its 2 s
    # minimum; forward to the coredns Service's IP itself (it binds only the
    # link-local address) and `.` to /etc/resolv.conf
    "kubespray": Layout("kubespray", "169.254.25.10", "169.254.25.10:9254", kill_after=2.0,
                        cluster_target="CLUSTER_IP", rest_target="/etc/resolv.conf", overlay="kubespray",
                        args=("-localip", "169.254.25.10", "-conf", "CONF", "-upstreamsvc", "coredns")),
    # kops nodelocaldns.addons.k8s.io/k8s-1.12.yaml.template: LocalIP
    # 169.254.20.10, health on it at wellknownports.NodeLocalDNSHealthCheck
    # (3989), and -setupiptables=false
    "kops": Layout("kops", "169.254.20.10", "169.254.20.10:3989", setup_iptables=False, overlay="kops",
                   args=("-localip=169.254.20.10", "-conf=CONF", "-upstreamsvc=kube-dns-upstream",
                         "-setupiptables=false")),
    # the community chart (deliveryhero/helm-charts stable/node-local-dns):
    # localDns 169.254.20.25, bindIp false (`bind 0.0.0.0`), `health :8080`
    "helm": Layout("helm", "169.254.20.25", ":8080", bind_all=True, overlay="helm",
                   args=("-localip", "169.254.20.25,10.96.0.10", "-conf", "CONF", "-upstreamsvc",
                         "node-local-dns-upstream", "-skipteardown=false", "-setupinterface=true",
                         "-setupiptables=true")),
}


def overlay(path: Path, cluster_ip: str) -> tuple[str, list[str], str | None]:
    """What the overlay at ``path`` (a daemonset/overlays directory) runs,
    rendered by ``kubectl kustomize``: its -localip ($(KUBE_DNS_SERVICE_HOST)
    expanded as kubelet does), its arguments after the base's (the emulated
    node sets -conf, -upstreamsvc and -handoff-dir itself), and the Corefile
    it ships, if any. RuntimeError without kubectl."""
    import yaml  # a test dependency (PyYAML): only the lab renders overlays

    if shutil.which("kubectl") is None:
        raise RuntimeError("kubectl is not installed (kubectl kustomize renders the overlays)")
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    args = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    args = [a.replace("$(KUBE_DNS_SERVICE_HOST)", cluster_ip) for a in args]
    cm = next((d for d in docs if d["kind"] == "ConfigMap"), None)
    return (args[args.index("-localip") + 1], args[args.index("-handoff-dir") + 2:],
            cm["data"]["Corefile"] if cm else None)
