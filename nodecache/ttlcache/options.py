"""The cache's options, frozen, as the ``cache`` directive gives them
(defaults are CoreDNS's, so a Corefile means the same to both)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheClass:
    capacity: int = 9984       # CoreDNS: 256 shards x 39 items
    max_ttl: int = 3600
    min_ttl: int = 5


@dataclass(frozen=True)
class Prefetch:
    amount: int = 1
    duration: float = 60.0     # seconds; hits must come without a gap this long
    percentage: int = 10       # prefetch when remaining TTL < this % of original


@dataclass(frozen=True)
class ServeStale:
    duration: float = 3600.0   # how long past expiry an entry may still be served
    verify: bool = False       # verify: ask upstream first, stale only on failure


@dataclass(frozen=True)
class CacheConfig:
    zones: tuple[str, ...] = ()  # empty: the server block's zones
    success: CacheClass = CacheClass()
    denial: CacheClass = CacheClass(max_ttl=1800)
    servfail_ttl: float = 5.0    # 0 disables; CoreDNS caps it at 5 minutes
    prefetch: Prefetch | None = None
    serve_stale: ServeStale | None = None
