"""Node setup as a reconcile loop: interface and rules, kept as they should be.

Startup order: ``ensure_interface`` (so the local IPs exist), then the
listeners start serving (done by the caller), then ``ensure_rules`` (so
traffic is never steered to us before we answer). Then ``reconcile`` runs
every ``syncinterval``, and at once when the kernel reports that someone
removed our interface, one of our addresses or a rule where ours live
(``node.events``): what was removed comes back.
``teardown`` removes our rules, then the interface; a successor that took
over the sockets (hot handoff) or ``-skipteardown`` means no teardown.

What may be removed is what is ours. Before we serve, that is only what
this process created (``undo_start``): a start that fails (the address is
held by node-cache or another agent, a bad Corefile) removes the interface
only if it created it and the addresses only if it added them, and no rule
(rules are written only once we serve), so it never takes down another
cache's networking. Once
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
import shutil
from dataclasses import dataclass

from . import events
from .link import LinkError, ensure_interface, remove_addresses, remove_interface
from .nftrules import NftRules, firewall_warnings, kube_proxy_tables
from .rules import IptablesRules, RuleError, iptables_usable, kube_proxy_chains, xtables_variant

log = logging.getLogger("nodecache.node")
ERROR_TYPES = ("configmap", "interface_add", "interface_check", "iptables", "iptables_lock")
BACKENDS = {"iptables": IptablesRules, "nftables": NftRules}


def choose_backend(wanted: str) -> tuple[str, str, bool]:
    """(backend, why, seen) for ``-rules WANTED``. auto: nftables where
    kube-proxy has its nftables tables, iptables where it has its iptables
    chains (iptables and IPVS modes), else iptables if the binary is there,
    else nft. ``seen``: decided by what kube-proxy wrote (or by the flag),
    not by a default."""
    if wanted != "auto":
        return wanted, f"-rules {wanted}", True
    have_nft = shutil.which("nft") is not None
    if have_nft and kube_proxy_tables():
        return "nftables", "kube-proxy's nftables tables exist (nftables mode)", True
    if iptables_usable():
        if kube_proxy_chains():
            return "iptables", "kube-proxy's iptables chains exist (iptables or IPVS mode)", True
        return "iptables", "no kube-proxy rules found; iptables is installed", False
    if have_nft:
        return "nftables", "no iptables here; nft is installed", False
    return "iptables", "neither iptables nor nft found", False


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
    rules_backend: str = "auto"   # auto | iptables | nftables (-rules)
    watch_changes: bool = True    # reconcile at once on a removal event (node.events; -watch-node)


class NodeSetup:
    def __init__(self, params: NodeParams, dns_ports: dict[str, set[int]],
                 wildcard: dict[str, set[int]] | None = None):
        self.params = params
        self.dns_ports = dns_ports
        self.wildcard = wildcard or {}  # ports served only by a socket on every address (node.rules)
        self.backend: IptablesRules | NftRules | None = None  # chosen at the first ensure_rules
        self.firewall_warned: set[str] = set()
        self.errors = {t: 0 for t in ERROR_TYPES}
        self.reconciles = 0
        self.rules_added = 0
        self.event_repairs = 0  # reconciles started by a removal event (node.events)
        self.wake: asyncio.Event | None = None
        # what this process created itself (undo_start removes only these)
        self.created_interface = False
        self.added_addresses: list[str] = []
        self.standby = ""  # see ensure_standby

    def events(self) -> dict[str, int]:
        return {"rules_added": self.rules_added, "node_repaired_on_event": self.event_repairs}

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
            if self.standby:
                self.remove_standby("the interface is ours again")
        if report.added:
            self.added_addresses += report.added
            log.info("added %s to %s", ", ".join(report.added), self.params.interface)

    def standby_name(self) -> str:
        return f"{self.params.interface[:12]}-nc"

    def ensure_standby(self) -> None:
        """We share the DNS port with the cache we replace (node-cache during
        a migration, ``server.reuseport``), and the interface is its: on
        SIGTERM it deletes it, with the local IPs. Hold the same IPs on a
        standby interface of ours too (the kernel keeps a local route per
        interface), so the addresses never go away while the event-driven
        reconcile (``node.events``) recreates the interface as ours; then the
        standby goes."""
        if not self.params.setup_interface or not self.params.local_ips or self.created_interface:
            return
        name = self.standby_name()
        try:
            ensure_interface(name, list(self.params.local_ips))
        except LinkError as exc:
            self.count(exc.kind, f"standby interface {name}: {exc}")
            return
        self.standby = name
        log.info("another process serves our port on %s, which we did not create: holding %s on standby "
                 "interface %s too, until %s is ours", self.params.interface,
                 ", ".join(self.params.local_ips), name, self.params.interface)

    def remove_standby(self, why: str) -> None:
        if not self.standby:
            return
        try:
            remove_interface(self.standby)
            log.info("removed standby interface %s (%s)", self.standby, why)
        except (LinkError, OSError) as exc:
            self.count("interface_check", f"removing standby interface {self.standby}: {exc}")
        self.standby = ""

    def _on_error(self, exc: RuleError) -> None:
        self.count(exc.kind, str(exc))

    def _choose_backend(self) -> None:
        """The backend -rules asks for; under auto, looked at again each
        reconcile: if kube-proxy changed modes, our rules move with it
        (the old backend's are removed first: never both at once). Only
        what kube-proxy wrote moves them: a default (no kube-proxy rules
        seen, perhaps a failed look) keeps the backend we have."""
        name, why, seen = choose_backend(self.params.rules_backend)
        if self.backend is not None and (self.backend.name == name or not seen):
            return
        if self.backend is not None:
            removed = self.backend.teardown(self._on_error)
            log.warning("rules backend changes from %s to %s (%s): removed our %d %s rules",
                        self.backend.name, name, why, removed, self.backend.name)
        else:
            log.info("rules backend: %s (%s)", name, why)
        p = self.params
        upstream = p.upstream
        if name == "iptables" and upstream and shutil.which("nft") and kube_proxy_tables():
            # iptables-nft's nat PREROUTING sits at kube-proxy's nat-prerouting priority: the two
            # DNATs would race (the first to bind wins), black-holing queries to the ClusterIP
            log.warning("kube-proxy runs in nftables mode: no fallback DNAT from iptables rules (it would "
                        "race kube-proxy's); -rules nftables (or auto) fails the link-local address open")
            upstream = None
        if name == "iptables":
            variant, why_variant = xtables_variant()
            if variant:
                log.info("iptables variant: %s (%s)", variant, why_variant)
            self.backend = IptablesRules(list(p.local_ips), self.dns_ports, p.health_port, p.fail_open, upstream,
                                         variant, self.wildcard)
        else:
            self.backend = BACKENDS[name](list(p.local_ips), self.dns_ports, p.health_port, p.fail_open, upstream)

    def ensure_rules(self) -> None:
        if not self.params.setup_iptables:
            return
        self._choose_backend()
        self.rules_added += self.backend.ensure(self._on_error, again=self.reconciles > 0)
        if shutil.which("nft") is not None:
            for warning in firewall_warnings(list(self.params.local_ips), self.firewall_warned):
                log.warning("%s", warning)

    def reconcile_once(self) -> None:
        self.ensure_interface()
        self.ensure_rules()
        self.reconciles += 1

    def teardown_rules(self) -> None:
        if self.params.skip_teardown or not self.params.setup_iptables or self.backend is None:
            return
        removed = self.backend.teardown(self._on_error)
        log.info("removed %d %s rules", removed, self.backend.name)  # what was really there to remove

    def undo_start(self) -> None:
        """A start that failed before serving: remove what this process
        created, and nothing else (see the top)."""
        self.remove_standby("the start failed")
        if self.params.skip_teardown:
            return
        name = self.params.interface  # (no rules: they come after the listeners serve)
        try:
            if self.created_interface:
                if remove_interface(name):
                    log.info("removed interface %s (created by this start)", name)
            elif self.added_addresses:
                removed = remove_addresses(name, self.added_addresses)
                log.info("removed %s from %s (added by this start)", ", ".join(removed) or "nothing", name)
        except (LinkError, OSError) as exc:
            self.count("interface_check", f"undoing this start on {name}: {exc}")
        if not (self.created_interface or self.added_addresses):
            log.info("left interface %s and every rule as they were: this start set up nothing", name)

    def teardown_interface(self) -> None:
        self.remove_standby("exiting")
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

    async def reconcile_forever(self) -> None:
        """Reconcile every sync interval, and at once after a removal event."""
        self.wake = asyncio.Event()
        p = self.params
        watcher = None
        if p.watch_changes and p.local_ips and (p.setup_interface or p.setup_iptables):
            watcher = asyncio.get_running_loop().create_task(
                events.watch(p.interface, frozenset(p.local_ips), p.setup_iptables, self._removed))
        try:
            while True:
                try:
                    await asyncio.wait_for(self.wake.wait(), p.sync_interval)
                except asyncio.TimeoutError:
                    pass
                self.wake.clear()
                await self.run(self.reconcile_once)
        finally:
            if watcher is not None:
                watcher.cancel()

    def _removed(self, why: str) -> None:
        log.warning("%s: restoring now", why)
        self.event_repairs += 1
        self.wake.set()
