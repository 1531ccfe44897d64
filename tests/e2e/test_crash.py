"""Crash-proof node DNS on the emulated node (root): pods use the kube-dns
ClusterIP, which the agent binds (node-local-dns's args in kube-proxy's
iptables mode). The agent is SIGKILLed (a crash, an OOM kill) while a pod
resolves with glibc, and restarted 2 s later as kubelet would. Fail-open
NOTRACK rules (``-m socket``) let the pod's packets fall through to
kube-proxy's DNAT meanwhile; once the agent is back they are untracked
again. Negative control: ``-failopen=false`` (NOTRACK whether or not our socket is bound) fails lookups."""
import signal
import subprocess
import time

import pytest

from nodecache_lab.emunode import CLUSTER_V4, LOCAL_V4, LOCAL_V6, EmulatedNode, missing_requirements, sh
from nodecache_lab.nodeload import Lookups

why = missing_requirements()
pytestmark = pytest.mark.skipif(why is not None, reason=f"emulated node: {why}")
IPS = f"{LOCAL_V4},{CLUSTER_V4},{LOCAL_V6}"


def _crash_and_restart(mode: str, *flags: str) -> tuple[Lookups, str, str]:
    with EmulatedNode(mode=mode) as n:
        n.pod_nameserver(CLUSTER_V4)
        n.start_agent("-syncinterval", "1", *flags, local_ips=IPS)
        n.wait_agent()
        lookups = Lookups(n, 7.0)
        lookups.start()
        time.sleep(1.5)
        n.agent.send_signal(signal.SIGKILL)      # no teardown: interface and rules stay
        n.agent.wait(10)
        killed = time.monotonic()
        probes = _probes(n)                      # lookups begun with no process at all
        time.sleep(max(0.0, 2.0 - (time.monotonic() - killed)))  # kubelet's restart delay
        lookups.probes = probes
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


def _probes(n: EmulatedNode, count: int = 3) -> list[tuple[int, float]]:
    """(exit code, seconds) of lookups made one after the other while no
    agent process exists (a query in flight at the kill dies with it, in any
    mode; these start after). A resolver timeout counts as no answer."""
    out = []
    for i in range(count):
        t0 = time.monotonic()
        try:
            code = n.getent(f"svc-{90 + i}.default", timeout=2.5).returncode
        except subprocess.TimeoutExpired:
            code = -1
        out.append((code, time.monotonic() - t0))
    return out


def _dns_entries(table: str) -> list[str]:
    return [ln for ln in table.splitlines() if "dport=53 " in ln and f"dst={CLUSTER_V4} " in ln]


def test_agent_sigkilled_and_restarted_fails_no_lookup(mode):
    """No lookup fails, and lookups begun while no agent process exists are
    answered at once (by CoreDNS through kube-proxy). A query in flight at
    the very moment of the kill dies with the process and glibc asks again
    5 s later: in any mode, since nothing outside the process holds it."""
    lookups, table, log = _crash_and_restart(mode)
    assert len(lookups.results) >= 20 and lookups.failed == [], (lookups.failed, log[-2000:])
    assert all(code == 0 and secs < 1.0 for code, secs in lookups.probes), (lookups.probes, log[-2000:])
    assert _dns_entries(table) == [], table


def test_negative_control_without_fail_open_the_crash_fails_lookups(mode):
    """Without fail-open, lookups begun with no agent fail (port unreachable)
    or stall until it is back (that ICMP is rate-limited: glibc then waits
    out its 5 s timeout): either breaks the guarantee above."""
    lookups, _, _ = _crash_and_restart(mode, "-failopen=false")
    assert any(code != 0 or secs >= 1.0 for code, secs in lookups.probes), lookups.probes


def _successor_killed(mode: str, grace: str) -> tuple[Lookups, str, str]:
    """Pods use the link-local address with fail-open off (in nftables mode
    it would reach CoreDNS without an agent, see the next test), so only the
    donor's resume can save their lookups when the heir dies."""
    with EmulatedNode(mode=mode) as n:
        donor = n.start_agent("-syncinterval", "1", "-handoff-grace", grace, "-failopen=false",
                              log_name="donor.log")
        n.wait_agent()
        donor_log = n.agent_log
        lookups = Lookups(n, 6.0)
        lookups.start()
        time.sleep(1.0)
        heir = n.start_agent("-syncinterval", "1", "-failopen=false", log_name="heir.log")
        n.wait_agent(needle="READY sent")
        time.sleep(1.0)
        heir.send_signal(signal.SIGKILL)
        heir.wait(10)
        lookups.join(60)
        sh("conntrack", "-F", ns=n.node, check=False)
        if not lookups.failed:
            for i in range(3):
                assert n.getent(f"svc-{60 + i}.default").returncode == 0
        table = n.conntrack()
        n.agent = donor
        if donor.poll() is None:
            n.stop_agent()
        return lookups, table, donor_log.read_text()


def test_successor_sigkilled_after_ready_donor_resumes_and_no_lookup_fails(mode):
    lookups, table, log = _successor_killed(mode, "10")
    assert "serving again" in log, log[-3000:]
    assert len(lookups.results) >= 20 and lookups.failed == [], (lookups.failed, log[-3000:])
    assert [ln for ln in table.splitlines() if "dport=53 " in ln and f"dst={LOCAL_V4} " in ln] == [], table


def test_negative_control_without_grace_the_successors_death_fails_lookups(mode):
    lookups, _, log = _successor_killed(mode, "0")
    assert "serving again" not in log and lookups.failed, lookups.results


def test_the_link_local_address_fails_open_where_the_datapath_allows(mode):
    """Pods on the link-local address, the agent SIGKILLed and not restarted.
    nftables mode: our divert (after conntrack, before kube-proxy's DNAT)
    sends new tracked queries to the upstream ClusterIP and kube-proxy takes
    them to CoreDNS, the reply coming back from the link-local address:
    every lookup answered. iptables mode: a packet DNAT'd to a ClusterIP is
    not DNAT'd again, so nothing reaches CoreDNS (documented; the ClusterIP
    path fails open there). Control: -failopen=false fails them in both."""
    def lookups_with_the_agent_dead(count: int, *flags: str) -> list:
        with EmulatedNode(mode=mode) as n:
            n.start_agent("-syncinterval", "1", *flags)
            n.wait_agent()
            assert n.getent("svc-1.default").returncode == 0
            n.agent.send_signal(signal.SIGKILL)
            n.agent.wait(10)
            codes = []
            for i in range(2, 2 + count):
                try:
                    codes.append(n.getent(f"svc-{i}.default", timeout=6).returncode)
                except subprocess.TimeoutExpired:
                    codes.append(-1)  # no answer at all
            return codes
    if mode == "nftables":
        dead = lookups_with_the_agent_dead(6)
        assert dead == [0] * 6, dead
    else:
        dead = lookups_with_the_agent_dead(2)
        assert all(code != 0 for code in dead), dead
    assert all(code != 0 for code in lookups_with_the_agent_dead(2, "-failopen=false"))
