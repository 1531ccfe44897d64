"""Query mixes for the load generator. Each scenario yields question bytes
(name + type + class); ``pod`` yields whole lookups (see ``pod_plan``)."""
from __future__ import annotations

import bisect
import itertools
import random
from pathlib import Path

from nodecache.dns.wire import question_bytes

SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")
TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33,
         "NAPTR": 35, "DS": 43, "DNSKEY": 48, "HTTPS": 65, "ANY": 255, "CAA": 257}


def cluster_names(n: int) -> list[str]:
    ns = ("default", "other", "kube-system")
    return [f"svc-{i % 100}.{ns[i // 100 % 3]}.svc.cluster.local" for i in range(n)]


class Hits:
    """A fixed set of names, round robin: after the first pass every query is a cache hit."""

    def __init__(self, names: int = 300, seed: int = 0):
        self.questions = [question_bytes(n, 1) for n in cluster_names(min(names, 300))]
        self._it = itertools.cycle(self.questions)

    def __next__(self) -> bytes:
        return next(self._it)


class Zipf:
    """N names, the k-th most popular asked with weight 1/k^s (a realistic cache workload)."""

    def __init__(self, names: int = 10000, s: float = 1.0, seed: int = 0):
        self.rng = random.Random(seed)
        self.questions = [question_bytes(f"svc-{i}.default.svc.cluster.local", 1) for i in range(names)]
        weights = [1 / (k + 1) ** s for k in range(names)]
        total = sum(weights)
        self.cdf = list(itertools.accumulate(w / total for w in weights))

    def __next__(self) -> bytes:
        return self.questions[min(bisect.bisect_left(self.cdf, self.rng.random()), len(self.cdf) - 1)]


class NxDomain:
    """Unique random names: every query misses the cache and is NXDOMAIN upstream."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def __next__(self) -> bytes:
        return question_bytes(f"nx{self.rng.getrandbits(48):x}.default.svc.cluster.local", 1)


class QueryFile:
    """dnsperf's format: one "NAME TYPE" per line, '#' comments; replayed in a loop."""

    def __init__(self, path: str):
        self.questions = []
        for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            qtype = parts[1].upper() if len(parts) > 1 else "A"
            if qtype not in TYPES and not qtype.startswith("TYPE"):
                raise ValueError(f"{path}:{lineno}: unknown type {qtype!r}")
            try:
                self.questions.append(question_bytes(parts[0], TYPES.get(qtype) or int(qtype[4:])))
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from None
        if not self.questions:
            raise ValueError(f"{path}: no queries")
        self._it = itertools.cycle(self.questions)

    def __next__(self) -> bytes:
        return next(self._it)


def pod_plan(name: str, search: tuple[str, ...] = SEARCH, ndots: int = 5) -> list[str]:
    """The names glibc's res_search tries, in order (resolv.conf(5)): a name
    ending in a dot is only tried as is; one with at least ``ndots`` dots is
    tried as is first, then with each search domain; otherwise each search
    domain first, then as is."""
    if name.endswith("."):
        return [name]
    expanded = [f"{name}.{domain}." for domain in search]
    if name.count(".") >= ndots:
        return [f"{name}."] + expanded
    return expanded + [f"{name}."]


class PodLookups:
    """What pods look up: short service names, cross-namespace names, fully
    qualified names, and external names, each expanded by pod_plan."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.kinds = [
            (0.45, lambda: f"svc-{self.rng.randrange(100)}"),                       # same namespace
            (0.25, lambda: f"svc-{self.rng.randrange(100)}.other"),                 # other namespace
            (0.10, lambda: f"svc-{self.rng.randrange(100)}.other.svc.cluster.local"),
            (0.20, lambda: f"api{self.rng.randrange(50)}.example.com"),           # outside the cluster
        ]

    def __next__(self) -> str:
        r = self.rng.random()
        for weight, make in self.kinds:
            if r < weight:
                return make()
            r -= weight
        return self.kinds[-1][1]()


def make(name: str, names: int = 0, query_file: str = "", seed: int = 0):
    if name == "hits":
        return Hits(names or 300, seed)
    if name == "zipf":
        return Zipf(names or 10000, seed=seed)
    if name == "nxdomain":
        return NxDomain(seed)
    if name == "pod":
        return PodLookups(seed)
    if name == "file":
        return QueryFile(query_file)
    raise ValueError(f"unknown scenario {name!r}")
