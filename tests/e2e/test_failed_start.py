"""A start that fails removes nothing it did not set up (root, emulated node).

Reported: with a process already serving the link-local address on a
`nodelocaldns` interface (node-cache during a migration, or a second agent
with another handoff directory), `nodecache run` failed to bind, then
removed every rule and the interface and exited: DNS gone for the node.
Now it removes only what that start created. Control: the earlier code
(teardown on a failed start) fails these tests (checked by reverting
Lifecycle._start's `undo_start` to `teardown`)."""
import subprocess
import sys
import time

import pytest

from nodecache_lab.emunode import LOCAL_V4, LOCAL_V6, EmulatedNode, missing_requirements, sh

why = missing_requirements()
pytestmark = pytest.mark.skipif(why is not None, reason=f"emulated node: {why}")

# node-cache's rules as it writes them (pkg/util/iptables, its own comment)
NODE_CACHE_RULES = [("raw", "PREROUTING", "-p", "udp", "-d", LOCAL_V4, "--dport", "53"),
                    ("raw", "OUTPUT", "-p", "udp", "-s", LOCAL_V4, "--sport", "53"),
                    ("filter", "INPUT", "-p", "udp", "-d", LOCAL_V4, "--dport", "53")]
# a process that holds IP:53 without SO_REUSEPORT: nobody can join it (a
# holder with SO_REUSEPORT, as node-cache, is joined: see test_migration)
HOLDER = ("import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
          f"s.bind(('{LOCAL_V4}',53));t=socket.socket();"
          f"t.bind(('{LOCAL_V4}',53));t.listen();print('holding',flush=True);time.sleep(120)")


def _failed_start(n: EmulatedNode, log_name: str) -> str:
    agent = n.start_agent("-handoff-dir", str(n.tmp / f"{log_name}.handoff"), log_name=log_name)
    assert agent.wait(30) == 1, n.agent_log.read_text()
    return n.agent_log.read_text()


def _addresses(n: EmulatedNode) -> list[str]:
    """The interface's addresses but the kernel's own fe80:: one (it comes once the link is up)."""
    return sorted(ln.split()[3] for ln in n.interface().splitlines() if "scope link" not in ln)


def _node_cache_state(n: EmulatedNode) -> tuple[str, str]:
    rules = sh("iptables-save", ns=n.node).stdout
    return n.interface(), "\n".join(sorted(ln for ln in rules.splitlines() if ln.startswith("-A")))


def test_a_foreign_holder_keeps_its_interface_and_rules():
    """A stand-in for node-cache: its bridge interface with the address, its
    NOTRACK/ACCEPT rules (its own comment), its sockets on IP:53. (iptables
    only: node-cache writes no nftables rules.)"""
    with EmulatedNode() as n:
        sh("ip", "link", "add", "nodelocaldns", "type", "bridge", ns=n.node)
        sh("ip", "addr", "add", f"{LOCAL_V4}/32", "dev", "nodelocaldns", ns=n.node)
        sh("ip", "link", "set", "nodelocaldns", "up", ns=n.node)
        for table, chain, *spec in NODE_CACHE_RULES:
            target = "NOTRACK" if table == "raw" else "ACCEPT"
            sh("iptables", "-w", "5", "-t", table, "-I", chain, "1", *spec, "-m", "comment", "--comment",
               "NodeLocal DNS Cache: skip conntrack", "-j", target, ns=n.node)
        holder = subprocess.Popen(["ip", "netns", "exec", n.node, sys.executable, "-c", HOLDER],
                                  stdout=subprocess.PIPE, text=True)
        n.procs.append(holder)
        assert holder.stdout.readline().strip() == "holding"
        before = _node_cache_state(n)
        log = _failed_start(n, "agent-fails.log")
        assert "cannot listen" in log or "Address already in use" in log, log
        assert _node_cache_state(n) == before, log
        assert "removed 0 rules" not in log and "removed interface" not in log, log
        assert "this start set up nothing" in log or f"removed {LOCAL_V6}" in log, log


def test_a_second_agent_joins_the_first_and_leaves_its_networking_when_it_stops(mode):
    """A second agent with another handoff directory finds no handoff socket:
    it joins the first's port (SO_REUSEPORT, as node-cache's CoreDNS binds
    it) instead of failing, and when it stops it sees the first still
    serving, so it removes neither the interface nor the rules."""
    with EmulatedNode(mode=mode) as n:
        n.start_agent("-syncinterval", "60")
        n.wait_agent()
        first, first_log = n.agent, n.agent_log
        before = (_addresses(n), sorted(n.rules()))
        n.start_agent("-syncinterval", "60", "-handoff-dir", str(n.tmp / "other.handoff"), log_name="agent2.log")
        n.wait_agent()
        assert n.stop_agent() == 0
        log = n.agent_log.read_text()
        assert "joined it with SO_REUSEPORT" in log, log
        assert "another process still serves" in log and "removed interface" not in log, log
        assert (_addresses(n), sorted(n.rules())) == before, log
        assert first.poll() is None
        r = n.getent("svc-1.default")  # the first agent answers again (the group's steering is gone)
        assert r.returncode == 0, (r, first_log.read_text())


def test_a_failed_start_removes_the_interface_it_created(mode):
    """Nothing there before, the Corefile's port held: the interface this
    start created is removed again (undo only our own)."""
    with EmulatedNode(mode=mode) as n:
        holder = subprocess.Popen(["ip", "netns", "exec", n.node, sys.executable, "-c",
                                   HOLDER.replace(LOCAL_V4, "0.0.0.0")], stdout=subprocess.PIPE, text=True)
        n.procs.append(holder)
        assert holder.stdout.readline().strip() == "holding"
        log = _failed_start(n, "agent-fails.log")
        assert "removed interface nodelocaldns (created by this start)" in log, log
        deadline = time.monotonic() + 5
        while n.interface() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert n.interface() == "", log
