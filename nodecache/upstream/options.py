"""The forwarder's options, frozen, as the ``forward`` directive gives
them (defaults are CoreDNS's)."""
from __future__ import annotations

from dataclasses import dataclass

DNS, TLS, HTTPS = "dns", "tls", "https"   # an upstream's transport (TO's scheme)


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int = 53
    proto: str = DNS         # dns (UDP first, TCP), tls (RFC 7858), https (RFC 8484)
    server_name: str = ""    # tls://IP%NAME: the name its certificate must carry
    path: str = "/dns-query"  # https: the DoH endpoint

    @property
    def encrypted(self) -> bool:
        """Queries go over a TLS stream only (no UDP, no plain TCP)."""
        return self.proto != DNS

    def __str__(self) -> str:
        addr = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return addr if self.proto == DNS else f"{self.proto}://{addr}"


@dataclass(frozen=True)
class TlsFiles:
    """``tls [CERT KEY] [CA]``: CoreDNS's meaning. No CA: the system's roots;
    CERT and KEY: the client certificate the upstream may ask for."""
    cert: str = ""
    key: str = ""
    ca: str = ""


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
    health_rd: bool = True      # the probe asks recursion (health_check ... no_rec: not)
    health_domain: str = "."    # the probe's question: DOMAIN IN NS (health_check ... domain FQDN)
    policy: str = "random"
    max_concurrent: int = 0     # 0: no limit from the Corefile (see forward.stage)
    attempt_timeout: float = 2.0
    deadline: float = 5.0
    tls: TlsFiles = TlsFiles()
    tls_servername: str = ""    # the name every TLS upstream's certificate must carry
    doh_method: str = "POST"
    next_rcodes: tuple[int, ...] = ()      # these rcodes go on to the block's next forward
    next_on_nodata: bool = False           # so does NOERROR with no answer
    failover_rcodes: tuple[int, ...] = ()  # these rcodes try the next upstream
    failfast_all_unhealthy_upstreams: bool = False

    def server_name(self, up: Upstream) -> str:
        """The name ``up``'s certificate is checked against: its own
        (``tls://IP%NAME``), ``tls_servername``, else its address (which
        must then be in the certificate's IP SANs)."""
        return up.server_name or self.tls_servername or up.host
