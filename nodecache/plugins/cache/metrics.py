"""The cache plugin's metrics, CoreDNS's names and labels
(plugin/cache/metrics.go): entries, hits, misses, requests, evictions,
prefetch, drops, served_stale, per server and zones."""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


def families(owned):
    """``owned``: (server label, zones label, CacheStage) of every block with a cache."""
    labels = ["server", "zones", "view"]
    entries = GaugeMetricFamily("coredns_cache_entries", "The number of elements in the cache.",
                                labels=["server", "type", "zones", "view"])
    hits = CounterMetricFamily("coredns_cache_hits", "The count of cache hits.",
                               labels=["server", "type", "zones", "view"])
    evictions = CounterMetricFamily("coredns_cache_evictions", "The count of cache evictions.",
                                    labels=["server", "type", "zones", "view"])
    simple = {name: CounterMetricFamily(f"coredns_cache_{name}", doc, labels=labels) for name, doc in (
        ("misses", "The count of cache misses. Deprecated, derive misses from cache hits/requests counters."),
        ("requests", "The count of cache requests."),
        ("prefetch", "The number of times the cache has prefetched a cached item."),
        ("drops", "The number responses that are not cached, because the reply is malformed."),
        ("served_stale", "The number of requests served from stale cache entries."))}
    for server, zones, stage in owned:
        cache = stage.cache
        success, denial = cache.sizes()
        entries.add_metric([server, "success", zones, ""], success)
        entries.add_metric([server, "denial", zones, ""], denial)
        hits.add_metric([server, "success", zones, ""], cache.hits[0])
        hits.add_metric([server, "denial", zones, ""], cache.hits[1] + cache.hits[2])
        evictions.add_metric([server, "success", zones, ""], cache.evictions[0])
        evictions.add_metric([server, "denial", zones, ""], cache.evictions[1] + cache.evictions[2])
        values = {"misses": cache.misses, "requests": sum(cache.hits) + cache.misses,
                  "prefetch": cache.prefetches, "drops": cache.drops, "served_stale": cache.served_stale}
        for name, fam in simple.items():
            fam.add_metric([server, zones, ""], values[name])
    yield entries
    yield hits
    yield evictions
    yield from simple.values()
