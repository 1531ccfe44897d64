"""Interoperability: real resolver implementations nobody on this project
wrote (glibc, musl 1.2.3, Go's resolver, c-ares through Node, dnspython, dig,
kdig, drill, busybox nslookup) ask the agent on the emulated node, from the
pod namespace, at the link-local address and at the kube-dns ClusterIP the
agent takes over, in each kube-proxy mode. Every answer is compared with
what the cluster DNS itself holds for the question (the emulated cluster
DNS asked directly: the oracle), and every lookup has a time limit, so a
5 s stall (a dropped reply, a retry after a timeout) fails.

Client programs are built once (resolver_clients.py); a client whose tool
is not installed is skipped with the reason.
"""
from __future__ import annotations

import ipaddress
import os
import subprocess
import time

import pytest
from dnslib import QTYPE, DNSRecord

from nodecache.emulated.client import build as build_query
from nodecache_lab.emunode import CLUSTER_V4, LOCAL_V4, LOCAL_V6, EmulatedNode, missing_requirements
from nodecache.emulated.upstream import ClusterDNS

import resolver_clients

why = missing_requirements()
pytestmark = pytest.mark.skipif(why is not None, reason=f"emulated node: {why}")

LIMIT = 3.5  # seconds a lookup may take: below every client's first retry (glibc, musl: 5 s; Go: 5 s)
TARGETS = {"link-local": LOCAL_V4, "cluster-ip": CLUSTER_V4}
ORACLE = ClusterDNS()
SVC1 = "svc-1.default.svc.cluster.local."
SVC1_IP = ORACLE.cluster_ip(SVC1)

# (what is checked, kind, the name a pod's program asks (relative names walk the search list),
#  the fully qualified name the answer is for)
CHECKS = [
    ("service through the search list", "addr", "svc-1.default", SVC1),
    ("service, fully qualified", "a", "kubernetes.default.svc.cluster.local.", "kubernetes.default.svc.cluster.local."),
    ("AAAA", "aaaa", SVC1, SVC1),
    ("external name after the whole walk", "addr", "www.example.com", "www.example.com."),
    ("mixed case", "a", "SvC-2.DeFault.svc.CLUSTER.local.", "svc-2.default.svc.cluster.local."),
    ("SRV", "srv", "_http._tcp.svc-2.other.svc.cluster.local.", "_http._tcp.svc-2.other.svc.cluster.local."),
    ("TXT", "txt", "big-3.example.com.", "big-3.example.com."),
    ("PTR", "ptr", SVC1_IP, SVC1_IP),
    ("CNAME chain", "addr", "cname-3.example.com.", "cname-3.example.com."),
    ("CNAME", "cname", "cname-2.example.com.", "cname-2.example.com."),
    ("NXDOMAIN after the walk", "addr", "no-such-svc.default", "no-such-svc.default.svc.cluster.local."),
    ("NODATA", "txt", SVC1, SVC1),
    ("addresses too many for 512 bytes", "addr", "many-40.example.com.", "many-40.example.com."),
    ("TXT too big for UDP", "txt", "big-20.example.com.", "big-20.example.com."),
]
# clients that never retry over TCP: a truncated reply's records are all they get
# (drill shows the reply it got, as a debugging tool does)
NO_TCP_RETRY = {"musl", "busybox", "drill"}


def _oracle(kind: str, fqdn: str) -> list[str]:
    """What the cluster DNS holds: the answers a client should print."""
    if kind == "ptr":
        fqdn = ipaddress.ip_address(fqdn).reverse_pointer + "."
    types = {"addr": ("A", "AAAA")}.get(kind, (kind.upper(),))
    out = []
    for t in types:
        reply = DNSRecord.parse(ORACLE.answer(build_query(fqdn, getattr(QTYPE, t))))
        for rr in reply.rr:
            if QTYPE[rr.rtype] != t:
                continue
            if t == "TXT":
                out.append(b"".join(rr.rdata.data).decode())
            elif t == "SRV":
                out.append(f"{rr.rdata.priority} {rr.rdata.weight} {rr.rdata.port} {str(rr.rdata.target).lower()}")
            else:
                out.append(str(rr.rdata).lower())
    return sorted(set(_canonical(a) for a in out))


def _canonical(answer: str) -> str:
    try:
        return ipaddress.ip_address(answer).compressed
    except ValueError:
        return answer.lower()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    build_dir = tmp_path_factory.mktemp("resolver-clients")
    failed = resolver_clients.build(build_dir)
    return {c.name: c for c in resolver_clients.clients(build_dir)}, failed


@pytest.fixture(scope="module")
def node(mode):
    with EmulatedNode(mode=mode, replica_args=("--slow", "slow=300")) as n:
        # the iptables/nftables overlays' -localip: the link-local address and the kube-dns ClusterIP
        n.start_agent(local_ips=f"{LOCAL_V4},{LOCAL_V6},{CLUSTER_V4}")
        n.wait_agent()
        yield n


def _client(built, name):
    clients, failed = built
    client = clients[name]
    reason = failed.get(name) or client.missing()
    if reason:
        pytest.skip(f"{name}: {reason}")
    return client


