"""Where ``nodecache run``'s configuration comes from and when it changed.
The process itself is driven by ``run.lifecycle``; its parameters are
``run.params``.

The Corefile is built from the template (``-basecorefile``, else
``-conf``) with node-cache's templating (``config.nodeconfig``): local IPs,
the upstream Service's ClusterIP, the kube-dns ConfigMap's stubDomains and
upstreamNameservers. A Corefile that is broken at startup is fatal (exit
2, ``file:line: message``); one that breaks later is logged and counted,
and the running configuration stays (``watch_config``).
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
from pathlib import Path

from ..config.corefile import CorefileError
from ..config.model import Config
from ..config.parse import parse_config, read_corefile
from ..plugins import reload
from ..config.nodeconfig import (CLUSTER_DNS, LOCAL_DNS, ConfigMapError, cluster_dns_ip, read_kubedns_configmap,
                              render_corefile, service_env)
from .params import DEFAULT_KUBEDNS_CM, RunParams
from .status import Runtime
from ..server.agent import ListenError

log = logging.getLogger("nodecache")


_PILLAR = re.compile(r"__pillar__[a-z0-9_]*", re.IGNORECASE)


def _no_leftover_pillar(text: str, source: str) -> None:
    """A ``__PILLAR__`` token still there after rendering is one node-cache
    does not fill either (``__PILLAR__DNS__DOMAIN__``: the install step's
    sed): served as it is, it would be a zone or an address named
    ``__pillar__...``. Raises CorefileError naming its line."""
    m = _PILLAR.search(text)
    if m is not None:
        line = text[:m.start()].count("\n") + 1
        raise CorefileError(source, line, f"{m.group(0)} was left in the Corefile: substitute it before "
                                          "applying (node-cache's install step does, with sed)")


class ConfigSource:
    """Where the Corefile text comes from, and whether it changed."""

    def __init__(self, params: RunParams, env: dict[str, str], write_effective: bool = True):
        self.params = params
        self.env = env
        self.write_effective = write_effective
        self.text = ""  # the Corefile in effect, once loaded
        cm = params.kubedns_cm
        if not cm and Path(DEFAULT_KUBEDNS_CM).is_dir():
            cm = DEFAULT_KUBEDNS_CM  # as node-cache: use the default mount if present
        self.kubedns_cm = cm
        self.write_warned = False

    def _source(self) -> tuple[str, str]:
        """(path, flag) of the Corefile to read: the template where it exists, else -conf."""
        base = self.params.base_corefile
        if base and Path(base).is_file():
            return base, "-basecorefile"
        return self.params.conf, "-conf"

    def _inputs(self) -> list[Path]:
        paths = [Path(self._source()[0])]
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
        source, flag = self._source()
        try:
            text = read_corefile(source)
        except CorefileError as exc:
            if exc.line:
                raise
            hint = (f"; -basecorefile {self.params.base_corefile} is used instead when that file exists"
                    if self.params.base_corefile and flag == "-conf" else "")
            raise CorefileError(source, 0, f"{exc.message} (the Corefile from {flag}{hint})") from None
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
        if LOCAL_DNS in text and not self.params.local_ips:
            line = text[:text.index(LOCAL_DNS)].count("\n") + 1
            raise CorefileError(source, line, f"{LOCAL_DNS} needs -localip (the addresses to bind)")
        text = render_corefile(text, list(self.params.local_ips), cluster_ip, stubs, upstreams,
                               self.params.dns_port)
        _no_leftover_pillar(text, source)
        config = parse_config(text, source)
        self.text = text
        if source != self.params.conf and self.write_effective:
            self._write_effective(text)
        return config

    def _write_effective(self, text: str) -> None:
        """Write the Corefile in effect to -conf, as node-cache does with its
        template, so that ``cat`` of that path shows what is served. Best
        effort: a read-only path is logged once, and serving goes on."""
        path = Path(self.params.conf)
        try:
            if path.is_file() and path.read_text(errors="replace") == text:
                return
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
        except OSError as exc:
            if not self.write_warned:
                log.warning("cannot write the effective Corefile to %s (-conf): %s", path, exc.strerror or exc)
                self.write_warned = True


WILDCARDS = {4: ("0.0.0.0", "::"), 6: ("::",)}  # binds that serve an address of that family


def _served_by(block, ip: str) -> str:
    """How ``block`` serves ``ip``: "ip" (bound to it), "wildcard" (no bind,
    or bound to every address), or ""."""
    if ip in block.binds:
        return "ip"
    if not block.binds or any(b in WILDCARDS[ipaddress.ip_address(ip).version] for b in block.binds):
        return "wildcard"
    return ""


def dns_ports(config: Config, ips: tuple[str, ...]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {ip: set() for ip in ips}
    for block in config.blocks:
        for ip in ips:
            if _served_by(block, ip):
                out[ip].add(block.port)
    return {ip: ports or {53} for ip, ports in out.items()}


def wildcard_ports(config: Config, ips: tuple[str, ...]) -> dict[str, set[int]]:
    """The ports each IP is served on only by a socket bound to every address."""
    out: dict[str, set[int]] = {ip: set() for ip in ips}
    for block in config.blocks:
        for ip in ips:
            if _served_by(block, ip) == "wildcard":
                out[ip].add(block.port)
    for block in config.blocks:  # a socket bound to the address itself takes that port's traffic
        for ip in ips:
            if _served_by(block, ip) == "ip":
                out[ip].discard(block.port)
    return out


async def watch_config(source: ConfigSource, rt: Runtime, params: RunParams, now: asyncio.Event) -> None:
    """Reload when the Corefile, template or ConfigMap changes (polled, by
    content hash) or on SIGUSR1. A broken new configuration is logged and
    counted, and the running one stays."""
    seen = source.fingerprint()
    while True:
        try:
            await asyncio.wait_for(now.wait(), reload.interval(rt.agent.config.blocks, params.config_sync))
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
