"""Native nftables rules: one table of our own, replaced whole and atomically.

On a node whose kube-proxy runs in nftables mode, other components are to
leave kube-proxy's tables alone and use a table of their own with chosen
priorities. Ours is ``table inet nodecache`` (IPv4 and IPv6 in one table),
written with the ``nft`` CLI in one ``nft -f`` transaction (add, delete and
define the table: never a partial state, never a duplicate, no xtables
lock). Chains, by hook and priority (conntrack runs at -200, kube-proxy's
``filter-prerouting-pre-dnat`` at -110, its ``nat-prerouting`` at -100):

* ``prerouting``, raw (-300): for each local IP and DNS port, UDP and TCP,
  ``ip daddr IP udp dport P socket transparent le 1 notrack``. The
  ``socket`` expression finds the local socket the packet would reach
  (bound to IP or to the wildcard, listening, half-open or established:
  ``transparent`` is 0 or 1 for every one of them); with no agent listening
  it does not match, the packet is tracked, and kube-proxy's rules see it
  (fail open, as ``-m socket`` in the iptables backend). Not ``socket
  wildcard``: that key gives no value for a socket still in the TCP
  handshake (the kernel's request socket), so the handshake's last ACK was
  tracked, conntrack picked it up mid-stream, and every TCP connection from
  a pod was reset (dig +tcp, glibc after TC: "connection reset"). Without
  fail-open the NOTRACK is unconditional.
  The health port likewise: kube-proxy's ``cluster-ips-check`` rejects new
  *tracked* connections to a ClusterIP port it does not serve.
* ``output``, raw: the agent's replies (``ip saddr IP sport P``) and
  host-network clients' queries (``ip daddr IP dport P``) untracked, and
  the health port both ways. Unconditional: in the output hook ``socket``
  finds the sender's own socket, so it cannot tell whether an agent listens.
* ``divert``, mangle (-150: after conntrack, before kube-proxy's DNAT): with
  fail-open and an upstream Service IP, a *new tracked* connection to a
  local IP (only possible while no agent listens) gets its destination
  rewritten to the upstream ClusterIP (and port 53), so kube-proxy's own
  ``nat-prerouting`` DNATs it to a CoreDNS endpoint. conntrack recorded the
  original destination first, so the reply comes back from the local IP
  the pod asked. A nat chain of ours at kube-proxy's priority would race
  it (the first nat chain to bind wins; their order is undefined) and a
  DNAT to the ClusterIP after kube-proxy's is never translated again: both
  black-hole queries. The agent's packets are untracked and never diverted.

No ``accept`` rules: an accept in our table ends only our chain, it cannot
override a drop in another table (a host firewall). ``firewall_warnings``
finds input chains that drop by default and do not mention untracked
packets or our addresses, so the operator can be told what rule to add.

``ensure`` compares ``nft list table`` with what it printed when we last
wrote the table, and replaces the table when they differ (or it is gone);
``teardown`` deletes it. Errors are raised as RuleError (counted by the
reconcile loop as node-cache's ``iptables`` error type).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import subprocess

from .rules import COMMENT, RuleError

log = logging.getLogger("nodecache.node")
TABLE = "nodecache"


def _l3(ip: str) -> str:
    return "ip" if ipaddress.ip_address(ip).version == 4 else "ip6"


def ruleset(ips: list[str], dns_ports: dict[str, set[int]] | int, health_port: int | None,
            fail_open: bool = True, upstream: str | None = None) -> str:
    """The ``table inet nodecache`` definition for these addresses."""
    pre, out, divert = [], [], []
    bound = " socket transparent le 1" if fail_open else ""
    for ip in ips:
        fam = _l3(ip)
        ports = dns_ports.get(ip, {53}) if isinstance(dns_ports, dict) else {dns_ports}
        same_family = upstream is not None and _l3(upstream) == fam and upstream != ip
        for port in sorted(ports):
            for proto in ("udp", "tcp"):
                dst = f"{fam} daddr {ip} {proto} dport {port}"
                pre.append(f"{dst}{bound} notrack")
                out.append(f"{fam} saddr {ip} {proto} sport {port} notrack")
                out.append(f"{dst} notrack")
                if fail_open and same_family:
                    to_port = "" if port == 53 else f" {proto} dport set 53"
                    divert.append(f"{dst} ct state new {fam} daddr set {upstream}{to_port}")
        if health_port:  # probes too: kube-proxy rejects new tracked traffic to ClusterIP ports it does not serve
            pre.append(f"{fam} daddr {ip} tcp dport {health_port}{bound} notrack")
            out.append(f"{fam} daddr {ip} tcp dport {health_port} notrack")
            out.append(f"{fam} saddr {ip} tcp sport {health_port} notrack")
    chains = [("prerouting", "prerouting", "raw", pre), ("output", "output", "raw", out)]
    if divert:
        chains.append(("divert", "prerouting", "mangle", divert))
    body = [f'\tcomment "{COMMENT}"']
    for name, hook, prio, rules in chains:
        body.append(f"\tchain {name} {{\n\t\ttype filter hook {hook} priority {prio}; policy accept;")
        body += [f"\t\t{r}" for r in rules]
        body.append("\t}")
    return f"table inet {TABLE} {{\n" + "\n".join(body) + "\n}\n"


def _nft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise RuleError("iptables", "nft not found: cannot set up the nftables rules") from None
    except subprocess.TimeoutExpired:
        raise RuleError("iptables", f"nft {' '.join(args)} did not finish in 30s") from None


def listing() -> str | None:
    """What nft prints of our table now; None when there is none."""
    proc = _nft("list", "table", "inet", TABLE)
    if proc.returncode == 0:
        return proc.stdout
    if "No such file or directory" in proc.stderr:
        return None
    raise RuleError("iptables", f"listing table inet {TABLE}: {proc.stderr.strip() or proc.returncode}")


def apply(text: str) -> None:
    """Replace our table by ``text`` in one transaction."""
    proc = _nft("-f", "-", stdin=f"add table inet {TABLE}\ndelete table inet {TABLE}\n{text}")
    if proc.returncode != 0:
        raise RuleError("iptables", f"loading table inet {TABLE}: {proc.stderr.strip() or proc.returncode}")


def delete() -> int:
    """Delete our table; how many rules it held (0: there was none)."""
    current = listing()
    if current is None:
        return 0
    proc = _nft("delete", "table", "inet", TABLE)
    if proc.returncode != 0 and "No such file or directory" not in proc.stderr:
        raise RuleError("iptables", f"deleting table inet {TABLE}: {proc.stderr.strip()}")
    return rule_count(current)


def rule_count(text: str) -> int:
    """The rules in a definition or listing of our table (each NOTRACK or divert)."""
    return sum(1 for line in text.splitlines() if line.rstrip().endswith("notrack") or " daddr set " in line)


def kube_proxy_tables() -> bool:
    """Whether kube-proxy's nftables tables (``ip``/``ip6 kube-proxy``) exist."""
    proc = _nft("list", "tables")
    if proc.returncode != 0:
        return False
    return any(line.split()[-1:] == ["kube-proxy"] for line in proc.stdout.splitlines())


