"""Upstream churn on the emulated node (root): the cluster DNS replicas behind
kube-proxy's DNAT are rolled one at a time, one is SIGKILLed while still an
endpoint, and both are gone for a second, while a pod sends only cache
misses at 300/s. The agent must turn none of it into a failed lookup.
Negative control: the same run with re-sends and retries off
(-forward-retry=false) fails lookups."""
import json
import time

import pytest

from nodecache_lab.emunode import EmulatedNode, missing_requirements
from nodecache_lab.nodeload import churn

why = missing_requirements()
pytestmark = pytest.mark.skipif(why is not None, reason=f"emulated node: {why}")
RATE = 300.0
SECONDS = 10.0


# One pod sends every miss here, so the misses held while no replica answers
# (300/s for the second with no endpoint plus however long a replica takes to
# start: ~1.7 s on a loaded 2-core machine, ~510 queries) reach the default
# per-client in-flight share (512) and the excess is REFUSED by design
# (nodecache_refused_total{reason="client_share"}). That bound is tested on its
# own (tests/scenario/test_abuse_bounds.py); here the share is the agent-wide
# cap so that only the upstream churn decides.
SHARE = ("-max-inflight-per-client", "4096")


def _run(mode: str, *flags: str) -> tuple[dict, str]:
    with EmulatedNode(mode=mode) as n:
        n.start_agent(*SHARE, *flags)
        n.wait_agent()
        tag = f"m{int(time.time() * 1000) % 10**8}"
        # unique names in the cluster zone: every one a miss, forwarded over TCP
        names = [f"{tag}-{i}.default.svc.cluster.local" for i in range(int(RATE * SECONDS))]
        load = n.pod_load(names, RATE)
        churn(n)
        out = load.stdout.read()
        load.wait(SECONDS + 30)
        n.stop_agent()
        return json.loads(out), n.agent_log.read_text()


def test_replicas_rolled_killed_and_gone_for_a_second_fail_no_lookup(mode):
    result, log = _run(mode)
    servfail = result["rcodes"].get("2", 0)
    answered = sum(result["rcodes"].values())
    assert result["unanswered"] == 0 and servfail == 0, f"{result}\n{log[-3000:]}"
    assert answered == result["sent"] == int(RATE * SECONDS)
    assert set(result["rcodes"]) == {"3"}  # NXDOMAIN from the cluster DNS for every one
    assert "Traceback" not in log and "every upstream failed" not in log, log[-3000:]


def test_negative_control_without_retries_the_same_churn_fails_lookups(mode):
    result, _ = _run(mode, "-forward-retry=false")
    assert result["rcodes"].get("2", 0) + result["unanswered"] > 0, result
