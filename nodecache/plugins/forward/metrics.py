"""The forward plugin's metrics, CoreDNS's names and labels
(plugin/forward/metrics.go, plugin/pkg/proxy/metrics.go)."""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily

from ...observe.families import histogram, rcode_label
from ...observe.stats import DURATION_BUCKETS
from ...upstream.options import DNS, HTTPS, TLS


# the stream pool's proto label, as CoreDNS names its transports
_CONN_PROTO = {DNS: "tcp", TLS: "tcp-tls", HTTPS: "https"}


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
    tls_hs = CounterMetricFamily("nodecache_forward_tls_handshakes", "TLS handshakes with upstreams "
                                 "(resumed: an abbreviated handshake that resumed the last session).",
                                 labels=["to", "resumed"])
    tls_fail = CounterMetricFamily("nodecache_forward_tls_failures", "Failed TLS handshakes with upstreams, "
                                   "by reason (verify: the certificate did not verify).", labels=["to", "reason"])
    for _server, _zones, stage in owned:
        for fwd in stage.forwarders:
            n_rejects += fwd.rejected
            n_broken += fwd.all_down
            for up in fwd.upstreams:
                to = str(up.addr)
                proto = _CONN_PROTO[up.addr.proto]
                hc_fail.add_metric(["forward", to], up.healthcheck_failures)
                conn_hit.add_metric(["forward", to, proto], up.pool.reused)
                conn_miss.add_metric(["forward", to, proto], up.pool.opened)
                for rcode, (counts, total) in up.durations.items():
                    durations[("forward", to, rcode_label(rcode))] = (counts, total)
                if up.addr.encrypted:
                    tls_hs.add_metric([to, "false"], up.pool.handshakes)
                    tls_hs.add_metric([to, "true"], up.pool.resumed)
                    for reason, n in sorted(up.pool.failures.items()):
                        tls_fail.add_metric([to, reason], n)
    rejects.add_metric([], n_rejects)
    broken.add_metric([], n_broken)
    yield rejects
    yield broken
    yield hc_fail
    yield conn_hit
    yield conn_miss
    yield tls_hs
    yield tls_fail
    yield histogram("coredns_proxy_request_duration_seconds", "Histogram of the time each request took.",
                     ["proxy_name", "to", "rcode"], durations, DURATION_BUCKETS)
