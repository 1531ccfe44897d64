"""Per-listener request counters, kept as plain dicts of integers.

The hot path does one dict lookup per query and nothing else: under a
tuple of the labels CoreDNS uses (zone, proto, type, rcode, DO, the size
and duration buckets, the plugin that answered) it keeps the count and
the running sums a histogram needs. The metrics collector turns these into CoreDNS's
series at scrape time (``run.metrics``); no prometheus-client object
is touched while serving.

Buckets are CoreDNS's: durations ``0.00025 * 2**k`` seconds (k = 0..15),
sizes 0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16000, 32000,
48000, 64000 bytes. Sizes are bucketed through a lookup table (one list
index) so the count keys stay few.
"""
from __future__ import annotations

from bisect import bisect_left

DURATION_BUCKETS = tuple(0.00025 * 2 ** k for k in range(16))
SIZE_BUCKETS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16000, 32000, 48000, 64000)
_SIZE_INDEX = [bisect_left(SIZE_BUCKETS, n) for n in range(65536 + 12)]
_FIRST = DURATION_BUCKETS[0]
# CoreDNS reports the common types by name and everything else as "other"
_DNS_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
              33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS", 46: "RRSIG", 47: "NSEC",
              48: "DNSKEY", 50: "NSEC3", 52: "TLSA", 64: "SVCB", 65: "HTTPS", 99: "SPF",
              251: "IXFR", 252: "AXFR", 255: "ANY", 257: "CAA"}


class ListenerStats:
    __slots__ = ("server", "family", "counts")

    def __init__(self, server: str, family: str):
        self.server = server      # "dns://IP:PORT", CoreDNS's server label
        self.family = family      # "1" IPv4, "2" IPv6
        # (zone, proto, type label, rcode, do, size buckets, duration bucket, plugin)
        #   -> [count, seconds, request bytes, response bytes]
        self.counts: dict[tuple, list] = {}

    def series(self, zone: str, proto: str, qtype: int, rcode: int, do: int, qlen: int, rlen: int,
               seconds: float, plugin: str) -> list:
        """The accumulator [count, seconds, request bytes, response bytes]
        of the series these labels fall in."""
        dur = 0 if seconds <= _FIRST else bisect_left(DURATION_BUCKETS, seconds)
        # keyed by the exported type label, not the raw QTYPE: the number of
        # series (and a scrape's cost) stays bounded whatever clients send
        key = (zone, proto, _DNS_TYPES.get(qtype, "other"), rcode, do, _SIZE_INDEX[qlen], _SIZE_INDEX[rlen],
               dur, plugin)
        acc = self.counts.get(key)
        if acc is None:
            acc = self.counts[key] = [0, 0.0, 0, 0]
        return acc

    def record(self, zone: str, proto: str, qtype: int, rcode: int, do: int, qlen: int, rlen: int,
               seconds: float, plugin: str) -> None:
        acc = self.series(zone, proto, qtype, rcode, do, qlen, rlen, seconds, plugin)
        acc[0] += 1
        acc[1] += seconds
        acc[2] += qlen
        acc[3] += rlen