class NftRules:
    """The nftables backend: ensure / teardown of our one table (the same
    calls as rules.IptablesRules)."""
    name = "nftables"

    def __init__(self, ips: list[str], dns_ports, health_port: int | None, fail_open: bool, upstream: str | None):
        self.text = ruleset(ips, dns_ports, health_port, fail_open, upstream)
        self.loaded: str | None = None  # nft's listing right after we wrote the table
        self.failed = 0  # rules the last ensure could not put in place (the table is written whole)

    def ensure(self, on_error, again: bool = False) -> int:
        """Write the table if it is missing or not as we wrote it; 1 if written."""
        try:
            current = listing()
            if current is not None and current == self.loaded:
                return 0
            if self.loaded is not None:
                log.info("table inet %s was %s: writing it again", TABLE, "removed" if current is None else "changed")
            apply(self.text)
            self.loaded = listing()
            self.failed = 0
            return 1
        except RuleError as exc:
            on_error(exc)
            self.failed = len(self)
            return 0

    def teardown(self, on_error) -> int:
        try:
            removed = delete()
        except RuleError as exc:
            on_error(exc)
            return 0
        self.loaded = None
        return removed

    def __len__(self) -> int:
        return rule_count(self.text)


def firewall_warnings(ips: list[str], warned: set[str]) -> list[str]:
    """Input chains of other tables that drop by default and say nothing
    of untracked packets or our addresses: there our NOTRACKed queries
    are dropped (``ct state`` is ``untracked``, never established)."""
    proc = _nft("-j", "list", "chains")
    if proc.returncode != 0:
        return []
    try:
        chains = [x["chain"] for x in json.loads(proc.stdout).get("nftables", []) if "chain" in x]
    except (ValueError, TypeError, AttributeError):
        return []
    out = []
    for c in chains:
        if c.get("hook") != "input" or c.get("policy") != "drop" or c.get("table") == TABLE:
            continue
        where = f"table {c.get('family')} {c.get('table')} chain {c.get('name')}"
        text = _nft("list", "chain", str(c.get("family")), str(c.get("table")), str(c.get("name"))).stdout
        if "untracked" in text or any(ip in text for ip in ips):
            continue
        if where not in warned:
            warned.add(where)
            out.append(f"{where} drops by default (policy drop) and accepts neither untracked packets nor "
                       f"{', '.join(ips)}: DNS queries to this node's cache are NOTRACKed and will be dropped "
                       f"there. Add to that chain: `ct state untracked accept` (or `ip daddr <IP> udp dport 53 "
                       f"accept` and the same for tcp, per local IP)")
    return out
