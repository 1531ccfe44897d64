"""A small HDR-style latency histogram: fixed relative precision, mergeable.

Values (seconds) are recorded in microseconds into buckets whose width is
1/128 of their power of two, so any percentile is exact to within 1% of
its value, from 1 µs to hours, in a few hundred integers. Recording is an
integer bit-length and a dict increment; histograms from worker processes
merge by adding counts.
"""
from __future__ import annotations

SUB_BITS = 7  # 128 sub-buckets per power of two: < 1% error


def _index(us: int) -> int:
    if us < (1 << SUB_BITS):
        return us
    shift = us.bit_length() - SUB_BITS - 1
    return ((shift + 1) << SUB_BITS) + (us >> shift) - (1 << SUB_BITS)


def _value(index: int) -> int:
    """The highest value (µs) a bucket holds."""
    if index < (1 << SUB_BITS):
        return index
    shift = (index >> SUB_BITS) - 1
    mantissa = (index & ((1 << SUB_BITS) - 1)) + (1 << SUB_BITS)
    return ((mantissa + 1) << shift) - 1


class Histogram:
    __slots__ = ("counts", "total", "max_us", "sum_us")

    def __init__(self):
        self.counts: dict[int, int] = {}
        self.total = 0
        self.max_us = 0
        self.sum_us = 0

    def record(self, seconds: float) -> None:
        us = int(seconds * 1e6)
        if us < 0:
            us = 0
        i = _index(us)
        self.counts[i] = self.counts.get(i, 0) + 1
        self.total += 1
        self.sum_us += us
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: "Histogram") -> None:
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n
        self.total += other.total
        self.sum_us += other.sum_us
        self.max_us = max(self.max_us, other.max_us)

    def percentile(self, p: float) -> float:
        """Seconds at or below which ``p`` percent of the values lie."""
        if not self.total:
            return float("nan")
        rank = max(1, int(round(p / 100 * self.total + 0.4999999)))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(_value(i), self.max_us) / 1e6
        return self.max_us / 1e6

    def mean(self) -> float:
        return self.sum_us / self.total / 1e6 if self.total else float("nan")

    def to_dict(self) -> dict:
        return {"counts": {str(k): v for k, v in self.counts.items()}, "total": self.total,
                "max_us": self.max_us, "sum_us": self.sum_us}

    @classmethod
    def from_dict(cls, d: dict) -> "Histogram":
        h = cls()
        h.counts = {int(k): v for k, v in d["counts"].items()}
        h.total, h.max_us, h.sum_us = d["total"], d["max_us"], d["sum_us"]
        return h
