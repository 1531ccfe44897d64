"""The parsed configuration: frozen dataclasses, built once by
``config.plugins`` from the Corefile. Runtime code reads only these; it never
sees Corefile text. Defaults are CoreDNS's, so a Corefile means the same
thing to both.
"""
from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int = 53

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ForwardConfig:
    from_zone: str
    to: tuple[Upstream, ...]
    except_zones: tuple[str, ...] = ()
    force_tcp: bool = False
    prefer_udp: bool = False
    expire: float = 10.0        # recycle upstream connections after this long
    max_fails: int = 2          # consecutive failures before an upstream is down
    health_check: float = 0.5   # probe interval for a down upstream
    policy: str = "random"
    max_concurrent: int = 0     # 0: no limit from the Corefile (see forward.stage)
    attempt_timeout: float = 2.0
    deadline: float = 5.0


LOG_CLASSES = ("success", "denial", "error", "all")


@dataclass(frozen=True)
class LogConfig:
    names: tuple[str, ...] = (".",)
    format: str | None = None   # None: CoreDNS's common format
    classes: frozenset[str] = frozenset({"all"})


@dataclass(frozen=True)
class Health:
    addr: str = ":8080"
    lameduck: float = 0.0   # keep answering (and /health OK) this long after SIGTERM


@dataclass(frozen=True)
class Reload:
    interval: float = 30.0
    jitter: float = 15.0


@dataclass(frozen=True)
class ServerBlock:
    zones: tuple[str, ...]      # lower-case, absolute ("cluster.local.")
    port: int
    binds: tuple[str, ...]      # empty: all addresses
    source: str                 # "file:line" of the block, for messages
    errors: bool = False
    log: LogConfig | None = None
    cache: CacheConfig | None = None
    forward: ForwardConfig | None = None
    prometheus: str | None = None     # listen address of /metrics
    health: Health | None = None
    ready: str | None = None          # listen address of /ready
    reload: Reload | None = None
    loop: bool = False


@dataclass(frozen=True)
class Config:
    blocks: tuple[ServerBlock, ...]
    source: str = "Corefile"
    listeners: tuple[tuple[str, int], ...] = field(default=())  # (address, port), derived
