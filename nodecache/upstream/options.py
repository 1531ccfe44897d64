"""The forwarder's options, frozen, as the ``forward`` directive gives
them (defaults are CoreDNS's)."""
from __future__ import annotations

from dataclasses import dataclass


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
