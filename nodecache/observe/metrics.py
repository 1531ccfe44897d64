"""CoreDNS's metrics, built at scrape time from the agent's plain counters.

Names, labels and buckets follow CoreDNS (and node-cache for
``coredns_nodecache_setup_errors_total``) so existing dashboards and alerts
work. The collector reads whatever ``Runtime`` holds at the moment of the
scrape, so a scrape during a reload or a handoff sees one consistent agent
(the Python loop runs the scrape between two queries).
"""
from __future__ import annotations

import platform
from collections import defaultdict

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector

from .. import __version__
from .stats import DURATION_BUCKETS, SIZE_BUCKETS

RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
          "NXRRSET", "NOTAUTH", "NOTZONE")


def rcode_label(rcode: int) -> str:
    return RCODES[rcode] if rcode < len(RCODES) else str(rcode)


def _histogram(name, doc, labels, data, bounds):
    """data: {label values: (bucket counts list, sum)} -> HistogramMetricFamily."""
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for values, (counts, total) in sorted(data.items()):
        cum, buckets = 0, []
        for bound, n in zip(bounds, counts):
            cum += n
            buckets.append((repr(float(bound)), cum))
        cum += counts[len(bounds)]
        buckets.append(("+Inf", cum))
        fam.add_metric(list(values), buckets, total)
    return fam


class DnsCollector:
    def __init__(self, runtime):
        self.rt = runtime

    def collect(self):
        agent = self.rt.agent
        info = GaugeMetricFamily("coredns_build_info", "A metric with a constant '1' value labeled by "
                                 "version, revision, and goversion from which CoreDNS was built.",
                                 labels=["version", "revision", "goversion"])
        info.add_metric([__version__, "nodecache", f"python{platform.python_version()}"], 1)
        yield info
        panics = CounterMetricFamily("coredns_panics", "A metrics that counts the number of panics.")
        panics.add_metric([], sum(b.panics for b in agent.blocks) + self.rt.panics)
        yield panics
        if agent is not None:
            agent.fold_counters()
            yield from self._requests(agent)
            yield from self._cache(agent)
            yield from self._forward(agent)
            refused = CounterMetricFamily("nodecache_refused", "Queries refused at once because their "
                                          "client's share or the agent's slow-path capacity was full.",
                                          labels=["reason"])
            refused.add_metric(["client_share"], agent.admission.refused_share)
            refused.add_metric(["capacity"], agent.admission.refused_capacity)
            refused.add_metric(["client_rate"], agent.admission.refused_rate)
            refused.add_metric(["host_share"], agent.admission.refused_host)
            yield refused
            yield self._events(agent)
        reload_failed = CounterMetricFamily("coredns_reload_failed", "Counter of the number of failed reload attempts.")
        reload_failed.add_metric([], self.rt.reload_failed)
        yield reload_failed
        yield from self._handoff()

    def _requests(self, agent):
        req, resp, do = defaultdict(int), defaultdict(int), defaultdict(int)
        dur = defaultdict(lambda: [[0] * (len(DURATION_BUCKETS) + 1), 0.0])
        qsize = defaultdict(lambda: [[0] * (len(SIZE_BUCKETS) + 1), 0])
        rsize = defaultdict(lambda: [[0] * (len(SIZE_BUCKETS) + 1), 0])
        for listener in agent.listeners + self.rt.retired_listeners():
            st = listener.stats
            for (zone, proto, t, rcode, dobit, qb, rb, db, plugin), (n, secs, ql, rl) in list(st.counts.items()):
                req[(st.server, zone, "", proto, st.family, t)] += n
                resp[(st.server, zone, "", rcode_label(rcode), plugin)] += n
                if dobit:
                    do[(st.server, "", zone)] += n
                dur[(st.server, zone, "", t)][0][db] += n
                dur[(st.server, zone, "", t)][1] += secs
                qsize[(st.server, zone, "", proto)][0][qb] += n
                qsize[(st.server, zone, "", proto)][1] += ql
                rsize[(st.server, zone, "", proto)][0][rb] += n
                rsize[(st.server, zone, "", proto)][1] += rl
        yield _counter("coredns_dns_requests", "Counter of DNS requests made per zone, protocol and family.",
                       ["server", "zone", "view", "proto", "family", "type"], req)
        yield _counter("coredns_dns_responses", "Counter of response status codes.",
                       ["server", "zone", "view", "rcode", "plugin"], resp)
        yield _counter("coredns_dns_do_requests", "Counter of DNS requests with DO bit set per zone.",
                       ["server", "view", "zone"], do)
        yield _histogram("coredns_dns_request_duration_seconds", "Histogram of the time (in seconds) each "
                         "request took per zone.", ["server", "zone", "view", "type"], dur, DURATION_BUCKETS)
        yield _histogram("coredns_dns_request_size_bytes", "Size of the EDNS0 UDP buffer in bytes (64K for "
                         "TCP) per zone and protocol.", ["server", "zone", "view", "proto"], qsize, SIZE_BUCKETS)
        yield _histogram("coredns_dns_response_size_bytes", "Size of the returned response in bytes.",
                         ["server", "zone", "view", "proto"], rsize, SIZE_BUCKETS)

    def _cache(self, agent):
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
        for block in agent.blocks:
            cache = block.cache
            if cache is None:
                continue
            server, zones = self.rt.block_server(block), ",".join(block.cfg.zones)
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

    def _events(self, agent):
        """Counters an operator needs that CoreDNS has no series for, one
        family with a fixed set of ``event`` labels (docs/observability.md)."""
        listeners = list(agent.listeners) + list(agent.retired)
        fwds = [b.forward_stage.forwarder for b in agent.blocks if b.forward_stage]
        caches = [b.cache_stage for b in agent.blocks if b.cache_stage]
        tcp = [lst.tcp_state for lst in listeners]
        counts = {
            "dropped": sum(lst.path.dropped for lst in listeners),
            "error_reply": sum(lst.path.error_replies for lst in listeners),
            "truncated": sum(lst.path.truncated + lst.path.memo.truncated for lst in listeners),
            "udp_reply_unsent": sum(lst.udp.unsent for lst in listeners if lst.udp is not None),
            "udp_receive_error": sum(getattr(lst.udp, "receive_errors", 0) for lst in listeners
                                     if lst.udp is not None),
            "coalesced": sum(f.coalesced for f in fwds),
            "upstream_resent": sum(f.resent for f in fwds),
            "upstream_retry_round": sum(f.backoffs for f in fwds),
            "upstream_reply_mismatch": sum(f.mismatched for f in fwds),
            "upstream_reply_unmatched": sum(u.pool.unmatched + u.udp.unmatched for f in fwds for u in f.upstreams),
            "upstream_attempt_failed": sum(u.failures for f in fwds for u in f.upstreams),
            "refresh_failed": sum(c.refresh_failures for c in caches),
            "cache_budget_evicted": sum(c.cache.budget_evictions for c in caches),
            "cache_too_big": sum(c.cache.too_big for c in caches),
            "rules_added": self.rt.node.rules_added if self.rt.node is not None else 0,
            "node_repaired_on_event": self.rt.node.event_repairs if self.rt.node is not None else 0,
            "tcp_rejected_max_conns": sum(t.rejected_conns for t in tcp),
            "tcp_rejected_per_client": sum(t.rejected_per_client for t in tcp),
            "tcp_aborted_blocked": sum(t.blocked_aborted for t in tcp),
            "tcp_closed_idle": sum(t.idle_closed for t in tcp),
            "tcp_oversized": sum(t.oversized for t in tcp),
        }
        events = CounterMetricFamily("nodecache_events", "Things that happen to queries and connections "
                                     "that CoreDNS's series do not show.", labels=["event"])
        for event, n in counts.items():
            events.add_metric([event], n)
        return events

    def _forward(self, agent):
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
        for block in agent.blocks:
            stage = block.forward_stage
            if stage is None:
                continue
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
        yield _histogram("coredns_proxy_request_duration_seconds", "Histogram of the time each request took.",
                         ["proxy_name", "to", "rcode"], durations, DURATION_BUCKETS)

    def _handoff(self):
        rt = self.rt
        donor = rt.donor
        out = CounterMetricFamily("nodecache_handoff_given", "Handoffs this process completed as donor.")
        out.add_metric([], donor.handoffs if donor else 0)
        yield out
        cache_given = CounterMetricFamily("nodecache_handoff_cache_given", "Cache-only handoffs this process "
                                          "gave to a heir in another network namespace (another pod).")
        cache_given.add_metric([], donor.cache_given if donor else 0)
        yield cache_given
        refused = CounterMetricFamily("nodecache_handoff_refused", "Handoff attempts this process refused.")
        refused.add_metric([], donor.refused if donor else 0)
        yield refused
        resumed = CounterMetricFamily("nodecache_handoff_resumed",
                                      "Times this process served again because its heir died within "
                                      "the grace period.")
        resumed.add_metric([], rt.resumed)
        yield resumed
        taken = GaugeMetricFamily("nodecache_handoff_received_entries",
                                  "Cache entries received when this process took over (0: cold start).")
        taken.add_metric([], rt.received_entries)
        yield taken
        took = GaugeMetricFamily("nodecache_handoff_takeover_seconds",
                                 "Time from connecting to the donor to READY when this process took over.")
        took.add_metric([], rt.takeover_seconds)
        yield took
        ready = GaugeMetricFamily("nodecache_ready", "1 when this process is ready to serve (see /ready).")
        ready.add_metric([], 0 if rt.unready_reasons() else 1)
        yield ready
        if rt.agent is not None:
            degraded = GaugeMetricFamily("nodecache_zone_degraded", "1 for a server block that cannot "
                                         "answer misses now (every upstream down for 10s, or a loop).",
                                         labels=["zones"])
            bad = rt.degraded()
            for block in rt.agent.blocks:
                zones = " ".join(block.cfg.zones)
                degraded.add_metric([zones], 1 if zones in bad else 0)
            yield degraded


