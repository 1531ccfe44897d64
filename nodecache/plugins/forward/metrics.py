"""The forward plugin's metrics, CoreDNS's names and labels
(plugin/forward/metrics.go, plugin/pkg/proxy/metrics.go)."""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily

from ...observe.families import histogram, rcode_label
from ...observe.stats import DURATION_BUCKETS


def families(owned):
    """``owned``: (server label, zones label, ForwardStage) of every block with a forwarder."""
    rejects = CounterMetricFamily("coredns_forward_max_concurrent_rejects", "Counter of the number of "
                                  "queries rejected because the concurrent queries were at maximum.")
    broken = CounterMetricFamily("coredns_forward_healthcheck_broken", "Counter of the number of "
                                 "complete failures of the healthchecks.")
    hc_fail = CounterMetricFamily("coredns_proxy_healthcheck_failures", "Count of failed health checks.",
                                  labels=["proxy_name", "to"])
    conn_hit = CounterMetricFamily("coredns_proxy_conn_cache_hits", "Counter of connection cache hits "
                                   "per upstream and protocol.", labels=["proxy_name", "to", "proto"])
    conn_miss = CounterMetricFamily("coredns_proxy_conn_cache_misses", "Counter of connection cache "
                                    "misses per upstream and protocol.", labels=["proxy_name", "to", "proto"])
    durations = {}
    n_rejects = n_broken = 0
    for _server, _zones, stage in owned:
        fwd = stage.forwarder
        n_rejects += fwd.rejected
        n_broken += fwd.all_down
        for up in fwd.upstreams:
            to = str(up.addr)
            hc_fail.add_metric(["forward", to], up.healthcheck_failures)
            conn_hit.add_metric(["forward", to, "tcp"], up.pool.reused)
            conn_miss.add_metric(["forward", to, "tcp"], up.pool.opened)
            for rcode, (counts, total) in up.durations.items():
                durations[("forward", to, rcode_label(rcode))] = (counts, total)
    rejects.add_metric([], n_rejects)
    broken.add_metric([], n_broken)
    yield rejects
    yield broken
    yield hc_fail
    yield conn_hit
    yield conn_miss
    yield histogram("coredns_proxy_request_duration_seconds", "Histogram of the time each request took.",
                     ["proxy_name", "to", "rcode"], durations, DURATION_BUCKETS)
