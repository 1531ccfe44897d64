"""Migrating a node from node-local-dns to nodecache without an outage (root,
emulated node, both kube-proxy modes).

A stand-in for node-cache (``nodecache_lab.nodelocaldns``: its interface, its
iptables rules as it writes them, its SO_REUSEPORT sockets on
169.254.20.10:53, and its teardown on SIGTERM) serves the pod. Under glibc
lookups and paced UDP queries from the pod, nodecache starts beside it (the
DaemonSet swap's surge pod), joins the port and steers new queries to
itself; then node-cache is terminated and deletes its interface, which
takes the address with it. nodecache held the same addresses on a standby
interface of its own meanwhile (the kernel keeps a local route per
interface), so they never go away, and it recreates the interface as its
own at once, from the netlink event (the reconcile interval is 60 s here),
then removes the standby. Negative control: without the standby (deleted
by the test) and without events (``-watch-node=false``), the node has no
address for the rest of the run and queries are lost; events alone restore
it within tens of milliseconds.

The same swap for each installer's layout (``nodecache_lab.layouts``: kubespray's
169.254.25.10 with health on 9254 and a 2 s grace period, kops' health on
3989 without iptables rules, the Helm chart's 169.254.20.25 bound as
0.0.0.0), the agent run with the arguments its overlay
(daemonset/overlays/<installer>) renders to and the Corefile that overlay
serves."""
import shutil
from pathlib import Path

import pytest

from nodecache_lab.emunode import CLUSTER_V4, LOCAL_V4, EmulatedNode, missing_requirements
from nodecache_lab.layouts import LAYOUTS, overlay
from nodecache_lab.nodeload import migrate

ROOT = Path(__file__).resolve().parent.parent.parent

why = missing_requirements()
pytestmark = pytest.mark.skipif(why is not None, reason=f"emulated node: {why}")


def _migrate(mode: str, *flags: str, drop_standby: bool = False) -> dict:
    with EmulatedNode(mode=mode) as n:
        return migrate(n, *flags, drop_standby=drop_standby)


def test_nodecache_replaces_node_cache_without_a_lost_query(mode):
    run = _migrate(mode)
    lookups, paced, log = run["lookups"], run["paced"], run["log"]
    assert "joined it with SO_REUSEPORT" in log, log
    assert "interface nodelocaldns deleted" in log and "restoring now" in log, log
    assert LOCAL_V4 in run["interface"], (run["interface"], log)
    assert LOCAL_V4 in run["standby"] and not run["standby_after"], (run["standby"], log)
    assert run["health"] is not None and run["health"] < 3.0, log  # liveness: ours once node-cache's is gone
    assert lookups.failed == [] and len(lookups.results) > 20, (lookups.failed, log[-3000:])
    assert paced["unanswered"] == 0 and paced["rcodes"] == {"0": paced["sent"]}, (paced, log[-3000:])
    assert "Traceback" not in log


def test_negative_control_without_standby_or_events_the_swap_loses_queries(mode):
    run = _migrate(mode, "-watch-node=false", drop_standby=True)
    lookups, paced = run["lookups"], run["paced"]
    assert LOCAL_V4 not in run["interface"]  # still missing: the next reconcile is a minute away
    assert paced["unanswered"] > 0 or lookups.failed, (paced, run["log"][-2000:])


def test_without_events_the_standby_carries_the_address_until_the_next_reconcile():
    run = _migrate("iptables", "-watch-node=false")  # the standby is the same in both modes
    assert LOCAL_V4 not in run["interface"] and run["standby_after"], run["log"][-2000:]
    assert run["paced"]["unanswered"] == 0 and run["lookups"].failed == [], run["paced"]


@pytest.mark.parametrize("installer", ["kubespray", "kops", "helm"])
def test_each_installers_node_local_dns_is_replaced_without_a_lost_query(mode, installer):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (kubectl kustomize renders the overlays)")
    layout = LAYOUTS[installer]
    local_ips, flags, corefile = overlay(ROOT / "daemonset" / "overlays" / installer, CLUSTER_V4)
    assert local_ips.split(",")[0] == layout.local_ip and (corefile is None) == (installer != "helm")
    with EmulatedNode(mode=mode) as n:
        run = migrate(n, *flags, layout=layout, local_ips=local_ips, corefile=corefile)
    lookups, paced, log = run["lookups"], run["paced"], run["log"]
    assert "joined it with SO_REUSEPORT" in log, log
    assert layout.local_ip in run["interface"] and not run["standby_after"], (run["interface"], log[-3000:])
    assert run["health"] is not None and run["health"] < 3.0, log[-3000:]  # the liveness probe's address
    assert lookups.failed == [] and len(lookups.results) > 20, (lookups.failed, log[-3000:])
    assert paced["unanswered"] == 0 and paced["rcodes"] == {"0": paced["sent"]}, (paced, log[-3000:])
    assert bool(run["rules"]) == layout.setup_iptables, run["rules"]  # kops: no rules, as its -setupiptables=false
    assert "Traceback" not in log
