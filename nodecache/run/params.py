"""``nodecache run``'s parameters: node-cache's command line and ours,
parsed once (``cli``) into one frozen value, built by keyword. Every
default is ``nodecache.defaults``'s."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .. import defaults
from ..node.reconcile import NodeParams

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
    config_sync: float = defaults.CONFIG_SYNC
    metrics_listen: str = defaults.METRICS_LISTEN
    dns_port: int = 53
    handoff: bool = True
    handoff_dir: str = defaults.HANDOFF_DIR
    drain: float = defaults.DRAIN
    handoff_grace: float = defaults.HANDOFF_GRACE
    max_inflight: int = defaults.MAX_INFLIGHT
    max_inflight_per_client: int = defaults.MAX_INFLIGHT_PER_CLIENT
    miss_rate_per_client: float = defaults.MISS_RATE_PER_CLIENT
    storm_threshold: int = defaults.STORM_THRESHOLD
    cache_bytes: int = defaults.CACHE_BYTES
    cache_max_item: int = defaults.CACHE_MAX_ITEM
    cache_file: str = ""
    status_socket: str = defaults.STATUS_SOCKET
    lameduck: float = 0.0  # when the Corefile's `health` sets none (see lifecycle.POD_NETWORK_LAMEDUCK)
    metrics_tls: object = None     # observe.tls.MetricsTls (-tls-enabled) or None
    prometheus_listen: str = ""    # -prometheus-listen-address
    forward_retry: bool = True     # -forward-retry
    udp_batch: bool = True         # -udp-batch
    udp_coalesce: float = 0.0      # -udp-coalesce (s; 0: off)
    metrics_top_clients: int = 0   # -metrics-top-clients (0: no per-client series)
    pod_names: bool = False        # -pod-names: nodecache top names clients by pod (observe.podnames)


def parse_local_ips(text: str) -> tuple[tuple[str, ...], list[str]]:
    """(valid addresses, problems) from -localip's comma-separated list.
    Every problem stops the start (``cli``): an address we were told to
    serve and do not serve sends that node's pods past us in silence."""
    good, bad = [], []
    for item in filter(None, (p.strip() for p in text.split(","))):
        try:
            good.append(str(ipaddress.ip_address(item)))
        except ValueError:
            bad.append(_why_not_an_ip(item))
    return tuple(dict.fromkeys(good)), bad


def _why_not_an_ip(item: str) -> str:
    if item.startswith("$(") and item.endswith(")"):
        return (f"-localip entry {item!r} was not expanded: kubelet leaves $(VAR) as it is when the pod has "
                f"no such variable (the DNS Service is not named as the variable says, e.g. kubespray's "
                f"'coredns', or enableServiceLinks is false); put the ClusterIP itself in the overlay "
                f"(docs/deploy.md, 'The kube-dns ClusterIP')")
    return f"-localip entry {item!r} is not an IP address"
