"""One owner for the agent process, from start to exit.

``Lifecycle.run`` walks the phases of ``run.status.Phase``; only this class
moves the runtime from one phase to the next (``Runtime.enter`` checks the
move is one of those below), and readiness, the status socket and the
metrics read the phase from there::

    STARTING --(listening, READY sent)--------------> SERVING
    SERVING  --(a successor took our sockets)-------> HANDED_OFF
    HANDED_OFF --(the successor died in the grace)--> SERVING   (resume)
    SERVING  --(SIGTERM, SIGINT)--------------------> STOPPING
    STARTING --(cannot listen)----------------------> STOPPING

(HANDED_OFF ends in exit, once drained, on SIGTERM: nothing is left to stop.)

Starting: take the sockets and cache from a running agent if one answers
at the handoff socket -> ensure the interface -> listen (on the adopted
sockets, or new ones) -> publish our own handoff socket and tell the donor
READY -> pidfile -> rules. Serving: reconcile every ``-syncinterval``,
re-read the configuration every ``-configsync`` (see ``run.configsource``). Handed
off: stop reading, drain, stay alive and unready, own nothing; if the
successor dies within ``-handoff-grace``, serve again on the duplicated
sockets with the cache we still hold. Stopping (not handed off): lameduck,
remove the rules, drain, remove the interface (unless ``-skipteardown``).
A stop that arrives while handed off waits out the grace period first, so
that a successor dying right after a rolling update still finds us.
"""
from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import signal
import time
from pathlib import Path

from .. import __version__
from ..ttlcache.store import ByteBudget
from ..config.model import Config
from ..handoff.donor import Donor
from ..handoff.heir import take_over
from ..handoff.protocol import ProtocolError
from ..handoff.systemd import listen_fds, notify
from ..node.addresses import local_addresses
from ..node.reconcile import NodeSetup
from ..observe.podnames import PodNames
from .configsource import WILDCARDS, ConfigSource, dns_ports, watch_config, wildcard_ports
from .params import RunParams
from .persist import load_cache_file, save_cache_file
from .status import Phase, Runtime
from ..server.admission import Admission
from ..server import reuseport, sharing
from ..server.agent import Agent, ListenError

log = logging.getLogger("nodecache")
# Pod-network mode (node-cache's -setupinterface=false -setupiptables=false,
# behind Cilium's Local Redirect Policy): after SIGTERM the pod is unready at
# once but keeps answering this long unless the Corefile's `health lameduck`
# says otherwise. Cilium sends traffic to the pod until it sees it NotReady:
# kubelet's next readiness probe (the overlay probes every second), the
# endpoint update through the API server, Cilium's agent rewriting its
# redirect: one to two seconds in practice. Five covers that with margin and
# stays well inside terminationGracePeriodSeconds with -drain.
POD_NETWORK_LAMEDUCK = 5.0


async def run_node(params: RunParams, source: ConfigSource, config: Config) -> int:
    """``nodecache run`` once the configuration is read: the exit status."""
    return await Lifecycle(params, source, config).run()