class SetupErrorCollector:
    """node-cache's metric, on -metrics-listen-address."""

    def __init__(self, runtime):
        self.rt = runtime

    def collect(self):
        fam = CounterMetricFamily("coredns_nodecache_setup_errors", "The number of errors during periodic "
                                  "network setup for node-cache", labels=["errortype"])
        for kind, n in sorted(self.rt.node.errors.items()):
            fam.add_metric([kind], n)
        yield fam
        backend = self.rt.node.backend
        if backend is not None:  # which rules backend writes our rules (-rules; auto decides at each reconcile)
            info = GaugeMetricFamily("nodecache_rules_backend", "The rules backend in use: 1 for it.",
                                     labels=["backend"])
            info.add_metric([backend.name], 1)
            yield info


def _counter(name, doc, labels, data):
    fam = CounterMetricFamily(name, doc, labels=labels)
    for values, n in sorted(data.items()):
        fam.add_metric(list(values), n)
    return fam


def registries(runtime) -> tuple[CollectorRegistry, CollectorRegistry]:
    dns = CollectorRegistry()
    dns.register(DnsCollector(runtime))
    dns.register(ProcessCollector(registry=None))
    setup = CollectorRegistry()
    setup.register(SetupErrorCollector(runtime))
    return dns, setup


def exposition(registry: CollectorRegistry) -> tuple[int, str, bytes]:
    return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(registry)
