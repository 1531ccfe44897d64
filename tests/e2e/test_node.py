"""End to end on an emulated node (root): the real `nodecache run` process
with node-cache's flags and Corefile shape, the real glibc resolver in a pod
namespace, kube-proxy-like DNAT to two upstream replicas, conntrack and
iptables observed from the node namespace."""
import re
import shlex
import signal
import sys
import time

import pytest

from nodecache_lab.emunode import (CLUSTER_V4, LOCAL_V4, LOCAL_V6, NODE_COREFILE, EmulatedNode,
                                       missing_requirements, sh)

why = missing_requirements()
pytestmark = pytest.mark.skipif(why is not None, reason=f"emulated node: {why}")


# our rules with the default -localip (LOCAL_V4, LOCAL_V6): iptables, 2 IPs x (2 protocols x
# 5 DNS rules + 2 health rules); nftables, per IP 3 NOTRACK in prerouting and 6 in output, plus
# 2 divert rules for LOCAL_V4 (the upstream is IPv4)
RULES = {"iptables": 24, "nftables": 20}


@pytest.fixture(scope="module")
def node(mode):
    with EmulatedNode(mode=mode) as n:
        n.start_agent("-syncinterval", "1")
        n.wait_agent()
        yield n


def _diag(n) -> str:
    return f"\nagent log:\n{n.agent_log.read_text()}\nupstreams saw: {n.upstream_log()}"


def test_pod_resolves_services_through_search_list(node):
    for name in ("svc-1.default", "svc-2.other.svc.cluster.local", "kubernetes.default"):
        r = node.getent(name)
        assert r.returncode == 0, f"{name}: {r}{_diag(node)}"
        assert "10.96." in r.stdout and "fd00:10:96::" in r.stdout


def test_unknown_name_fails_fast_not_after_a_timeout(node):
    t0 = time.monotonic()
    r = node.getent("no-such-service.default")
    assert r.returncode == 2 and time.monotonic() - t0 < 2.0, r


def test_ipv6_pod_served_by_the_same_process(node):
    r = node.getent("svc-3.default", v6=True)
    assert r.returncode == 0 and "10.96." in r.stdout, f"{r}{_diag(node)}"
    listening = sh("ss", "-Hlnup", ns=node.node, check=False).stdout
    assert f"{LOCAL_V4}:53" in listening and f"[{LOCAL_V6}]:53" in listening
    assert listening.count(f"pid={node.agent.pid},") >= 2  # one process, both families


def test_no_conntrack_for_pod_dns_but_control_query_is_tracked(node):
    sh("conntrack", "-F", ns=node.node, check=False)
    for i in range(5):
        node.getent(f"svc-{10 + i}.default")
        node.getent(f"svc-{10 + i}.default", v6=True)
    table = node.conntrack()
    dns = [ln for ln in table.splitlines() if ln.split()[:1] in (["udp"], ["tcp"]) and "dport=53 " in ln
           and (f"dst={LOCAL_V4} " in ln or f"dst={LOCAL_V6} " in ln)]
    assert dns == [], table  # (an ICMP error about a late reply may be tracked; it is not DNS)
    # control: a pod query straight to the DNAT'd ClusterIP is tracked (UDP, the racy path)
    code = ("import asyncio;from nodecache.emulated import client;"
            f"asyncio.run(client.udp('{CLUSTER_V4}', 53, client.build('svc-1.default.svc.cluster.local', 1), 3))")
    sh(sys.executable, "-c", code, ns=node.pod)
    table = node.conntrack()
    assert "udp" in table and f"dst={CLUSTER_V4}" in table and "src=169.254.10.2" in table, table


def test_cluster_zone_reaches_upstreams_over_tcp_only(node):
    node.getent("svc-20.other")
    node.getent("www.example.com")
    seen = node.upstream_log()
    cluster = [p for p, _, name in seen if name.endswith("cluster.local.")]
    other = [p for p, _, name in seen if not name.endswith("cluster.local.") and name != "."]
    assert cluster and set(cluster) == {"tcp"}, [s for s in seen if s[0] == "udp"]
    assert other and "udp" in other, seen


def _remove_one_rule(node) -> None:
    """Someone deletes one of our pod -> agent NOTRACK rules."""
    if node.mode == "iptables":
        victim = [r for r in node.rules() if r.startswith("iptables raw") and "PREROUTING" in r and "udp" in r][0]
        spec = victim.split(" ", 2)[2].replace("-A ", "-D ", 1)
        sh("sh", "-c", f"iptables -w 5 -t raw {spec}", ns=node.node)
        return
    listing = sh("nft", "-a", "list", "chain", "inet", "nodecache", "prerouting", ns=node.node).stdout
    handle = next(ln.split("# handle ")[1] for ln in listing.splitlines() if "udp dport 53" in ln)
    sh("nft", "delete", "rule", "inet", "nodecache", "prerouting", "handle", handle.strip(), ns=node.node)


