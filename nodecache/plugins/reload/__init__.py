"""The ``reload`` plugin (README.md beside this file): no stage; the
configuration watcher (``run.configsource``) waits ``interval`` between
looks at the Corefile."""
import random

from ..plugin import Plugin
from .setup import setup

PLUGIN = Plugin("reload", setup, summary="re-read the Corefile when it changes")


def interval(blocks, default: float) -> float:
    """Seconds until the next look: the Corefile's `reload INTERVAL [JITTER]`
    if any of ``blocks`` has it (the smallest; with jitter, so a fleet does
    not reload in step), else ``default`` (-configsync)."""
    reloads = [b.option("reload") for b in blocks if b.has("reload")]
    if not reloads:
        return default
    r = min(reloads, key=lambda x: x.interval)
    return max(1.0, r.interval + random.uniform(-r.jitter, r.jitter))
