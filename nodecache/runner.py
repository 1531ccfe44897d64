"""``nodecache run``: the agent on a node, with node-cache's command line.

Lifecycle: build the Corefile (node-cache templating, see
``node.nodeconfig``) -> take the sockets and cache from a running agent if
one answers at the handoff socket (``handoff``) -> ensure the interface ->
start listeners (on the adopted sockets, or new ones) -> publish our own
handoff socket and tell the donor READY -> write the pidfile -> ensure the
rules -> serve, reconciling every ``-syncinterval`` and re-reading the
templates every ``-configsync``. When a successor takes over: stop reading,
drain, stay alive and unready, own nothing. On SIGTERM/SIGINT (not handed
off): remove the rules, drain and stop, remove the interface (unless
``-skipteardown``).

A Corefile that is broken at startup is fatal (exit 2, ``file:line:
message``); one that breaks later is logged and counted, and the running
configuration stays.
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import ipaddress
import logging
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .config.corefile import CorefileError
from .config.model import Config
from .config.plugins import parse_config
from .node.nodeconfig import (CLUSTER_DNS, ConfigMapError, cluster_dns_ip, read_kubedns_configmap,
                              render_corefile, service_env)
from .node.reconcile import NodeParams, NodeSetup
from .cache import snapshot
from .handoff.donor import Donor
from .handoff.systemd import listen_fds, notify
from .handoff.heir import take_over
from .handoff.protocol import ProtocolError
from .runtime import Runtime
from .cache.store import ByteBudget
from .server.admission import Admission
from .server.agent import Agent, ListenError

log = logging.getLogger("nodecache")
DEFAULT_KUBEDNS_CM = "/etc/kube-dns"


@dataclass(frozen=True)
class RunParams:
    conf: str = "Corefile"
    base_corefile: str = "/etc/coredns/Corefile.base"
    kubedns_cm: str = ""
    upstream_svc: str = "kube-dns"
    local_ips: tuple[str, ...] = ()
    node: NodeParams = NodeParams(())
    pidfile: str = ""
    config_sync: float = 10.0
    metrics_listen: str = "0.0.0.0:9353"
    dns_port: int = 53
    handoff: bool = True
    handoff_dir: str = "/run/nodecache"
    drain: float = 5.0
    handoff_grace: float = 10.0
    max_inflight: int = 4096
    max_inflight_per_client: int = 512
    miss_rate_per_client: float = 1000.0
    cache_bytes: int = 64 << 20
    cache_max_item: int = 16 << 10
    cache_file: str = ""
    status_socket: str = "/tmp/nodecache.status.sock"
    ip_problems: tuple[str, ...] = ()  # invalid -localip entries, counted once started


def parse_local_ips(text: str) -> tuple[tuple[str, ...], list[str]]:
    """(valid addresses, problems) from -localip's comma-separated list."""
    good, bad = [], []
    for item in filter(None, (p.strip() for p in text.split(","))):
        try:
            good.append(str(ipaddress.ip_address(item)))
        except ValueError:
            bad.append(f"invalid -localip entry {item!r}")
    return tuple(dict.fromkeys(good)), bad


class ConfigSource:
    """Where the Corefile text comes from, and whether it changed."""

    def __init__(self, params: RunParams, env: dict[str, str]):
        self.params = params
        self.env = env
        cm = params.kubedns_cm
        if not cm and Path(DEFAULT_KUBEDNS_CM).is_dir():
            cm = DEFAULT_KUBEDNS_CM  # as node-cache: use the default mount if present
        self.kubedns_cm = cm

    def _inputs(self) -> list[Path]:
        base = Path(self.params.base_corefile)
        paths = [base] if base.is_file() else [Path(self.params.conf)]
        if self.kubedns_cm:
            paths += [Path(self.kubedns_cm) / "stubDomains", Path(self.kubedns_cm) / "upstreamNameservers"]
        return paths

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for path in self._inputs():
            try:
                h.update(path.read_bytes())
            except OSError:
                h.update(b"\0missing\0")
            h.update(str(path).encode())
        return h.hexdigest()

    def load(self, strict: bool = True) -> Config:
        """Parse the current configuration; raises CorefileError, or ConfigMapError
        when ``strict``. Not strict (at startup), a broken kube-dns ConfigMap is
        recorded in ``self.problems`` and ignored, as node-cache does."""
        self.problems: list[str] = []
        base = Path(self.params.base_corefile)
        if not base.is_file():
            source = self.params.conf
            try:
                text = Path(source).read_text()
            except OSError as exc:
                raise CorefileError(source, 0, f"cannot read: {exc.strerror}") from exc
        else:
            source = str(base)
            text = base.read_text()
        stubs, upstreams = {}, []
        if self.kubedns_cm:
            try:
                stubs, upstreams, problems = read_kubedns_configmap(self.kubedns_cm)
                self.problems.extend(problems)
            except ConfigMapError as exc:
                if strict:
                    raise
                self.problems.append(f"kube-dns ConfigMap ignored: {exc}")
        cluster_ip = cluster_dns_ip(self.params.upstream_svc, self.env)
        if CLUSTER_DNS in text and cluster_ip is None:
            raise CorefileError(source, 0, f"{CLUSTER_DNS} needs the ClusterIP of -upstreamsvc "
                                           f"{self.params.upstream_svc}: ${service_env(self.params.upstream_svc)} "
                                           f"is not set to an IP")
        text = render_corefile(text, list(self.params.local_ips), cluster_ip, stubs, upstreams,
                               self.params.dns_port)
        return parse_config(text, source)


