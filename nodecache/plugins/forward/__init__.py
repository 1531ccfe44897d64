"""The ``forward`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .stage import ForwardStage
from .metrics import families
from .setup import setup

PLUGIN = Plugin("forward", setup, lambda cfg, b: ForwardStage(cfg, b.retry, b.cork),
                "send misses to upstream servers over pooled, pipelined channels",
                metrics=families,
                support="differs", note="no tls, next, failfast_all_unhealthy_upstreams or failover; UDP first unless force_tcp")
