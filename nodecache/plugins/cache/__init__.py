"""The ``cache`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .stage import CacheStage
from .metrics import families
from .setup import setup

PLUGIN = Plugin("cache", setup, lambda cfg, b: CacheStage(cfg, b.zones, b.clock, b.budget),
                "answer from a TTL cache; fill it from the rest of the chain",
                metrics=families,
                support="differs", note="second-chance eviction, one byte budget for all caches, stale answers with TTL 30")
