"""iptables rules that keep node-local DNS traffic out of conntrack, and
let it fall through to the cluster DNS whenever no agent is listening.

For every local IP and DNS port, UDP and TCP, the rules node-cache installs:

* raw PREROUTING  ``-d IP --dport P -m socket -j NOTRACK``   pod -> agent
* raw OUTPUT      ``-s IP --sport P -j NOTRACK``   agent -> pod
* raw OUTPUT      ``-d IP --dport P -j NOTRACK``   host-network clients -> agent
* filter INPUT    ``-d IP --dport P -j ACCEPT``    untracked packets skip
* filter OUTPUT   ``-s IP --sport P -j ACCEPT``    the ESTABLISHED accept rules
* raw OUTPUT NOTRACK both ways for the health port (TCP), for probes.

**Fail open** (``fail_open``, the default): the pod -> agent NOTRACK rule
matches only while a local socket is bound to IP:P (``-m socket``; the
kernel looks it up per packet). With the agent gone (crash, OOM kill,
between a container's death and its restart) the packet is tracked, so the
nat table applies: for the kube-dns ClusterIP, kube-proxy's own DNAT sends
it to CoreDNS; for the link-local address (the IPVS-mode /
``--cluster-dns=169.254.20.10`` case) our fallback rule, *appended* to the
chain so that kube-proxy's Service rules (which it keeps first) still take
a Service IP,

* nat PREROUTING  ``-d IP --dport P -j DNAT --to UPSTREAM:53``  (appended)

sends it to the upstream Service's ClusterIP (same family only). That
works where a ClusterIP is served after nat PREROUTING, i.e. IPVS mode
(the ClusterIP is a local address of kube-ipvs0); in iptables mode a
packet DNAT'd to a ClusterIP is not DNAT'd again, so there only the
kube-dns ClusterIP path fails open. While the agent serves, its packets are untracked and never reach
the nat table, so the fallback is inert. No live process is needed for any
of this. ``-m socket`` is not allowed in OUTPUT (the kernel rejects it),
so host-network clients keep the unconditional NOTRACK.

IPv4 addresses go to ``iptables``, IPv6 to ``ip6tables``, from one process,
in the variant kube-proxy uses on this node (``xtables_variant``: legacy or
nft, as upstream's iptables-wrapper decides it; the two are separate rule
sets in the kernel, and rules in the other one neither see kube-proxy's
chains nor are seen by an operator reading kube-proxy's).
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
import shutil
import subprocess
from dataclasses import dataclass, replace

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
    append: bool = False  # at the end of the chain instead of the top
    variant: str = ""     # "legacy", "nft", or "" for the system's default iptables

    @property
    def binary(self) -> str:
        return _binary(self.family, self.variant)

    def __str__(self) -> str:
        return f"{self.binary} -t {self.table} {self.chain} {' '.join(self.spec)}"


def _binary(family: int, variant: str) -> str:
    base = "iptables" if family == 4 else "ip6tables"
    return f"{base}-{variant}" if variant else base


def rules_for(ips: list[str], dns_ports: dict[str, set[int]] | int, health_port: int | None,
              fail_open: bool = True, upstream: str | None = None, variant: str = "",
              wildcard: dict[str, set[int]] | None = None) -> list[Rule]:
    """``wildcard``: the ports each IP is served on only by a socket bound to
    every address (a Corefile's ``bind 0.0.0.0``, or no bind)."""
    return [replace(rule, variant=variant) if variant else rule
            for rule in _rules(ips, dns_ports, health_port, fail_open, upstream, wildcard or {})]


def _bound(fail_open: bool, wildcard: bool) -> tuple[str, ...]:
    """The fail-open match. ``-m socket`` ignores sockets bound to every
    address unless told ``--nowildcard`` (so that a local wildcard listener
    cannot catch traffic being forwarded): where ours is such a socket, the
    plain match never matched, every query was tracked and our fallback DNAT
    sent it away. Only there: elsewhere another wildcard listener (a node's
    dnsmasq) would keep the rule matching after we are gone."""
    if not fail_open:
        return ()
    return ("-m", "socket", "--nowildcard") if wildcard else ("-m", "socket")


def _rules(ips, dns_ports, health_port, fail_open, upstream, wildcard) -> list[Rule]:
    out = []
    for ip in ips:
        fam = ipaddress.ip_address(ip).version
        ports = dns_ports.get(ip, {53}) if isinstance(dns_ports, dict) else {dns_ports}
        fallback = fail_open and upstream and ipaddress.ip_address(upstream).version == fam
        for port in sorted(ports):
            bound = _bound(fail_open, port in wildcard.get(ip, ()))
            for proto in ("tcp", "udp"):
                p = ("-p", proto)
                dst = p + ("-d", ip, "--dport", str(port))
                src = p + ("-s", ip, "--sport", str(port))
                if fallback:
                    to = f"{upstream}:53" if fam == 4 else f"[{upstream}]:53"
                    out.append(Rule(fam, "nat", "PREROUTING", dst + ("-j", "DNAT", "--to-destination", to),
                                    append=True))
                out += [Rule(fam, "raw", "PREROUTING", dst + bound + ("-j", "NOTRACK")),
                        Rule(fam, "filter", "INPUT", dst + ("-j", "ACCEPT")),
                        Rule(fam, "raw", "OUTPUT", src + ("-j", "NOTRACK")),
                        Rule(fam, "filter", "OUTPUT", src + ("-j", "ACCEPT")),
                        Rule(fam, "raw", "OUTPUT", dst + ("-j", "NOTRACK"))]
        if health_port:
            hp = str(health_port)
            out += [Rule(fam, "raw", "OUTPUT", ("-p", "tcp", "-d", ip, "--dport", hp, "-j", "NOTRACK")),
                    Rule(fam, "raw", "OUTPUT", ("-p", "tcp", "-s", ip, "--sport", hp, "-j", "NOTRACK"))]
    return out


def legacy_rules(rules: list[Rule]) -> list[Rule]:
    """The unconditional pod -> agent NOTRACK rules of earlier releases (or of
    -failopen=false): left above a fail-open rule, they would defeat it."""
    out = []
    for rule in rules:
        if rule.table == "raw" and rule.chain == "PREROUTING" and "socket" in rule.spec:
            out.append(replace(rule, spec=tuple(x for x in rule.spec if x not in ("-m", "socket", "--nowildcard"))))
    return out


def _target_at(spec: tuple[str, ...]) -> int:
    return spec.index("-j")


def _run(rule: Rule, op: str, *position: str) -> subprocess.CompletedProcess:
    at = _target_at(rule.spec)
    spec = list(rule.spec[:at]) + ["-m", "comment", "--comment", COMMENT] + list(rule.spec[at:])
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
    proc = _run(rule, "-A") if rule.append else _run(rule, "-I", "1")
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


class IptablesRules:
    """The iptables backend: our rules, each ensured (``-C``, then inserted)
    and removed one by one."""
    name = "iptables"

    def __init__(self, ips: list[str], dns_ports, health_port: int | None, fail_open: bool, upstream: str | None,
                 variant: str = "", wildcard: dict[str, set[int]] | None = None):
        self.variant = variant  # legacy | nft | "" (xtables_variant)
        self.rules = rules_for(ips, dns_ports, health_port, fail_open, upstream, variant, wildcard)
        # the other mode's rules (an earlier release's unconditional NOTRACK,
        # or fail-open rules after -failopen=false) must not stay above ours
        other = rules_for(ips, dns_ports, health_port, not fail_open, upstream, variant, wildcard)
        self.unwanted = [r for r in other if r not in self.rules]
        self.failed = 0  # rules the last ensure could not put in place

    def ensure(self, on_error, again: bool = False) -> int:
        """Add what is missing; how many rules were added. ``on_error(exc)``
        is told of each failure (the next reconcile tries again)."""
        added = self.failed = 0
        for k, rule in enumerate(self.rules):
            try:
                if ensure_rule(rule):
                    added += 1
                    if again:
                        log.info("added back rule %s", rule)
            except RuleError as exc:
                on_error(exc)
                self.failed += 1
                if "not found" in str(exc):
                    self.failed += len(self.rules) - k - 1
                    return added  # no binary: one message per reconcile is enough
        for rule in self.unwanted:
            try:
                if remove_rule(rule):
                    log.info("removed rule of the other fail-open mode: %s", rule)
            except RuleError as exc:
                on_error(exc)
        return added

    def remove(self, rules: list[Rule], on_error) -> int:
        removed = 0
        for rule in rules:
            try:
                removed += remove_rule(rule)
            except RuleError as exc:
                on_error(exc)
        return removed

    def teardown(self, on_error) -> int:
        return self.remove(self.rules, on_error)

    def __len__(self) -> int:
        return len(self.rules)


def iptables_usable() -> bool:
    return shutil.which("iptables") is not None or shutil.which("ip6tables") is not None


def kube_proxy_chains() -> bool:
    """Whether kube-proxy's iptables chains exist (iptables or IPVS mode), in
    either variant: the system's ``iptables`` and, where installed, both
    ``iptables-legacy`` and ``iptables-nft`` (a chain in one is invisible to
    the other)."""
    variants = [""] + [v for v in VARIANTS if shutil.which(_binary(4, v))]
    for variant in variants:
        try:
            proc = subprocess.run([_binary(4, variant), "-w", LOCK_WAIT, "-t", "nat", "-S", "KUBE-SERVICES"],
                                  capture_output=True, text=True, timeout=30)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0:
            return True
    return False


VARIANTS = ("legacy", "nft")
HINTS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")  # what kubelet writes in the variant it uses


def _saved(variant: str) -> str | None:
    """Both families' rules in one variant (``-save`` output), None where that variant is not installed."""
    out = []
    for family in (4, 6):
        binary = f"{_binary(family, variant)}-save"
        if shutil.which(binary) is None:
            return None
        try:
            out.append(subprocess.run([binary], capture_output=True, text=True, timeout=30).stdout)
        except subprocess.TimeoutExpired:
            return None
    return "".join(out)


def xtables_variant() -> tuple[str, str]:
    """(variant, why): the iptables variant kube-proxy and kubelet use on this
    node, decided as upstream's iptables-wrapper decides it: the one holding
    kubelet's hint chain, else the one with more of kube-proxy's rules; ""
    (the system's default iptables) where one variant is installed, or
    neither holds anything of Kubernetes."""
    saved = {v: _saved(v) for v in VARIANTS}
    if None in saved.values():
        return "", "one iptables variant installed"
    for variant, text in saved.items():
        if any(hint in text for hint in HINTS):
            return variant, f"kubelet's {HINTS[0]} chain is in iptables-{variant}"
    counts = {v: sum(1 for line in text.splitlines() if line.startswith(("-A KUBE", ":KUBE")))
              for v, text in saved.items()}
    if counts["legacy"] == counts["nft"]:
        return "", "no Kubernetes rules in either iptables variant"
    variant = max(counts, key=counts.get)
    return variant, f"kube-proxy's rules are in iptables-{variant} ({counts[variant]} lines)"
