"""iptables rules that keep node-local DNS traffic out of conntrack.

For every local IP and DNS port, UDP and TCP, the rules node-cache installs:

* raw PREROUTING  ``-d IP --dport P -j NOTRACK``   pod -> agent
* raw OUTPUT      ``-s IP --sport P -j NOTRACK``   agent -> pod
* raw OUTPUT      ``-d IP --dport P -j NOTRACK``   host-network clients -> agent
* filter INPUT    ``-d IP --dport P -j ACCEPT``    untracked packets skip
* filter OUTPUT   ``-s IP --sport P -j ACCEPT``    the ESTABLISHED accept rules
* raw OUTPUT NOTRACK both ways for the health port (TCP), for probes.

IPv4 addresses go to ``iptables``, IPv6 to ``ip6tables``, from one process.
Each rule carries a comment naming us. ``ensure_rules`` is idempotent: a
rule is checked with ``-C`` and inserted at the top of its chain (so it
precedes kube-proxy's rules) only when missing, so any number of
reconciles leaves each rule exactly once. ``-w`` waits a bounded time for
the xtables lock; a lock still held is reported as such (node-cache's
``iptables_lock`` error) and retried at the next reconcile.
"""
from __future__ import annotations

import ipaddress
import logging
import subprocess
from dataclasses import dataclass

log = logging.getLogger("nodecache.node")
LOCK_WAIT = "5"
COMMENT = "nodecache: node-local DNS, no conntrack"


class RuleError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # iptables | iptables_lock


@dataclass(frozen=True)
class Rule:
    family: int       # 4 or 6
    table: str
    chain: str
    spec: tuple[str, ...]

    @property
    def binary(self) -> str:
        return "iptables" if self.family == 4 else "ip6tables"

    def __str__(self) -> str:
        return f"{self.binary} -t {self.table} {self.chain} {' '.join(self.spec)}"


def rules_for(ips: list[str], dns_ports: dict[str, set[int]] | int, health_port: int | None) -> list[Rule]:
    out = []
    for ip in ips:
        fam = ipaddress.ip_address(ip).version
        ports = dns_ports.get(ip, {53}) if isinstance(dns_ports, dict) else {dns_ports}
        for port in sorted(ports):
            for proto in ("tcp", "udp"):
                p = ("-p", proto)
                dst = p + ("-d", ip, "--dport", str(port))
                src = p + ("-s", ip, "--sport", str(port))
                out += [Rule(fam, "raw", "PREROUTING", dst + ("-j", "NOTRACK")),
                        Rule(fam, "filter", "INPUT", dst + ("-j", "ACCEPT")),
                        Rule(fam, "raw", "OUTPUT", src + ("-j", "NOTRACK")),
                        Rule(fam, "filter", "OUTPUT", src + ("-j", "ACCEPT")),
                        Rule(fam, "raw", "OUTPUT", dst + ("-j", "NOTRACK"))]
        if health_port:
            hp = str(health_port)
            out += [Rule(fam, "raw", "OUTPUT", ("-p", "tcp", "-d", ip, "--dport", hp, "-j", "NOTRACK")),
                    Rule(fam, "raw", "OUTPUT", ("-p", "tcp", "-s", ip, "--sport", hp, "-j", "NOTRACK"))]
    return out


def _run(rule: Rule, op: str, *position: str) -> subprocess.CompletedProcess:
    spec = list(rule.spec[:-2]) + ["-m", "comment", "--comment", COMMENT] + list(rule.spec[-2:])
    cmd = [rule.binary, "-w", LOCK_WAIT, "-t", rule.table, op, rule.chain, *position, *spec]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise RuleError("iptables", f"{rule.binary} not found: cannot set up {rule}") from None
    except subprocess.TimeoutExpired:
        raise RuleError("iptables_lock", f"{rule.binary} did not finish in 30s: {rule}") from None


def _failure(rule: Rule, proc: subprocess.CompletedProcess, what: str) -> RuleError:
    err = proc.stderr.strip()
    kind = "iptables_lock" if "xtables lock" in err else "iptables"
    return RuleError(kind, f"{what} {rule}: {err or f'exit {proc.returncode}'}")


def rule_exists(rule: Rule) -> bool:
    proc = _run(rule, "-C")
    if proc.returncode == 0:
        return True
    # -C exits 1 for "no such rule"; anything else (or a lock message) is an error
    if proc.returncode == 1 and "xtables lock" not in proc.stderr:
        return False
    raise _failure(rule, proc, "checking")


def ensure_rule(rule: Rule) -> bool:
    """Insert the rule at the top of its chain if missing. True if added."""
    if rule_exists(rule):
        return False
    proc = _run(rule, "-I", "1")
    if proc.returncode != 0:
        raise _failure(rule, proc, "adding")
    return True


def remove_rule(rule: Rule) -> int:
    """Delete every copy of the rule; returns how many were deleted."""
    removed = 0
    for _ in range(16):  # bounded: a rule someone added many times
        if not rule_exists(rule):
            break
        proc = _run(rule, "-D")
        if proc.returncode != 0:
            raise _failure(rule, proc, "deleting")
        removed += 1
    return removed