class Lifecycle:
    def __init__(self, params: RunParams, source: ConfigSource, config: Config):
        self.params = params
        self.source = source
        self.node = NodeSetup(params.node, dns_ports(config, params.local_ips),
                              wildcard_ports(config, params.local_ips))
        self.agent = Agent(config, admission=Admission(params.max_inflight, params.max_inflight_per_client,
                                                       params.miss_rate_per_client,
                                                       storm_threshold=params.storm_threshold),
                           budget=ByteBudget(params.cache_bytes, params.cache_max_item),
                           forward_retry=params.forward_retry, udp_batch=params.udp_batch,
                           udp_coalesce=params.udp_coalesce)
        self.rt = Runtime(self.agent, self.node)
        self.rt.prometheus_listen = params.prometheus_listen
        self.rt.top_clients = params.metrics_top_clients
        self.pod_names = PodNames.in_cluster() if params.pod_names else None
        if self.pod_names is not None:
            self.agent.top.pod_name = self.pod_names.name
            self.pod_names.start()
        if params.metrics_tls is not None:  # (checked by the command line before we got here)
            self.rt.metrics_tls = params.metrics_tls.context()
        self.tasks: list[asyncio.Task] = []   # reconcile loop and config watcher, while we own the node
        self.stop = asyncio.Event()
        self.reload_now = asyncio.Event()
        self.drained = asyncio.Event()
        # a stop came while handed off and we resumed after: on exit, leave
        # interface and (fail-open) rules for the DaemonSet's next agent
        self.keep_node = False

    async def run(self) -> int:
        """The process's exit status."""
        self._count_startup_problems()
        try:
            take = await asyncio.to_thread(take_over, self.params.handoff_dir) if self.params.handoff else None
        except ProtocolError as exc:
            log.error("handoff from the running agent failed (%s); it keeps serving. Exiting.", exc)
            return 1
        except OSError as exc:  # the directory itself: not one, not ours to use
            log.error("-handoff-dir %s cannot be used (%s): give a directory this user may write, or "
                      "-handoff=false. Exiting.", self.params.handoff_dir, exc.strerror or exc)
            return 2
        if not await self._start(take):
            return 1
        self._serve()
        await self._wait_for_stop()
        return await self._exit()

    # -- starting -------------------------------------------------------------
    def _count_startup_problems(self) -> None:
        for problem in getattr(self.source, "problems", []):
            self.node.count("configmap", problem)

    async def _start(self, take) -> bool:
        """STARTING -> SERVING; False (after cleaning up) if we cannot listen."""
        params, agent, rt, node = self.params, self.agent, self.rt, self.node
        await node.run(node.ensure_interface)
        # decode the snapshot before serving (in a thread: the donor serves meanwhile)
        cached = await asyncio.to_thread(take.cache, agent.clock()) if take else None
        adopted = take.sockets if take and not take.cache_only else listen_fds()
        http_socks = {k: v for k, v in adopted.items() if k[2] == "http"}
        try:
            await agent.start({k: v for k, v in adopted.items() if k[2] != "http"})
        except ListenError as exc:
            log.error("%s", exc)
            rt.enter(Phase.STOPPING)
            if take:
                take.abandon()
            await agent.stop(0)
            await node.run(node.undo_start)  # only what this start created: the holder keeps its networking
            return False
        if self._others_serving():
            await node.run(node.ensure_standby)  # a migration: the interface is the other cache's
        rt.configure_http(agent.config, params.metrics_listen)
        await rt.http.start(http_socks)
        for sock in http_socks.values():
            sock.close()  # handed over but no longer configured
        if take:
            rt.received_entries = agent.restore(cached)
            log.info("handoff: serving with %d cache entries from pid %d%s", rt.received_entries, take.donor_pid,
                     " (a warm start: it keeps serving on its own sockets until stopped)" if take.cache_only else "")
        elif params.cache_file:
            load_cache_file(agent, params.cache_file)
        agent.start_blocks()
        rt.enter(Phase.SERVING)
        self._publish_donor()
        rt.start_status(params.status_socket)
        if take:
            take.finish()
            rt.takeover_seconds = time.monotonic() - take.started
            log.info("handoff: %s sent %.0f ms after connecting", "DONE" if take.cache_only else "READY",
                     rt.takeover_seconds * 1000)
            notify(f"MAINPID={os.getpid()}\nREADY=1" if not take.cache_only else "READY=1")
        else:
            notify("READY=1")
        if params.pidfile:
            _write_pidfile(params.pidfile)
        await node.run(node.ensure_rules)
        _tune_gc()
        if params.node.setup_iptables:
            backend, ips = node.backend, ", ".join(params.local_ips) or "no local IP"
            failed = getattr(backend, "failed", 0)
            if failed:  # (what failed was logged and counted in coredns_nodecache_setup_errors_total)
                log.error("%d of %d rules could not be set up for %s: retrying every %gs", failed,
                          len(backend), ips, params.node.sync_interval)
            else:
                log.info("%d rules in place for %s", len(backend or ()), ips)
        return True

    # -- serving ----------------------------------------------------------------
    def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGUSR1, self.reload_now.set)
        loop.set_exception_handler(self.rt.on_loop_exception)
        log.info("nodecache %s serving (%d server blocks)", __version__, len(self.agent.config.blocks))
        self._own_node()

    def _own_node(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.node.reconcile_forever()),
                      loop.create_task(watch_config(self.source, self.rt, self.params, self.reload_now)),
                      loop.create_task(self._watch_local_addresses()),
                      loop.create_task(self._settle_shared_ports()),
                      loop.create_task(self.rt.http.retry()),
                      loop.create_task(self.rt.watch_drops())]

    async def _settle_shared_ports(self) -> None:
        """While another server holds one of our addresses too: keep the
        group steered to us, and detach the steering once we hold it alone
        (server.sharing)."""
        agent = self.agent
        while agent.shared:
            await asyncio.sleep(sharing.SETTLE_EVERY)
            try:
                agent.shared = sharing.settle(agent.shared, agent.udp_answers())
            except OSError as exc:
                log.warning("cannot look at the ports shared with another server (%s): leaving them as they are",
                            exc)
                return

    async def _watch_local_addresses(self) -> None:
        """Keep admission's view of the node's own addresses (host-network
        clients, see server.admission) current, every sync interval."""
        failed = False
        while True:
            try:
                self.agent.admission.local = await asyncio.to_thread(local_addresses)
                failed = False
            except OSError as exc:
                if not failed:
                    log.warning("cannot read this namespace's addresses (%s): host-network clients "
                                "count by address until it can", exc)
                failed = True
            await asyncio.sleep(self.params.node.sync_interval)

    def _disown_node(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks = []

    def _publish_donor(self) -> None:
        rt, params = self.rt, self.params
        if not params.handoff:
            return
        rt.donor = Donor(rt.agent, params.handoff_dir, self._handed_off, rt.http.listening_sockets,
                         params.handoff_grace, self._resume)
        try:
            rt.donor.start()
        except OSError as exc:
            log.error("cannot publish the handoff socket in %s: %s (upgrades will not be hot)",
                      params.handoff_dir, exc)
            rt.donor = None

    # -- handed off -------------------------------------------------------------
    async def _handed_off(self) -> None:
        """SERVING -> HANDED_OFF: stop reading, finish what we took, own nothing."""
        drained = self.drained = asyncio.Event()  # this handoff's (we may hand off again after a resume)
        self.rt.enter(Phase.HANDED_OFF)
        self._disown_node()     # no more reconciles or reloads: the heir owns the node
        self.rt.http.close()    # the heir serves the HTTP endpoints on the same sockets
        t0 = time.monotonic()
        await self.rt.agent.stop(self.params.drain)
        log.info("handed off: drained in %.0f ms; staying alive, unready, until terminated",
                 (time.monotonic() - t0) * 1000)
        drained.set()
        if self.keep_node:
            self.stop.set()  # the stop we were asked for earlier

    async def _resume(self, spare: list) -> None:
        """HANDED_OFF -> SERVING: our heir died within the grace period. Serve
        again on the duplicates of the sockets we handed over, with the cache
        we still hold, and take the node back (a heir that exited cleanly
        removed interface and rules)."""
        t0 = time.monotonic()
        rt, params = self.rt, self.params
        old = rt.agent
        # the same limits objects: the old agent's queries still in flight keep
        # their admission slots; its caches stop counting, their entries move here
        agent = Agent(old.config, tcp_limits=old.tcp_limits, admission=old.admission, budget=old.budget,
                      forward_retry=old.forward_retry, udp_batch=old.udp_batch,
                      udp_coalesce=old.cork.window)
        entries = dict(old.snapshot_blocks())
        for block in old.blocks:
            if block.cache is not None:
                block.cache.detach()
        agent.restore(entries)
        await agent.start({(a, p, k): s for a, p, k, s in spare if k != "http"})
        self.agent = rt.agent = agent
        rt.configure_http(agent.config, params.metrics_listen)
        await rt.http.start({(a, p, k): s for a, p, k, s in spare if k == "http"})
        rt.enter(Phase.SERVING)
        rt.resumed += 1
        self._publish_donor()
        self._own_node()
        log.warning("handoff: serving again %.0f ms after the heir's death (%d cache entries)",
                    (time.monotonic() - t0) * 1000, sum(len(e) for _, e in agent.snapshot_blocks()))
        await self.node.run(self.node.reconcile_once)
        agent.start_blocks()

    async def _wait_for_stop(self) -> None:
        await self.stop.wait()
        while await self._hold_safety_net():
            # Our heir died while we were being replaced. Exiting now would leave
            # the node without an agent until the heir's container restarts, so
            # serve on: the restarted heir takes over from us (then we exit), or
            # a second signal, or the kubelet's SIGKILL, ends us.
            log.warning("stop requested, but our heir died: serving until a new agent takes over")
            self.keep_node = True
            self.stop.clear()
            await self.stop.wait()

    async def _hold_safety_net(self) -> bool:
        """A stop right after a handoff (a rolling update terminates the old pod
        as soon as the new one is ready): stay able to resume until the grace
        period ends. True if the heir died meanwhile and we serve again."""
        donor = self.rt.donor
        if self.rt.phase is not Phase.HANDED_OFF or donor is None or donor.watch is None or donor.watch.done():
            return False
        log.info("stop requested after a handoff: able to resume until the grace period ends")
        await asyncio.wait({donor.watch})
        return self.rt.phase is Phase.SERVING

    # -- stopping -----------------------------------------------------------------
    async def _exit(self) -> int:
        rt, params, node = self.rt, self.params, self.node
        self._disown_node()
        if rt.donor is not None:
            rt.donor.close()
        if rt.phase is Phase.HANDED_OFF:
            log.info("exiting after handoff: interface and rules belong to the successor")
            await self.drained.wait()
            rt.close()
            return 0
        rt.enter(Phase.STOPPING)
        lameduck = rt.lameduck() or params.lameduck
        if lameduck:
            log.info("lameduck: serving (unready) for %.1fs before shutting down", lameduck)
            await asyncio.sleep(lameduck)
        log.info("shutting down")
        notify("STOPPING=1")
        teardown = not self.keep_node
        if not teardown:
            log.info("leaving interface and rules in place: the DaemonSet's next agent takes them over")
        elif serving := self._others_serving():
            teardown = False  # node-cache (or an agent that joined us) serves on: its networking stays
            log.info("leaving interface and rules in place: another process still serves %s", ", ".join(serving))
            await node.run(lambda: node.remove_standby("exiting"))
        # whoever else holds our addresses takes every new query from now on,
        # before we stop reading and drain (server.sharing)
        sharing.release(sharing.shared_ports(rt.agent.listening_sockets()))
        if teardown and params.node.setup_iptables and not params.node.skip_teardown:
            await node.run(node.teardown_rules)
        await rt.agent.stop(params.drain)
        rt.close()
        if self.pod_names is not None:
            self.pod_names.stop()
        if params.cache_file:
            save_cache_file(rt.agent, params.cache_file)
        if teardown:
            await node.run(node.teardown_interface)
        if params.pidfile:
            Path(params.pidfile).unlink(missing_ok=True)
        return 0

    def _others_serving(self) -> list[str]:
        """The local IP:port pairs some process other than us still serves
        (we joined node-cache's sockets, or another agent joined ours; where
        we serve an IP from a socket on every address, theirs is there too)."""
        ours = set()
        for _, _, _, fd in self.rt.agent.listening_sockets():
            try:
                ours.add(os.fstat(fd).st_ino)
            except OSError:
                pass
        out = []
        for ip, ports in sorted(self.node.dns_ports.items()):
            for port in sorted(ports):
                addrs = [ip, *(WILDCARDS[ipaddress.ip_address(ip).version]
                               if port in self.node.wildcard.get(ip, ()) else ())]
                if any(reuseport.others_hold(addr, port, ours) for addr in addrs):
                    out.append(f"{ip}:{port}")
        return out


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


def _write_pidfile(path: str) -> None:
    tmp = f"{path}.tmp"
    try:
        Path(tmp).write_text(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.error("cannot write pidfile %s: %s", path, exc)