def dns_ports(config: Config, ips: tuple[str, ...]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {ip: set() for ip in ips}
    for block in config.blocks:
        for ip in ips:
            if not block.binds or ip in block.binds:
                out[ip].add(block.port)
    return {ip: ports or {53} for ip, ports in out.items()}


async def run_node(params: RunParams, source: ConfigSource, config: Config) -> int:
    node = NodeSetup(params.node, dns_ports(config, params.local_ips))
    for problem in getattr(source, "problems", []):
        node.count("configmap", problem)
    for problem in params.ip_problems:
        node.count("interface_add", f"{problem}: not set up")
    if not params.local_ips and (params.node.setup_interface or params.node.setup_iptables) and params.ip_problems:
        log.error("no valid -localip: no interface or rules; serving the Corefile's addresses only")
    take = None
    if params.handoff:
        try:
            take = await asyncio.to_thread(take_over, params.handoff_dir)
        except ProtocolError as exc:
            log.error("handoff from the running agent failed (%s); it keeps serving. Exiting.", exc)
            return 1
    await node.run(node.ensure_interface)
    agent = Agent(config, admission=Admission(params.max_inflight, params.max_inflight_per_client,
                                              params.miss_rate_per_client),
                  budget=ByteBudget(params.cache_bytes, params.cache_max_item))
    rt = Runtime(agent, node)
    # decode the snapshot before serving (in a thread: the donor serves meanwhile)
    cached = await asyncio.to_thread(take.cache, agent.clock()) if take else None
    adopted = take.sockets if take else listen_fds()
    http_socks = {k: v for k, v in adopted.items() if k[2] == "http"}
    try:
        await agent.start({k: v for k, v in adopted.items() if k[2] != "http"})
    except ListenError as exc:
        log.error("%s", exc)
        if take:
            take.abandon()
        await agent.stop(0)
        if not take:
            await node.run(node.teardown)
        return 1
    rt.configure_http(config, params.metrics_listen)
    await rt.http.start(http_socks)
    for sock in http_socks.values():
        sock.close()  # handed over but no longer configured
    rt.started = True
    if take:
        rt.received_entries = agent.restore(cached)
        log.info("handoff: serving with %d cache entries from pid %d", rt.received_entries, take.donor_pid)
    elif params.cache_file:
        _load_cache_file(agent, params.cache_file)
    agent.probe_loops()
    state = _State()
    _publish_donor(rt, state, params, source)
    rt.start_status(params.status_socket)
    if take:
        take.finish()
        rt.takeover_seconds = time.monotonic() - take.started
        log.info("handoff: READY sent %.0f ms after connecting", rt.takeover_seconds * 1000)
        notify(f"MAINPID={os.getpid()}\nREADY=1")
    else:
        notify("READY=1")
    if params.pidfile:
        _write_pidfile(params.pidfile)
    await node.run(node.ensure_rules)
    _tune_gc()
    if params.node.setup_iptables:
        log.info("%d rules in place for %s", len(node.rules), ", ".join(params.local_ips) or "no local IP")
    stop = asyncio.Event()
    reload_now = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, reload_now.set)
    loop.set_exception_handler(rt.on_loop_exception)
    log.info("nodecache %s serving (%d server blocks)", __version__, len(config.blocks))
    state.reload_now = reload_now
    state.tasks = [loop.create_task(node.loop()),
                   loop.create_task(_watch_config(source, rt, params, reload_now))]
    state.stop = stop
    await stop.wait()
    while await _hold_safety_net(rt):
        # Our heir died while we were being replaced. Exiting now would leave
        # the node without an agent until the heir's container restarts, so
        # serve on: the restarted heir takes over from us (then we exit), or
        # a second signal, or the kubelet's SIGKILL, ends us.
        log.warning("stop requested, but our heir died: serving until a new agent takes over")
        state.exit_after_handoff = True
        stop.clear()
        await stop.wait()
    for task in state.tasks:
        task.cancel()
    if rt.donor is not None:
        rt.donor.close()
    if rt.handed_off:
        log.info("exiting after handoff: interface and rules belong to the successor")
        await state.drained.wait()
        rt.close()
        return 0
    rt.stopping = True
    lameduck = rt.lameduck()
    if lameduck:
        log.info("lameduck: serving (unready) for %.1fs before shutting down", lameduck)
        await asyncio.sleep(lameduck)
    log.info("shutting down")
    notify("STOPPING=1")
    teardown = not state.exit_after_handoff
    if not teardown:  # our heir died while we were being replaced: leave the fail-open rules
        log.info("leaving interface and rules in place: the DaemonSet's next agent takes them over")
    if teardown and params.node.setup_iptables and not params.node.skip_teardown:
        await node.run(node.teardown_rules)
    await rt.agent.stop(params.drain)
    rt.close()
    if params.cache_file:
        _save_cache_file(rt.agent, params.cache_file)
    if teardown:
        await node.run(node.teardown_interface)
    if params.pidfile:
        Path(params.pidfile).unlink(missing_ok=True)
    return 0