def test_rules_exactly_once_and_restored(node):
    expected = RULES[node.mode]
    time.sleep(3.2)  # >= 3 reconciles at -syncinterval 1
    rules = node.rules()
    assert len(rules) == expected and len(set(rules)) == expected, rules
    _remove_one_rule(node)  # (netlink reports it: repaired within milliseconds, see test_migration)
    deadline = time.monotonic() + 5
    while len(node.rules()) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(node.rules()) == sorted(rules)
    log = node.agent_log.read_text()
    assert ("added back rule" if node.mode == "iptables" else "was changed: writing it again") in log
    assert "rule deleted in " in log and "restoring now" in log, log  # the event, not the interval


def test_sigterm_removes_rules_and_interface(mode):
    with EmulatedNode(mode=mode) as n:
        n.start_agent("-syncinterval", "1")
        n.wait_agent()
        assert n.rules() and LOCAL_V4 in n.interface()
        assert n.stop_agent(signal.SIGTERM) == 0
        assert n.rules() == [] and n.interface() == ""


def test_skipteardown_leaves_both(mode):
    with EmulatedNode(mode=mode) as n:
        n.start_agent("-skipteardown")
        n.wait_agent()
        assert n.stop_agent(signal.SIGTERM) == 0
        assert len(n.rules()) == RULES[mode] and LOCAL_V4 in n.interface()


def test_node_cache_daemonset_args_run_unchanged(mode):
    # node-cache's DaemonSet: -localip LOCAL,CLUSTERIP -conf /etc/Corefile -upstreamsvc kube-dns-upstream
    # (here -conf and -basecorefile point at the test's files; the flags are the same)
    with EmulatedNode(mode=mode) as n:
        n.start_agent(local_ips=f"{LOCAL_V4},{CLUSTER_V4}")
        n.wait_agent()
        assert n.getent("svc-1.default").returncode == 0
        log = n.agent_log.read_text()
        assert "listening on 169.254.30.10 port 53" in log  # binds the kube-dns IP too


def _wildcard_node(n: EmulatedNode, *flags: str) -> None:
    """The agent with every block bound to 0.0.0.0 (the Helm chart's default,
    or a Corefile without `bind`): one socket on every address serves the
    link-local address."""
    n.start_agent("-watch-node=false", *flags, local_ips=LOCAL_V4,
                  corefile=NODE_COREFILE.replace("bind __PILLAR__LOCAL__DNS__", "bind 0.0.0.0"))
    n.wait_agent()


def _lookups_and_tracked(n: EmulatedNode) -> tuple[list[int], list[str]]:
    """Three UDP queries from the pod to the link-local address (exit 0:
    answered, else none within 2 s), and the conntrack entries they made."""
    sh("conntrack", "-F", ns=n.node, check=False)
    codes = []
    for i in range(3):
        code = ("import asyncio;from nodecache.emulated import client;"
                f"asyncio.run(client.udp('{LOCAL_V4}', 53, client.build('svc-{i}.default.svc.cluster.local', 1), 2))")
        codes.append(sh(sys.executable, "-c", code, ns=n.pod, check=False).returncode)
    tracked = [ln for ln in n.conntrack().splitlines() if f"dst={LOCAL_V4} " in ln and "dport=53 " in ln]
    return codes, tracked


def test_a_socket_on_every_address_is_served_untracked(mode):
    with EmulatedNode(mode=mode) as n:
        _wildcard_node(n)
        assert "listening on 0.0.0.0 port 53" in n.agent_log.read_text()
        codes, tracked = _lookups_and_tracked(n)
        assert codes == [0, 0, 0] and tracked == [], (codes, tracked, n.agent_log.read_text())
        assert n.getent("svc-1.default").returncode == 0  # and glibc, through the search list


def test_negative_control_the_plain_socket_match_misses_a_wildcard_socket_and_the_fallback_takes_the_query():
    """iptables' ``-m socket`` ignores sockets bound to every address unless
    told ``--nowildcard``: with the plain match in our place, every query is
    tracked and our fail-open DNAT sends it to a ClusterIP nobody DNATs
    again (iptables mode), and the pod gets no answer."""
    with EmulatedNode(mode="iptables") as n:
        _wildcard_node(n, "-syncinterval", "600")
        ours = [ln for ln in sh("iptables", "-t", "raw", "-S", "PREROUTING", ns=n.node).stdout.splitlines()
                if "--nowildcard" in ln]
        assert len(ours) == 2, ours  # udp, tcp
        for line in ours:
            spec = shlex.split(line)[2:]  # after -A PREROUTING
            sh("iptables", "-t", "raw", "-D", "PREROUTING", *spec, ns=n.node)
            sh("iptables", "-t", "raw", "-I", "PREROUTING", "1", *[a for a in spec if a != "--nowildcard"], ns=n.node)
        codes, tracked = _lookups_and_tracked(n)
        assert all(c != 0 for c in codes) and tracked, (codes, tracked)


