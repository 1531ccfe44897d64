"""The k8s_schema plugin's metrics (nodecache's own: CoreDNS has no such plugin)."""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily


def families(owned):
    """``owned``: (server label, zones label, SchemaStage) of every block with the stage."""
    answered = CounterMetricFamily("nodecache_searchpath_answered", "Queries under the cluster zone answered "
                                   "NXDOMAIN at the node, by reason: schema (no Kubernetes object has such a "
                                   "name) or rfc8020 (an ancestor is denied).", labels=["server", "reason"])
    probes = CounterMetricFamily("nodecache_searchpath_probes", "Ancestors (<ns>.svc, <svc>.<ns>.svc) asked of "
                                 "the cluster DNS before forwarding a name under them, by result.",
                                 labels=["server", "result"])
    prefetch = CounterMetricFamily("nodecache_searchpath_prefetch", "Later steps of a pod's search walk (the "
                                   "node's search domains, then the name itself) asked ahead when its first step "
                                   "arrived: started, or refused (the client's share of misses was spent).",
                                   labels=["server", "result"])
    for server, _zones, stage in owned:
        for result, n in stage.prefetch.items():
            prefetch.add_metric([server, result], n)
        for reason, n in stage.answered.items():
            answered.add_metric([server, reason], n)
        for result, n in stage.probes.items():
            probes.add_metric([server, result], n)
    yield answered
    yield probes
    yield prefetch
