"""k8s_schema with real stub resolvers in the emulated node: a pod's lookup
of an external name through glibc's getaddrinfo and through musl's walks
the pod's search list (ndots:5) and gets the same addresses with the stage
as without it, while the cluster DNS replicas see none of the walk's
queries under the cluster zone (only the one ancestor the stage asks,
``com.svc.cluster.local``). Control: without the stage they see the walk.
The two libraries walk differently (musl stops at the first answer that
is not NXDOMAIN); both are held to the same result."""
from __future__ import annotations

import os
import subprocess
import time

import ipaddress

import pytest
from dnslib import QTYPE, DNSRecord

from nodecache.emulated.client import build
from nodecache.emulated.upstream import ClusterDNS
from nodecache_lab.emunode import LOCAL_V4, LOCAL_V6, NODE_COREFILE, EmulatedNode, missing_requirements

import resolver_clients

why = missing_requirements()
pytestmark = pytest.mark.skipif(why is not None, reason=f"emulated node: {why}")

SCHEMA_COREFILE = NODE_COREFILE.replace("    bind __PILLAR__LOCAL__DNS__\n",
                                        "    bind __PILLAR__LOCAL__DNS__\n    k8s_schema {\n        search none\n    }\n", 1)
WALK = ("default.svc.cluster.local.", "svc.cluster.local.", "cluster.local.")


def _held(name: str) -> list[str]:
    """The addresses the cluster DNS holds for ``name`` (the oracle)."""
    out = set()
    for qtype in (QTYPE.A, QTYPE.AAAA):
        for rr in DNSRecord.parse(ClusterDNS().answer(build(name, qtype))).rr:
            out.add(ipaddress.ip_address(str(rr.rdata)).compressed)
    return sorted(out)


def _addresses(got) -> list[str]:
    return sorted({ipaddress.ip_address(a).compressed for a in got.answers})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    build_dir = tmp_path_factory.mktemp("searchpath-clients")
    failed = resolver_clients.build(build_dir)
    return {c.name: c for c in resolver_clients.clients(build_dir)}, failed


def _lookup(node, client, name: str) -> resolver_clients.Lookup:
    t0 = time.monotonic()
    proc = subprocess.run(["ip", "netns", "exec", node.pod, *client.argv("addr", name, LOCAL_V4)],
                          capture_output=True, text=True, timeout=15, env=dict(os.environ, **client.env))
    got = client.parse(proc.stdout, "addr")
    got.seconds = time.monotonic() - t0
    got.raw += proc.stderr
    return got


def _walk_seen(node, schema: bool, client, tag: str):
    """(addresses, the cluster-zone names the replicas saw) for one lookup
    after a warm-up lookup (the zone's SOA learned, connections open)."""
    node.start_agent(local_ips=f"{LOCAL_V4},{LOCAL_V6}", corefile=SCHEMA_COREFILE if schema else NODE_COREFILE,
                     log_name=f"agent-{tag}.log")
    try:
        node.wait_agent()
        node.pod_nameserver(LOCAL_V4)
        _lookup(node, client, f"warm-{tag}.example.com")
        marks = node.upstream_marks()
        got = _lookup(node, client, f"walk-{tag}.example.com")
        seen = sorted({name for _, _, name in node.upstream_log(after=marks) if name.endswith("cluster.local.")})
        return got, seen
    finally:
        node.stop_agent()


@pytest.mark.parametrize("client_name", ["glibc", "musl"])
def test_a_real_resolvers_walk_ends_at_the_node(mode, built, client_name):
    clients, failed = built
    client = clients[client_name]
    reason = failed.get(client_name) or client.missing()
    if reason:
        pytest.skip(f"{client_name}: {reason}")
    with EmulatedNode(mode=mode) as node:
        off, seen_off = _walk_seen(node, False, client, f"{client_name}-off")
        on, seen_on = _walk_seen(node, True, client, f"{client_name}-on")
    name_off, name_on = f"walk-{client_name}-off.example.com.", f"walk-{client_name}-on.example.com."
    assert _addresses(off) == _held(name_off), off.raw
    assert _addresses(on) == _held(name_on) and on.seconds < 3, (on.raw, on.seconds)
    # control: without the stage the replicas answer the walk's steps under the zone
    assert {name_off + s for s in WALK} <= set(seen_off), seen_off
    # with it: none of them, only the ancestor that denies the second step
    assert not any(n.startswith(name_on) for n in seen_on) and set(seen_on) <= {"com.svc.cluster.local."}, seen_on
