"""The cache file (``-cache-file``): the cache saved at exit and loaded
at start, for restarts without a handoff (a node reboot, systemd). A file
that is missing, unreadable or of another version means an empty cache,
never a failed start; a full disk at exit loses the cache, nothing else."""
from __future__ import annotations

import logging
import time

from ..ttlcache import snapshot
from ..server.agent import Agent

log = logging.getLogger("nodecache")


def load_cache_file(agent: Agent, path: str) -> None:
    try:
        entries = snapshot.load(path, agent.clock(), time.time())
    except FileNotFoundError:
        return
    except (OSError, snapshot.SnapshotError) as exc:
        log.warning("cache file %s unusable (%s); starting with an empty cache", path, exc)
        return
    log.info("loaded %d cache entries from %s", agent.restore(entries), path)


def save_cache_file(agent: Agent, path: str) -> None:
    try:
        size = snapshot.save(path, agent.snapshot_blocks(), agent.clock(), time.time())
    except OSError as exc:  # full disk, read-only: the cache is lost, nothing else
        log.error("could not save the cache to %s: %s", path, exc)
        return
    log.info("saved the cache to %s (%d bytes)", path, size)