def test_interface_of_another_kind_is_reported_not_fatal_a_bad_localip_is():
    with EmulatedNode() as n:
        # a -localip that is not an address stops the start: nothing set up, exit 2
        n.start_agent(local_ips=f"{LOCAL_V4},$(KUBE_DNS_SERVICE_HOST)", log_name="bad.log")
        assert n.agent.wait(20) == 2
        assert "was not expanded" in n.agent_log.read_text() and "nodelocaldns" not in n.interface()
        # someone left a veth called nodelocaldns: use it as it is, do not delete it
        sh("ip", "link", "add", "nodelocaldns", "type", "veth", "peer", "name", "ncpeer", ns=n.node)
        n.start_agent(local_ips=LOCAL_V4)
        n.wait_agent()
        log = n.agent_log.read_text()
        assert "exists with kind 'veth'; using it as it is" in log
        assert n.getent("svc-1.default").returncode == 0
        assert n.stop_agent() == 0
        assert "not removing interface nodelocaldns of kind 'veth'" in n.agent_log.read_text()
        assert "nodelocaldns" in sh("ip", "link", "show", "nodelocaldns", ns=n.node, check=False).stdout


def test_hot_handoff_on_the_node_with_glibc_querying_throughout(mode):
    import threading
    with EmulatedNode(mode=mode) as n:
        first = n.start_agent("-syncinterval", "1", log_name="agent0.log")
        n.wait_agent()
        failures, done, lookups = [], threading.Event(), [0]

        def pod_traffic():  # a pod resolving continuously through every handoff
            i = 0
            while not done.is_set():
                r = n.getent(f"svc-{i % 50}.default", v6=bool(i % 2))
                lookups[0] += 1
                if r.returncode != 0:
                    failures.append((i, r.returncode, r.stderr))
                i += 1

        traffic = threading.Thread(target=pod_traffic)
        traffic.start()
        try:
            agents = [(first, n.agent_log)]
            for k in range(1, 4):
                time.sleep(0.5)
                heir = n.start_agent("-syncinterval", "1", log_name=f"agent{k}.log")
                n.wait_agent(needle="READY sent")
                old, old_log = agents[-1]
                old.send_signal(signal.SIGTERM)
                assert old.wait(20) == 0
                assert "interface and rules belong to the successor" in old_log.read_text()
                assert len(n.rules()) == RULES[mode] and LOCAL_V4 in n.interface()  # the donor tore nothing down
                agents.append((heir, n.agent_log))
            time.sleep(0.5)
        finally:
            done.set()
            traffic.join(60)
        assert lookups[0] > 20 and failures == [], failures
        last, _ = agents[-1]
        last.send_signal(signal.SIGTERM)
        assert last.wait(20) == 0
        assert n.rules() == [] and n.interface() == ""  # the last owner tears down


def _variant_of_our_rules(n) -> dict[str, int]:
    """How many of our rules each iptables variant holds, on the node."""
    out = {}
    for variant in ("legacy", "nft"):
        text = "".join(sh(f"{tool}-{variant}-save", ns=n.node, check=False).stdout for tool in ("iptables", "ip6tables"))
        out[variant] = text.count("nodecache: node-local DNS")
    return out


def test_a_legacy_iptables_node_gets_its_rules_in_the_legacy_variant():
    """kube-proxy on iptables-legacy (and kubelet's hint chain there): our
    rules go to the same variant, where kube-proxy's chains are seen."""
    why_not = missing_requirements("iptables-legacy")
    if why_not:
        pytest.skip(f"legacy iptables node: {why_not}")
    with EmulatedNode(mode="iptables-legacy") as n:
        n.start_agent("-syncinterval", "1")
        n.wait_agent()
        log = n.agent_log.read_text()
        assert "iptables variant: legacy (kubelet's KUBE-IPTABLES-HINT chain is in iptables-legacy)" in log, log
        assert "kube-proxy's iptables chains exist" in log, log
        placed = _variant_of_our_rules(n)
        in_place = int(re.search(r"(\d+) rules in place", log).group(1))
        assert placed["legacy"] == in_place and placed["nft"] == 0, placed
        assert n.getent("svc-1.default").returncode == 0
        assert n.stop_agent() == 0
        assert _variant_of_our_rules(n) == {"legacy": 0, "nft": 0}


def test_negative_control_without_the_legacy_tools_the_rules_land_in_the_other_variant(tmp_path):
    """What the image did before: only the default (nft) iptables on PATH.
    kube-proxy's legacy chains are invisible and our rules go to nft."""
    why_not = missing_requirements("iptables-legacy")
    if why_not:
        pytest.skip(f"legacy iptables node: {why_not}")
    only_nft = tmp_path / "bin"
    only_nft.mkdir()
    for tool in ("iptables", "ip6tables", "iptables-save", "ip6tables-save"):
        (only_nft / tool).symlink_to(f"/usr/sbin/xtables-nft-multi")
    with EmulatedNode(mode="iptables-legacy") as n:
        n.start_agent("-syncinterval", "1", env={"PATH": f"{only_nft}:/usr/bin:/bin"})
        n.wait_agent()
        assert "no kube-proxy rules found" in n.agent_log.read_text()
        assert _variant_of_our_rules(n)["nft"] > 0 and _variant_of_our_rules(n)["legacy"] == 0
