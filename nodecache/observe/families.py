"""Helpers that build prometheus-client metric families from plain
counts, shared by the collector and the plugins' own metrics modules."""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
          "NXRRSET", "NOTAUTH", "NOTZONE")


def rcode_label(rcode: int) -> str:
    return RCODES[rcode] if rcode < len(RCODES) else str(rcode)


def histogram(name, doc, labels, data, bounds):
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



def counter(name, doc, labels, data):
    fam = CounterMetricFamily(name, doc, labels=labels)
    for values, n in sorted(data.items()):
        fam.add_metric(list(values), n)
    return fam
