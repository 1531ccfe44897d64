"""Node setup as a reconcile loop: interface and rules, kept as they should be.

Startup order: ``ensure_interface`` (so the local IPs exist), then the
listeners start serving (done by the caller), then ``ensure_rules`` (so
traffic is never steered to us before we answer). Then ``reconcile`` runs
every ``syncinterval``: an address or rule someone removed comes back.
``teardown`` removes our rules, then the interface; a successor that took
over the sockets (hot handoff) or ``-skipteardown`` means no teardown.

What may be removed is what is ours. Before we serve, that is only what
this process created (``undo_start``): a start that fails (the address is
held by node-cache or another agent, a bad Corefile) removes the interface
only if it created it, the addresses only if it added them, and no rule it
did not insert, so it never takes down another cache's networking. Once
we serve on the local addresses nobody else can (we hold their sockets),
so the interface and our rules for them are ours, whoever created them (a
predecessor we took over from, a crashed one): ``teardown`` removes them.

Nothing here may stop DNS service: every failure is logged once per
occurrence and counted by node-cache's error types (exported as
``coredns_nodecache_setup_errors_total{errortype}``), and the next
reconcile tries again. The blocking work (netlink, iptables with its lock
wait) runs in a worker thread so the event loop keeps answering.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .link import LinkError, ensure_interface, remove_addresses, remove_interface
from .rules import Rule, RuleError, ensure_rule, remove_rule, rules_for

log = logging.getLogger("nodecache.node")
ERROR_TYPES = ("configmap", "interface_add", "interface_check", "iptables", "iptables_lock")


@dataclass(frozen=True)
class NodeParams:
    local_ips: tuple[str, ...]
    interface: str = "nodelocaldns"
    setup_interface: bool = True
    setup_iptables: bool = True
    health_port: int | None = 8080
    sync_interval: float = 60.0
    skip_teardown: bool = False
    fail_open: bool = True        # NOTRACK only while our socket is bound (see node.rules)
    upstream: str | None = None   # the upstream Service IP, for link-local fallback DNAT


class NodeSetup:
    def __init__(self, params: NodeParams, dns_ports: dict[str, set[int]]):
        self.params = params
        ips = list(params.local_ips)
        self.rules: list[Rule] = rules_for(ips, dns_ports, params.health_port, params.fail_open,
                                           params.upstream)
        # the other mode's rules (an earlier release's unconditional NOTRACK,
        # or fail-open rules after -failopen=false) must not stay above ours
        other = rules_for(ips, dns_ports, params.health_port, not params.fail_open, params.upstream)
        self.unwanted: list[Rule] = [r for r in other if r not in self.rules]
        self.errors = {t: 0 for t in ERROR_TYPES}
        self.reconciles = 0
        self.rules_added = 0
        # what this process created itself (undo_start removes only these)
        self.created_interface = False
        self.added_addresses: list[str] = []
        self.inserted: list[Rule] = []

    def count(self, kind: str, message: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        log.error("node setup (%s): %s", kind, message)

    # -- synchronous steps (run in a thread) ----------------------------
    def ensure_interface(self) -> None:
        if not self.params.setup_interface or not self.params.local_ips:
            return
        try:
            report = ensure_interface(self.params.interface, list(self.params.local_ips))
        except LinkError as exc:
            self.count(exc.kind, str(exc))
            return
        if report.created:
            self.created_interface = True
            log.info("created %s interface %s", report.created, self.params.interface)
        if report.added:
            self.added_addresses += report.added
            log.info("added %s to %s", ", ".join(report.added), self.params.interface)

    def ensure_rules(self) -> None:
        if not self.params.setup_iptables:
            return
        for rule in self.rules:
            try:
                if ensure_rule(rule):
                    self.rules_added += 1
                    self.inserted.append(rule)
                    if self.reconciles:
                        log.info("added back rule %s", rule)
            except RuleError as exc:
                self.count(exc.kind, str(exc))
                if "not found" in str(exc):
                    return  # no binary: one message per reconcile is enough
        for rule in self.unwanted:
            try:
                if remove_rule(rule):
                    log.info("removed rule of the other fail-open mode: %s", rule)
            except RuleError as exc:
                self.count(exc.kind, str(exc))

    def reconcile_once(self) -> None:
        self.ensure_interface()
        self.ensure_rules()
        self.reconciles += 1

    def teardown_rules(self) -> None:
        if self.params.skip_teardown or not self.params.setup_iptables:
            return
        self._remove_rules(self.rules)

    def _remove_rules(self, rules: list[Rule]) -> None:
        removed = 0
        for rule in rules:
            try:
                removed += remove_rule(rule)
            except RuleError as exc:
                self.count(exc.kind, str(exc))
        log.info("removed %d rules", removed)  # what was really there to remove

    def undo_start(self) -> None:
        """A start that failed before serving: remove what this process
        created, and nothing else (see the top)."""
        if self.params.skip_teardown:
            return
        if self.inserted:
            self._remove_rules(list(dict.fromkeys(self.inserted)))
        name = self.params.interface
        try:
            if self.created_interface:
                if remove_interface(name):
                    log.info("removed interface %s (created by this start)", name)
            elif self.added_addresses:
                removed = remove_addresses(name, self.added_addresses)
                log.info("removed %s from %s (added by this start)", ", ".join(removed) or "nothing", name)
        except (LinkError, OSError) as exc:
            self.count("interface_check", f"undoing this start on {name}: {exc}")
        if not (self.inserted or self.created_interface or self.added_addresses):
            log.info("left interface %s and every rule as they were: this start set up nothing", name)

    def teardown_interface(self) -> None:
        if self.params.skip_teardown:
            log.info("-skipteardown: leaving interface and rules in place")
            return
        if not self.params.setup_interface or not self.params.local_ips:
            return
        try:
            if remove_interface(self.params.interface):
                log.info("removed interface %s", self.params.interface)
        except Exception as exc:  # netlink errors: report, nothing else to do on exit
            self.count("interface_check", f"removing {self.params.interface}: {exc}")

    def teardown(self) -> None:
        """Rules first (traffic stops being steered past conntrack), then the interface."""
        self.teardown_rules()
        self.teardown_interface()

    # -- async wrappers ---------------------------------------------------
    async def run(self, step) -> None:
        await asyncio.to_thread(step)

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.params.sync_interval)
            await self.run(self.reconcile_once)