def run_lookup(node, client, kind: str, name: str, server: str, options=()) -> resolver_clients.Lookup:
    argv = client.argv(kind, name, server, options)
    env = dict(os.environ, **client.env)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(["ip", "netns", "exec", node.pod, *argv], capture_output=True, text=True,
                              timeout=LIMIT + 4, env=env)
    except subprocess.TimeoutExpired:
        return resolver_clients.Lookup([], failed=True, seconds=time.monotonic() - t0, raw="timed out")
    got = client.parse(proc.stdout, kind)
    got.seconds = time.monotonic() - t0
    got.answers = sorted(set(_canonical(a) for a in got.answers))
    got.raw += proc.stderr
    return got


def _judge(client, check, got) -> str | None:
    """Why ``got`` is wrong for ``check``, or None."""
    what, kind, _, fqdn = check
    want = _oracle(kind, fqdn)
    if got.seconds > LIMIT:
        return f"took {got.seconds:.1f} s"
    if not want:  # NXDOMAIN, NODATA
        if got.answers:
            return f"answers {got.answers[:4]} where none exist"
        if got.rcode and got.rcode != ("NXDOMAIN" if "NXDOMAIN" in what else "NOERROR"):
            return f"rcode {got.rcode}"
        return None
    if got.failed or not got.answers:
        return f"failed: {got.raw.strip()[:300]!r}"
    if client.name in NO_TCP_RETRY and "too" in what:
        # what fits in 512 bytes, nothing else: the records kept must be real ones
        return None if set(got.answers) <= set(want) else f"answers not held upstream: {got.answers[:4]}"
    if got.answers != want:
        return f"got {got.answers[:6]}... ({len(got.answers)}), want {want[:6]}... ({len(want)})"
    return None


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("client_name", ["glibc", "musl", "go", "c-ares", "dnspython", "dig", "kdig", "drill",
                                         "busybox"])
def test_every_client_gets_what_the_cluster_dns_holds(node, built, client_name, target):
    client = _client(built, client_name)
    server = TARGETS[target]
    node.pod_nameserver(server)
    wrong = []
    for check in CHECKS:
        what, kind, name, fqdn = check
        if kind not in client.kinds:
            continue
        got = run_lookup(node, client, kind, name if client.searches else fqdn, server)
        why_wrong = _judge(client, check, got)
        if why_wrong:
            wrong.append(f"{what} ({kind} {name}): {why_wrong}")
    assert not wrong, f"{client_name} via {target} ({node.mode}):\n" + "\n".join(wrong)


@pytest.mark.parametrize("tool, options", [
    ("dig", ("+noedns", "+ignore")), ("dig", ("+edns=0", "+bufsize=512", "+ignore")),
    ("kdig", ("+noedns", "+ignore")), ("kdig", ("+edns=0", "+bufsize=512", "+ignore"))])
def test_a_truncated_reply_keeps_every_record_that_fits(node, built, tool, options):
    """dig +ignore shows what a client that never retries over TCP gets: TC
    and the records that fit (CoreDNS's form), not an empty answer."""
    client = _client(built, tool)
    got = run_lookup(node, client, "a", "many-40.example.com.", LOCAL_V4, options)
    assert "tc" in got.flags and got.rcode == "NOERROR", got.raw
    assert 20 <= len(got.answers) < 40 and set(got.answers) <= set(_oracle("a", "many-40.example.com.")), got.raw


@pytest.mark.parametrize("tool", ["dig", "kdig"])
def test_edns_on_and_off_and_tcp(node, built, tool):
    client = _client(built, tool)
    for options in (("+noedns",), ("+edns=0",), ("+tcp",), ("+edns=0", "+dnssec")):
        got = run_lookup(node, client, "a", SVC1, LOCAL_V4, options)
        assert got.rcode == "NOERROR" and got.answers == [SVC1_IP] and got.seconds < LIMIT, (options, got.raw)
        for warning in ("retry with", "unexpected source", "malformed", "mismatch"):
            assert warning not in got.raw.lower(), (options, got.raw)


def test_formerr_and_notimp_carry_opt_so_dig_does_not_warn(node, built):
    client = _client(built, "dig")
    got = run_lookup(node, client, "a", SVC1, LOCAL_V4, ("+opcode=4", "+edns=0"))  # NOTIFY: NOTIMP
    assert got.rcode == "NOTIMP", got.raw
    assert "OPT PSEUDOSECTION" in got.raw and "retry with +noedns" not in got.raw.lower(), got.raw


def test_a_burst_of_tcp_lookups_from_one_pod_is_all_answered(node, built):
    """100 parallel glibc lookups with ``options use-vc`` (a TCP connection
    each) for names the cluster DNS takes 300 ms to answer: every one is
    answered. Before, the 65th connection from one address was reset and
    glibc reported the name as not existing (EAI_NONAME) in under 15 ms."""
    _client(built, "glibc")
    node.set_pod_resolv_options("use-vc")
    try:
        procs = [subprocess.Popen(["ip", "netns", "exec", node.pod, "getent", "ahostsv4", f"slow.burst-{i}.example.com"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(100)]
        codes = [p.wait(30) for p in procs]
    finally:
        node.set_pod_resolv_options()
    failed = [(i, c, p.stdout.read()) for i, (c, p) in enumerate(zip(codes, procs)) if c != 0]
    assert not failed, f"{len(failed)} of 100 failed: {failed[:3]}"
