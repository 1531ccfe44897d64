"""What a running agent knows about itself: readiness, HTTP endpoints,
metrics, and the status socket its probes ask.

The process's phase (``Phase``) is set by its one owner, ``lifecycle``,
through ``enter``, which refuses moves the lifecycle does not make.
Readiness (``/ready``, ``nodecache probe ready``, the ``nodecache_ready``
gauge) is computed from the phase and the agent each time it is asked:
unready while starting, after handing off, while shutting down (lameduck),
while a listener's UDP receive queue keeps overflowing (the kernel drops
queries: ``observe.udpdrops``, checked once a second by ``watch_drops``),
and when *every* zone is degraded; the reasons are returned with the 503.
A zone is degraded when its every upstream has been down for
``UNREADY_AFTER_DOWN`` seconds or it has a forwarding loop; one degraded
zone among healthy ones is named in /ready's 200 body and in
``nodecache_zone_degraded``, not made NotReady (see ``degraded``).

The status socket (``-status-socket``, default in /tmp, i.e. private to a
container) answers exec probes about *this* process, which matters during a
rolling update when two agents run on one node and the handoff socket
already belongs to the newer one.
"""
from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import socket
import time
from pathlib import Path

from ..fdlimit import AcceptGuard
from ..observe import udpdrops
from ..observe.http import HttpServers
from .metrics import exposition, registries

log = logging.getLogger("nodecache")
# Every upstream of a zone must have been down this long before readiness
# says so: a reset or a CoreDNS rollout (seconds) must not flap /ready.
UNREADY_AFTER_DOWN = 10.0


