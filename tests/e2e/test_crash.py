"""Crash-proof node DNS on the emulated node (root): pods use the kube-dns
ClusterIP, which the agent binds (node-local-dns's args in kube-proxy's
iptables mode). The agent is SIGKILLed (a crash, an OOM kill) while a pod
resolves with glibc, and restarted 2 s later as kubelet would. Fail-open
NOTRACK rules (``-m socket``) let the pod's packets fall through to
kube-proxy's DNAT meanwhile; once the agent is back they are untracked
again. Negative control: ``-failopen=false`` (wave 1's rules) fails lookups."""
import signal
import threading
import time

import pytest

from nodecache.emunode import CLUSTER_V4, LOCAL_V4, LOCAL_V6, EmulatedNode, missing_requirements, sh

why = missing_requirements()
pytestmark = pytest.mark.skipif(why is not None, reason=f"emulated node: {why}")
IPS = f"{LOCAL_V4},{CLUSTER_V4},{LOCAL_V6}"


class Lookups(threading.Thread):
    """glibc lookups from the pod, back to back, each a distinct name (misses and hits)."""

    def __init__(self, n: EmulatedNode, seconds: float):
        super().__init__(daemon=True)
        self.n, self.seconds = n, seconds
        self.results: list[tuple[str, int]] = []

    def run(self):
        end, i = time.monotonic() + self.seconds, 0
        while time.monotonic() < end:
            name = f"svc-{i % 100}.default"
            self.results.append((name, self.n.getent(name, timeout=20).returncode))
            i += 1
            time.sleep(0.05)

    @property
    def failed(self) -> list:
        return [r for r in self.results if r[1] != 0]


def _crash_and_restart(*flags: str) -> tuple[Lookups, str, str]:
    with EmulatedNode() as n:
        n.pod_nameserver(CLUSTER_V4)
        n.start_agent("-syncinterval", "1", *flags, local_ips=IPS)
        n.wait_agent()
        lookups = Lookups(n, 7.0)
        lookups.start()
        time.sleep(1.5)
        n.agent.send_signal(signal.SIGKILL)      # no teardown: interface and rules stay
        n.agent.wait(10)
        time.sleep(2.0)                          # kubelet's restart delay
        n.start_agent("-syncinterval", "1", *flags, local_ips=IPS, log_name="agent2.log")
        n.wait_agent()
        lookups.join(30)
        # back to normal: new pod DNS to the agent is untracked again
        sh("conntrack", "-F", ns=n.node, check=False)
        for i in range(5):
            assert n.getent(f"svc-{50 + i}.default").returncode == 0
        table = n.conntrack()
        log = n.agent_log.read_text()
        n.stop_agent()
        return lookups, table, log


def _dns_entries(table: str) -> list[str]:
    return [ln for ln in table.splitlines() if "dport=53 " in ln and f"dst={CLUSTER_V4} " in ln]


def test_agent_sigkilled_and_restarted_fails_no_lookup():
    lookups, table, log = _crash_and_restart()
    assert len(lookups.results) >= 20 and lookups.failed == [], (lookups.failed, log[-2000:])
    assert _dns_entries(table) == [], table


def test_negative_control_without_fail_open_the_crash_fails_lookups():
    lookups, _, _ = _crash_and_restart("-failopen=false")
    assert lookups.failed, lookups.results
