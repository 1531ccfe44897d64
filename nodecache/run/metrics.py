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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from .. import __version__
from ..plugins import registry
from ..observe.families import counter, histogram, rcode_label
from ..observe.stats import DURATION_BUCKETS, SIZE_BUCKETS

# nodecache_events_total's labels, all always exported (0 until it happens)
EVENTS = ("dropped", "error_reply", "truncated", "udp_reply_unsent", "udp_receive_error", "udp_poll",
          "udp_poll_empty", "udp_poll_budget_spent", "coalesced",
          "upstream_resent", "upstream_retry_round", "upstream_reply_mismatch", "upstream_reply_unmatched",
          "upstream_attempt_failed", "refresh_failed", "cache_budget_evicted", "cache_too_big", "rules_added",
          "node_repaired_on_event", "tcp_rejected_max_conns", "tcp_rejected_per_client", "tcp_queued_per_client",
          "tcp_aborted_blocked", "tcp_closed_idle", "tcp_oversized")

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
            yield from self._plugins(agent)
            refused = CounterMetricFamily("nodecache_refused", "Queries refused at once because their "
                                          "client's share or rate, or the agent's slow-path capacity, was "
                                          "full (host_*: every host-network socket together).",
                                          labels=["reason"])
            for reason, n in agent.admission.refusals().items():
                refused.add_metric([reason], n)
            yield refused
            yield self._events(agent)
            drops = CounterMetricFamily("nodecache_udp_receive_drops", "Queries the kernel dropped because a "
                                        "listener's UDP receive queue was full (/proc/net/udp's drops column, "
                                        "read once a second).", labels=["listener"])
            for listener, n in sorted(self.rt.drops.totals.items()):
                drops.add_metric([listener], n)
            yield drops
            if self.rt.top_clients:
                yield self._top_clients(agent)
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
        yield counter("coredns_dns_requests", "Counter of DNS requests made per zone, protocol and family.",
                       ["server", "zone", "view", "proto", "family", "type"], req)
        yield counter("coredns_dns_responses", "Counter of response status codes.",
                       ["server", "zone", "view", "rcode", "plugin"], resp)
        yield counter("coredns_dns_do_requests", "Counter of DNS requests with DO bit set per zone.",
                       ["server", "view", "zone"], do)
        yield histogram("coredns_dns_request_duration_seconds", "Histogram of the time (in seconds) each "
                         "request took per zone.", ["server", "zone", "view", "type"], dur, DURATION_BUCKETS)
        yield histogram("coredns_dns_request_size_bytes", "Size of the EDNS0 UDP buffer in bytes (64K for "
                         "TCP) per zone and protocol.", ["server", "zone", "view", "proto"], qsize, SIZE_BUCKETS)
        yield histogram("coredns_dns_response_size_bytes", "Size of the returned response in bytes.",
                         ["server", "zone", "view", "proto"], rsize, SIZE_BUCKETS)

    def _top_clients(self, agent):
        """-metrics-top-clients: the N busiest clients' query counts over the
        top tables' window (estimates that decay: a gauge), at most N series."""
        top = GaugeMetricFamily("nodecache_top_client_queries", "Queries of the busiest clients over the last "
                                "minute or so (nodecache top's estimates; -metrics-top-clients series at most).",
                                labels=["client"])
        for row in agent.top.snapshot(self.rt.top_clients)["clients"]:
            top.add_metric([row["client"]], row["queries"])
        return top

    def _plugins(self, agent):
        """Each plugin's own families (``plugins/<name>/metrics.py``), given
        the stages it owns in every block."""
        for plugin in registry.PLUGINS.values():
            if plugin.metrics is None:
                continue
            owned = [(self.rt.block_server(b), ",".join(b.cfg.zones), st)
                     for b in agent.blocks for st in b.stages if st.name == plugin.name]
            yield from plugin.metrics(owned)

    def _events(self, agent):
        """Counters an operator needs that CoreDNS has no series for, one
        family with a fixed set of ``event`` labels (docs/observability.md);
        each owner counts its own (``events()``)."""
        counts = dict.fromkeys(EVENTS, 0)
        sources = list(agent.event_sources())
        if self.rt.node is not None:
            sources.append(self.rt.node)
        for source in sources:
            for event, n in source.events().items():
                counts[event] += n
        events = CounterMetricFamily("nodecache_events", "Things that happen to queries and connections "
                                     "that CoreDNS's series do not show.", labels=["event"])
        for event, n in counts.items():
            events.add_metric([event], n)
        return events

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


def registries(runtime) -> tuple[CollectorRegistry, CollectorRegistry]:
    dns = CollectorRegistry()
    dns.register(DnsCollector(runtime))
    dns.register(ProcessCollector(registry=None))
    setup = CollectorRegistry()
    setup.register(SetupErrorCollector(runtime))
    return dns, setup


def exposition(registry: CollectorRegistry) -> tuple[int, str, bytes]:
    return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(registry)