async def _hold_safety_net(rt: Runtime) -> bool:
    """A stop right after a handoff (a rolling update terminates the old pod
    as soon as the new one is ready): stay able to resume until the grace
    period ends. True if the heir died meanwhile and we serve again."""
    donor = rt.donor
    if not rt.handed_off or donor is None or donor.watch is None or donor.watch.done():
        return False
    log.info("stop requested after a handoff: able to resume until the grace period ends")
    await asyncio.wait({donor.watch})
    return not rt.handed_off


class _State:
    def __init__(self):
        self.tasks: list[asyncio.Task] = []
        self.drained = asyncio.Event()
        self.reload_now = asyncio.Event()
        self.stop = asyncio.Event()
        self.exit_after_handoff = False  # a stop came while handed off, then we resumed


def _publish_donor(rt: Runtime, state: _State, params: RunParams, source: ConfigSource) -> None:
    if not params.handoff:
        return
    rt.donor = Donor(rt.agent, params.handoff_dir, lambda: _handed_off(rt, state, params),
                     rt.http.listening_sockets, params.handoff_grace,
                     lambda spare: _resume(rt, state, params, source, spare))
    try:
        rt.donor.start()
    except OSError as exc:
        log.error("cannot publish the handoff socket in %s: %s (upgrades will not be hot)",
                  params.handoff_dir, exc)
        rt.donor = None


async def _resume(rt: Runtime, state: _State, params: RunParams, source: ConfigSource, spare: list) -> None:
    """Our heir died within the grace period: serve again on the duplicates
    of the sockets we handed over, with the cache we still hold, and take
    the node back (a heir that exited cleanly removed interface and rules)."""
    t0 = time.monotonic()
    old = rt.agent
    # the same limits objects: the old agent's queries still in flight keep
    # their admission slots; its caches stop counting, their entries move here
    agent = Agent(old.config, tcp_limits=old.tcp_limits, admission=old.admission, budget=old.budget)
    entries = dict(old.snapshot_blocks())
    for block in old.blocks:
        if block.cache is not None:
            block.cache.detach()
    agent.restore(entries)
    await agent.start({(a, p, k): s for a, p, k, s in spare if k != "http"})
    rt.agent = agent
    rt.configure_http(agent.config, params.metrics_listen)
    await rt.http.start({(a, p, k): s for a, p, k, s in spare if k == "http"})
    rt.handed_off = False
    rt.resumed += 1
    _publish_donor(rt, state, params, source)
    loop = asyncio.get_running_loop()
    state.tasks = [loop.create_task(rt.node.loop()),
                   loop.create_task(_watch_config(source, rt, params, state.reload_now))]
    log.warning("handoff: serving again %.0f ms after the heir's death (%d cache entries)",
                (time.monotonic() - t0) * 1000, sum(len(e) for _, e in agent.snapshot_blocks()))
    await rt.node.run(rt.node.reconcile_once)
    agent.probe_loops()


