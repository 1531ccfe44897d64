"""Cilium clusters: agent pods in the pod network behind a Local Redirect
Policy (root, emulated node, both kube-proxy modes for what backs the
ClusterIP when no local pod is Ready).

Two agent pods, each in its own network namespace with its own address,
node-cache's LRP flags, and the DaemonSet's shared handoff directory; the
stand-in for Cilium's redirect (``nodecache_lab.podnetwork.Redirect``) follows
their /ready every 0.2 s. A client pod resolves the kube-dns ClusterIP
with glibc and sends paced UDP queries throughout a surge rollout: the new
pod takes the old one's *cache* (not its sockets: another namespace) and
becomes Ready; the old pod is SIGTERMed, unready at once, answering
through its lameduck, then gone. Guarantee: 0 failed lookups, 0 lost
queries, and the cluster DNS sees no refill of the names the old pod had
cached. Negative controls: redirection not gated on readiness fails
lookups; a new pod with its own handoff directory starts cold and refills."""
import pytest

from nodecache_lab.emunode import EmulatedNode, missing_requirements
from nodecache_lab.podnetwork import lone_backend_killed, surge_rollout

why = missing_requirements()
pytestmark = pytest.mark.skipif(why is not None, reason=f"emulated node: {why}")


def _rollout(mode: str, gated: bool = True, shared_handoff: bool = True) -> dict:
    with EmulatedNode(mode=mode) as n:
        return surge_rollout(n, gated=gated, shared_handoff=shared_handoff)


def test_a_surge_rollout_behind_the_redirect_fails_nothing_and_refills_nothing(mode):
    run = _rollout(mode)
    lookups, paced, (old_log, new_log) = run["lookups"], run["paced"], run["logs"]
    assert "took" in new_log and "in another network namespace" in new_log, new_log
    assert "gave" in old_log and "still serving on our own sockets" in old_log, old_log
    assert run["unready_after"] is not None and run["unready_after"] < 0.5, old_log
    assert "lameduck" in old_log, old_log
    assert lookups.failed == [] and len(lookups.results) > 20, (lookups.failed, old_log[-1500:], new_log[-1500:])
    assert paced["unanswered"] == 0 and paced["rcodes"] == {"0": paced["sent"]}, paced
    assert run["refill"] == 0, (run["refill"], run["warm_entries"], new_log)  # warm: none of the names asked again
    assert [b for _, b in run["changes"]][-3:] == [(0,), (0, 1), (1,)], run["changes"]
    assert run["touched"] == []  # -setupinterface=false -setupiptables=false: nothing of ours on the node


# The controls run in one kube-proxy mode: what they take away (readiness
# gating, the shared directory) is the same in both.
def test_negative_control_redirect_not_gated_on_readiness_fails_lookups():
    run = _rollout("iptables", gated=False)
    assert run["lookups"].failed or run["paced"]["unanswered"], run["paced"]


def test_negative_control_without_the_shared_handoff_directory_the_new_pod_refills():
    run = _rollout("iptables", shared_handoff=False)
    assert run["refill"] >= 50, run["refill"]                 # a cold start asks the cluster DNS again


def test_a_killed_lone_backend_falls_back_to_the_cluster_dns(mode):
    """What Cilium users do not get: a SIGKILLed (OOM-killed) lone pod gets
    no lameduck; lookups fail or stall until the redirect sees it unready
    and falls back to CoreDNS. Measured, and bounded: every lookup begun a
    second after the kill succeeds."""
    with EmulatedNode(mode=mode) as n:
        out = lone_backend_killed(n)
    after = [code for started, code in out["after_kill"] if started > out["killed"] + 1.0]
    assert after and all(code == 0 for code in after), out
    assert out["fallback_after"] is not None and out["fallback_after"] < 1.0, out
