"""Cilium clusters: agent pods in the pod network behind a Local Redirect
Policy (root, emulated node, both kube-proxy modes for what backs the
ClusterIP when no local pod is Ready).

Two agent pods, each in its own network namespace with its own address,
node-cache's LRP flags, and the DaemonSet's shared handoff directory; the
stand-in for Cilium's redirect (``testing.podnetwork.Redirect``) follows
their /ready every 0.2 s. A client pod resolves the kube-dns ClusterIP
with glibc and sends paced UDP queries throughout a surge rollout: the new
pod takes the old one's *cache* (not its sockets: another namespace) and
becomes Ready; the old pod is SIGTERMed, unready at once, answering
through its lameduck, then gone. Guarantee: 0 failed lookups, 0 lost
queries, and the cluster DNS sees no refill of the names the old pod had
cached. Negative controls: redirection not gated on readiness fails
lookups; a new pod with its own handoff directory starts cold and refills."""
import json
import re
import signal
import time

import pytest

from nodecache.testing.emunode import CLUSTER_V4, EmulatedNode, missing_requirements
from nodecache.testing.nodeload import Lookups
from nodecache.testing.podnetwork import AgentPods, Redirect

why = missing_requirements()
pytestmark = pytest.mark.skipif(why is not None, reason=f"emulated node: {why}")
NAME = re.compile(r"^svc-\d+\.default\.svc\.cluster\.local\.?$")
RATE, SECONDS = 200.0, 9.0


def _refill(n: EmulatedNode, since: int) -> int:
    """Upstream A queries for the warm names after the first ``since`` lines
    (glibc's AAAA queries were never warmed: they are misses either way)."""
    return sum(1 for _, qtype, name in n.upstream_log()[since:] if qtype == 1 and NAME.match(name))


def _rollout(mode: str, gated: bool = True, shared_handoff: bool = True) -> dict:
    with EmulatedNode(mode=mode) as n:
        pods = AgentPods(n)
        redirect = Redirect(n, pods, gated=gated)
        pods.start(0, str(n.tmp / "handoff"))
        pods.wait_ready(0)
        redirect.start()
        n.pod_nameserver(CLUSTER_V4)
        names = [f"svc-{i % 100}.default.svc.cluster.local" for i in range(int(RATE * SECONDS))]
        warm = n.pod_load(names[:200], RATE, target=CLUSTER_V4)   # the old pod caches every name
        warm.wait(30)
        time.sleep(0.5)
        load = n.pod_load(names, RATE, target=CLUSTER_V4, timeout=3.0)
        lookups = Lookups(n, SECONDS)
        lookups.start()
        time.sleep(1.0)
        before = len(n.upstream_log())
        pods.start(1, str(n.tmp / ("handoff" if shared_handoff else "handoff-b")))   # the surge pod
        pods.wait_ready(1)
        time.sleep(1.0)                      # the redirect sees it Ready
        pods.procs[0].send_signal(signal.SIGTERM)  # the DaemonSet deletes the old pod
        unready_after = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3 and unready_after is None:
            if not pods.ready(0):
                unready_after = time.monotonic() - t0
            time.sleep(0.02)
        lookups.join(60)
        paced = json.loads(load.stdout.read())
        load.wait(30)
        pods.procs[0].wait(20)
        redirect.stop()
        return {"lookups": lookups, "paced": paced, "refill": _refill(n, before), "unready_after": unready_after,
                "logs": (pods.log(0), pods.log(1)), "changes": redirect.changes}


def test_a_surge_rollout_behind_the_redirect_fails_nothing_and_refills_nothing(mode):
    run = _rollout(mode)
    lookups, paced, (old_log, new_log) = run["lookups"], run["paced"], run["logs"]
    assert "took" in new_log and "in another network namespace" in new_log, new_log
    assert "gave" in old_log and "still serving on our own sockets" in old_log, old_log
    assert run["unready_after"] is not None and run["unready_after"] < 0.5, old_log
    assert "lameduck" in old_log, old_log
    assert lookups.failed == [] and len(lookups.results) > 20, (lookups.failed, old_log[-1500:], new_log[-1500:])
    assert paced["unanswered"] == 0 and paced["rcodes"] == {"0": paced["sent"]}, paced
    assert run["refill"] == 0, run["refill"]                  # warm: the cluster DNS saw none of the names again
    assert [b for _, b in run["changes"]][-3:] == [(0,), (0, 1), (1,)], run["changes"]


# The controls run in one kube-proxy mode: what they take away (readiness
# gating, the shared directory) is the same in both.
def test_negative_control_redirect_not_gated_on_readiness_fails_lookups():
    run = _rollout("iptables", gated=False)
    assert run["lookups"].failed or run["paced"]["unanswered"], run["paced"]


def test_negative_control_without_the_shared_handoff_directory_the_new_pod_refills():
    run = _rollout("iptables", shared_handoff=False)
    assert run["refill"] >= 50, run["refill"]                 # a cold start asks the cluster DNS again
