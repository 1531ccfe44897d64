"""The ``dns64`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup
from .stage import Dns64Stage

PLUGIN = Plugin("dns64", setup, lambda cfg, b: Dns64Stage(cfg), "synthesise AAAA from A for IPv6-only clients",
                support="differs", note="the block's hits go through the chain (a per-hit cost)")
