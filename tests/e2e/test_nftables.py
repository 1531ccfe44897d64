"""What only a kube-proxy nftables-mode node shows (root): kube-proxy's
cluster-ips-check against our health port on the kube-dns ClusterIP, a host
firewall that drops what it does not accept, the backend following kube-proxy's
mode, and -setupiptables=false. The guarantees both modes share are the
parametrised tests of test_node, test_crash and test_churn."""
import subprocess
import sys
import time

import pytest

from nodecache_lab.emunode import CLUSTER_V4, LOCAL_V4, NODE_COREFILE, EmulatedNode, missing_requirements, sh

why = missing_requirements("nftables")
pytestmark = pytest.mark.skipif(why is not None, reason=f"emulated node in nftables mode: {why}")
HEALTH_COREFILE = NODE_COREFILE.replace("cluster.local:53 {\n", f"cluster.local:53 {{\n    health {CLUSTER_V4}:8080\n", 1)
FETCH = ("import sys,urllib.request\ntry:\n    print(urllib.request.urlopen(sys.argv[1], timeout=3).status)\n"
         "except Exception as exc:\n    print(type(exc).__name__, exc)\n")


def _fetch(n: EmulatedNode, ns: str, url: str) -> str:
    return sh(sys.executable, "-c", FETCH, url, ns=ns, check=False).stdout.strip()


def _wait_log(n: EmulatedNode, needle: str, limit: float = 10) -> str:
    deadline = time.monotonic() + limit
    while needle not in (text := n.agent_log.read_text()):
        assert time.monotonic() < deadline, f"no {needle!r} in:\n{text[-3000:]}"
        time.sleep(0.1)
    return text


def test_health_on_the_kube_dns_clusterip_is_not_rejected_by_cluster_ips_check():
    """The health endpoint on the kube-dns ClusterIP, asked from the node
    (a kubelet probe) and from a pod. kube-proxy rejects new tracked traffic
    to a ClusterIP port it does not serve; ours is untracked. Control: with
    our output rule for the health port deleted, the node's probe is rejected."""
    with EmulatedNode(mode="nftables") as n:
        # -watch-node=false: the deleted rule must stay deleted for the control (else it is repaired at once)
        n.start_agent("-syncinterval", "60", "-watch-node=false", corefile=HEALTH_COREFILE,
                      local_ips=f"{LOCAL_V4},{CLUSTER_V4}")
        n.wait_agent()
        url = f"http://{CLUSTER_V4}:8080/health"
        assert _fetch(n, n.node, url) == "200"
        assert _fetch(n, n.pod, url) == "200"
        listing = sh("nft", "-a", "list", "chain", "inet", "nodecache", "output", ns=n.node).stdout
        handle = next(ln.split("# handle ")[1].strip() for ln in listing.splitlines()
                      if f"daddr {CLUSTER_V4} tcp dport 8080" in ln)
        sh("nft", "delete", "rule", "inet", "nodecache", "output", "handle", handle, ns=n.node)
        assert "Connection refused" in _fetch(n, n.node, url)  # kube-proxy's reject


def test_a_firewall_that_drops_is_reported_with_the_rule_to_add():
    """A host firewall (its own table, input policy drop, established and
    related accepted): our untracked queries are dropped there, which no
    accept of ours can override. The agent says so and names the rule; with
    that rule added, lookups work."""
    with EmulatedNode(mode="nftables") as n:
        n.start_agent("-syncinterval", "1")
        n.wait_agent()
        assert n.getent("svc-1.default").returncode == 0
        firewall = ("table inet filter {\n chain input {\n  type filter hook input priority 0; policy drop;\n"
                    "  ct state established,related accept\n  iif lo accept\n }\n}\n")
        subprocess.run(["ip", "netns", "exec", n.node, "nft", "-f", "-"], input=firewall, text=True, check=True)
        log = _wait_log(n, "table inet filter chain input drops by default")
        assert "ct state untracked accept" in log
        try:
            dropped = n.getent("svc-2.default", timeout=12).returncode
        except subprocess.TimeoutExpired:
            dropped = -1
        assert dropped != 0
        sh("nft", "insert", "rule", "inet", "filter", "input", "ct", "state", "untracked", "accept", ns=n.node)
        assert n.getent("svc-3.default").returncode == 0
        assert log.count("drops by default") == 1  # said once, not at every reconcile


def test_auto_follows_kube_proxy_to_nftables_and_removes_its_iptables_rules():
    """kube-proxy moves to nftables mode on a running node (its nftables
    tables appear): at the next reconcile our iptables rules go and our
    table comes, never both."""
    with EmulatedNode(mode="iptables") as n:
        n.start_agent("-syncinterval", "1")
        n.wait_agent()
        assert n.rules() and "rules backend: iptables" in n.agent_log.read_text()
        sh("nft", "add", "table", "ip", "kube-proxy", ns=n.node)
        _wait_log(n, "rules backend changes from iptables to nftables")
        assert n.rules() == []  # no iptables rule of ours left
        table = sh("nft", "list", "table", "inet", "nodecache", ns=n.node).stdout
        assert f"ip daddr {LOCAL_V4} udp dport 53 socket transparent <= 1 notrack" in table
        assert n.getent("svc-1.default").returncode == 0
        assert n.stop_agent() == 0
        assert sh("nft", "list", "table", "inet", "nodecache", ns=n.node, check=False).returncode != 0


def test_setupiptables_false_writes_no_rules_in_nftables_mode_either():
    with EmulatedNode(mode="nftables") as n:
        n.start_agent("-setupiptables=false", "-rules", "nftables")
        n.wait_agent(needle="serving")
        assert n.getent("svc-1.default").returncode == 0
        assert sh("nft", "list", "table", "inet", "nodecache", ns=n.node, check=False).returncode != 0


def test_iptables_forced_on_an_nftables_node_installs_no_racing_dnat():
    """The measured black hole: iptables' fallback DNAT in nat PREROUTING at
    kube-proxy's own nat priority. Forced to -rules iptables on such a node,
    the agent leaves the DNAT out and says why."""
    with EmulatedNode(mode="iptables") as n:
        sh("nft", "add", "table", "ip", "kube-proxy", ns=n.node)
        n.start_agent("-rules", "iptables")
        n.wait_agent()
        assert "no fallback DNAT from iptables rules" in n.agent_log.read_text()
        nat = sh("iptables", "-w", "5", "-t", "nat", "-S", ns=n.node).stdout
        assert not [ln for ln in nat.splitlines() if "nodecache" in ln], nat
        assert n.rules()  # NOTRACK/ACCEPT still there
