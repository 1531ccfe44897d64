"""The ``forward`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .stage import ForwardStage
from .metrics import families
from .setup import setup

PLUGIN = Plugin("forward", setup, lambda cfg, b: ForwardStage(cfg, b.retry, b.cork),
                "send misses to upstream servers (UDP/TCP, TLS, HTTPS) over pooled, pipelined channels",
                metrics=families, repeatable=True,
                support="differs", note="UDP first unless force_tcp; no max_idle_conns, source_address, hostnames as TO")