class Phase(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    HANDED_OFF = "handed off"   # a successor holds our sockets; we drain and wait
    STOPPING = "stopping"


_MOVES = {Phase.STARTING: {Phase.SERVING, Phase.STOPPING},
          Phase.SERVING: {Phase.HANDED_OFF, Phase.STOPPING},
          Phase.HANDED_OFF: {Phase.SERVING},  # resumed: the successor died in the grace period
          Phase.STOPPING: set()}


class Runtime:
    def __init__(self, agent, node):
        self.agent = agent
        self.node = node
        self.donor = None
        self.phase = Phase.STARTING
        self.panics = 0
        self.drops = udpdrops.DropWatch()  # the kernel's receive drops per listener
        self.reload_failed = 0
        self.received_entries = 0
        self.resumed = 0  # times our heir died in the grace period and we served again
        self.takeover_seconds = 0.0
        self.http = HttpServers()
        self.dns_registry, self.setup_registry = registries(self)
        self.status_sock: socket.socket | None = None
        self.status_task: asyncio.Task | None = None
        self.metrics_tls = None     # ssl.SSLContext for -metrics-listen-address (-tls-enabled)
        self.prometheus_listen = ""  # -prometheus-listen-address: CoreDNS's metrics here too
        self.top_clients = 0         # -metrics-top-clients: per-client series for the N busiest

    # -- state ------------------------------------------------------------
    def enter(self, phase: Phase) -> None:
        if phase not in _MOVES[self.phase]:
            raise RuntimeError(f"lifecycle bug: {self.phase.value} -> {phase.value}")
        log.debug("phase: %s -> %s", self.phase.value, phase.value)
        self.phase = phase

    @property
    def handed_off(self) -> bool:
        return self.phase is Phase.HANDED_OFF

    def retired_listeners(self):
        return list(self.agent.retired) if self.agent else []

    def block_server(self, block) -> str:
        return self.agent.block_server(block)

    def unready_reasons(self) -> list[str]:
        """Why this process is not ready (empty: ready). See ``degraded``."""
        if self.phase is Phase.STARTING:
            return ["starting"]
        if self.phase is Phase.HANDED_OFF:
            return ["handed off to a successor"]
        reasons = ["shutting down"] if self.phase is Phase.STOPPING else []
        reasons += [f"udp receive queue of {label} overflowing: queries dropped by the kernel"
                    for label in self.drops.overflowing()]
        degraded = self.degraded()
        if degraded and len(degraded) == len(self.agent.blocks):
            reasons += list(degraded.values())  # every zone fails: this node's pods get no answers
        return reasons

    def degraded(self) -> dict[str, str]:
        """Zones that cannot answer misses now, with why: every upstream down
        for ``UNREADY_AFTER_DOWN`` seconds, or a forwarding loop. One such
        zone does not make the process unready (the node's other zones,
        cluster.local above all, still answer; a NotReady pod would stall a
        rolling update for a zone the node cannot fix): it is reported in
        /ready's body and ``nodecache_zone_degraded``. Only when every zone
        is degraded is the process unready."""
        out = {}
        now = time.monotonic()
        for block in self.agent.blocks:
            zones = " ".join(block.cfg.zones)
            why = block.trouble(now)
            if why:
                out[zones] = f"zone {zones}: {why}"
                continue
            stage = block.forward_stage
            if stage is not None:
                down = max(fwd.down_for(now) for fwd in stage.forwarders)
                if down >= UNREADY_AFTER_DOWN:
                    out[zones] = f"zone {zones}: no healthy upstream for {down:.0f}s"
        return out

    async def watch_drops(self) -> None:
        """Count each listener's kernel receive drops once a second (observe.udpdrops)."""
        while True:
            sockets = {}
            for listener in self.agent.listeners:
                fd = listener.udp.fileno() if listener.udp is not None else None
                if fd is not None:
                    sockets[listener.server_label()] = fd
            self.drops.check(sockets)
            await asyncio.sleep(udpdrops.PERIOD)

    def status(self) -> dict:
        reasons = self.unready_reasons()
        agent = self.agent
        return {"pid": os.getpid(), "ready": not reasons, "reasons": reasons,
                "degraded": sorted(self.degraded().values()) if self.agent else [],
                "handed_off": self.handed_off,
                "entries": sum(len(b.cache) for b in agent.blocks if b.cache is not None),
                # what grows if something leaks (bench/soak.py samples these)
                "tasks": len(asyncio.all_tasks()),
                "memos": sum(len(lst.path.memo.table) for lst in agent.listeners),
                "slow_inflight": agent.admission.running,
                "top": agent.top.snapshot()}  # nodecache top

    def on_loop_exception(self, loop, context) -> None:
        """The event loop's handler: an exception no code of ours caught is a
        panic (coredns_panics_total); logged as asyncio would."""
        self.panics += 1
        loop.default_exception_handler(context)

    # -- HTTP ---------------------------------------------------------------
    def configure_http(self, config, metrics_listen: str) -> None:
        self.http.routes = self.http_routes(config, metrics_listen)
        if metrics_listen and self.metrics_tls is not None:
            self.http.tls[metrics_listen] = self.metrics_tls

    async def reconfigure_http(self, config, metrics_listen: str) -> None:
        await self.http.apply(self.http_routes(config, metrics_listen))

    def http_routes(self, config, metrics_listen: str) -> dict:
        http = HttpServers()
        for block in config.blocks:
            if block.has("prometheus"):
                http.add(block.option("prometheus"), "/metrics", lambda: exposition(self.dns_registry))
            if block.has("health"):
                http.add(block.option("health").addr, "/health", self._health)
            if block.has("ready"):
                http.add(block.option("ready"), "/ready", self._ready)
        if self.prometheus_listen:
            http.add(self.prometheus_listen, "/metrics", lambda: exposition(self.dns_registry))
        if metrics_listen:
            http.add(metrics_listen, "/metrics", lambda: exposition(self.setup_registry))
        return http.routes

    def _health(self):
        return 200, "text/plain", b"OK"

    def _ready(self):
        reasons = self.unready_reasons()
        if reasons:
            return 503, "text/plain", ("\n".join(reasons) + "\n").encode()
        degraded = sorted(self.degraded().values())
        if degraded:
            return 200, "text/plain", ("OK\n" + "".join(f"degraded: {d}\n" for d in degraded)).encode()
        return 200, "text/plain", b"OK"

    def lameduck(self) -> float:
        return max((b.cfg.option("health").lameduck for b in self.agent.blocks if b.cfg.has("health")), default=0.0)

    # -- status socket ------------------------------------------------------
    def start_status(self, path: str) -> None:
        if not path:
            return
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            sock.listen(8)
            sock.setblocking(False)
            os.rename(tmp, target)
        except OSError as exc:
            log.error("cannot create the status socket %s: %s (exec probes will fail)", path, exc)
            return
        self.status_sock = sock
        self.status_task = asyncio.get_running_loop().create_task(self._serve_status())

    async def _serve_status(self) -> None:
        loop = asyncio.get_running_loop()
        guard = AcceptGuard("status socket")
        while True:
            conn, _ = await guard.accept(self.status_sock)
            try:
                conn.setblocking(False)
                await loop.sock_sendall(conn, json.dumps(self.status()).encode())
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.http.close()
        if self.status_task is not None:
            self.status_task.cancel()
        if self.status_sock is not None:
            self.status_sock.close()


def read_status(path: str, timeout: float = 3.0) -> dict:
    """What the agent at status socket ``path`` says about itself (``status``).
    Raises OSError or ValueError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(path)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return json.loads(data)


def probe(path: str, what: str) -> int:
    """``nodecache probe live|ready``: 0 when the agent at ``path`` is alive/ready."""
    try:
        status = read_status(path)
    except (OSError, ValueError) as exc:
        print(f"not {what}: no answer from {path}: {exc}")
        return 1
    if what == "live" or status.get("ready"):
        print(f"{what}: pid {status['pid']}")
        return 0
    print("not ready: " + "; ".join(status.get("reasons", [])))
    return 1