async def _handed_off(rt: Runtime, state: _State, params: RunParams) -> None:
    """The heir serves now: stop reading, finish what we took, own nothing."""
    drained = state.drained = asyncio.Event()  # this handoff's (we may hand off again after a resume)
    rt.handed_off = True
    for task in state.tasks:
        task.cancel()  # no more reconciles or reloads: the heir owns the node
    rt.http.close()    # the heir serves the HTTP endpoints on the same sockets
    t0 = time.monotonic()
    await rt.agent.stop(params.drain)
    log.info("handed off: drained in %.0f ms; staying alive, unready, until terminated",
             (time.monotonic() - t0) * 1000)
    drained.set()
    if state.exit_after_handoff:
        state.stop.set()  # the stop we were asked for earlier


def _tune_gc() -> None:
    """Full garbage collections scan every tracked object, and most of them
    (modules, functions, configuration: ~100k objects) exist once we serve
    and live as long as the process. Freeze those, so that collections only
    scan what came later (cache entries are one tracked object each).
    Measured: a client sweeping QTYPEs had pushed other clients' cache-hit
    p99 from 3 ms to 88 ms through full collections; frozen, 2.9 ms. The
    thresholds stay CPython's: collecting less often was measured to let
    the slow path's reference cycles pile up under a flood (+51 MiB in 25 s)."""
    gc.collect()
    gc.freeze()


def _reload_interval(config: Config, default: float) -> float:
    """The Corefile's `reload INTERVAL [JITTER]` if any block has it (with
    jitter, so a fleet does not reload in step), else -configsync."""
    reloads = [b.reload for b in config.blocks if b.reload]
    if not reloads:
        return default
    r = min(reloads, key=lambda x: x.interval)
    return max(1.0, r.interval + random.uniform(-r.jitter, r.jitter))


async def _watch_config(source: ConfigSource, rt: Runtime, params: RunParams, now: asyncio.Event) -> None:
    """Reload when the Corefile, template or ConfigMap changes (polled, by
    content hash) or on SIGUSR1. A broken new configuration is logged and
    counted, and the running one stays."""
    seen = source.fingerprint()
    while True:
        try:
            await asyncio.wait_for(now.wait(), _reload_interval(rt.agent.config, params.config_sync))
            forced = True
        except asyncio.TimeoutError:
            forced = False
        now.clear()
        fingerprint = source.fingerprint()
        if fingerprint == seen and not forced:
            continue
        seen = fingerprint
        try:
            config = source.load()
            await rt.agent.reload(config)
        except (CorefileError, ConfigMapError, ListenError) as exc:
            rt.reload_failed += 1
            rt.node.count("configmap", f"new configuration rejected, keeping the running one: {exc}")
            continue
        except Exception as exc:  # a bug must not end reloading for good: say so, keep the running one
            rt.reload_failed += 1
            log.exception("reloading the configuration failed unexpectedly; keeping the running one")
            rt.node.count("configmap", f"new configuration failed: {type(exc).__name__}: {exc}")
            continue
        for problem in getattr(source, "problems", []):
            rt.node.count("configmap", problem)
        await rt.reconfigure_http(config, params.metrics_listen)
        log.info("configuration reloaded (%d server blocks)", len(config.blocks))


def _load_cache_file(agent: Agent, path: str) -> None:
    try:
        entries = snapshot.load(path, agent.clock(), time.time())
    except FileNotFoundError:
        return
    except (OSError, snapshot.SnapshotError) as exc:
        log.warning("cache file %s unusable (%s); starting with an empty cache", path, exc)
        return
    log.info("loaded %d cache entries from %s", agent.restore(entries), path)


def _save_cache_file(agent: Agent, path: str) -> None:
    try:
        size = snapshot.save(path, agent.snapshot_blocks(), agent.clock(), time.time())
    except OSError as exc:  # full disk, read-only: the cache is lost, nothing else
        log.error("could not save the cache to %s: %s", path, exc)
        return
    log.info("saved the cache to %s (%d bytes)", path, size)


def _write_pidfile(path: str) -> None:
    tmp = f"{path}.tmp"
    try:
        Path(tmp).write_text(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.error("cannot write pidfile %s: %s", path, exc)
