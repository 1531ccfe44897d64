"""File descriptors: raise the soft limit, and accept loops that survive running out.

Every TCP client, upstream connection and UDP upstream socket is a file
descriptor. The soft RLIMIT_NOFILE is often 1,024 while the hard limit is
far higher; we raise the soft limit to the hard one at start. When the
process still runs out (EMFILE/ENFILE, or the kernel's ENOBUFS/ENOMEM), an
accept loop must not end: it logs (at most once per ``LOG_EVERY`` seconds),
waits a moment for descriptors to be freed, and carries on.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time

log = logging.getLogger("nodecache")
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
BACKOFF = 0.1
LOG_EVERY = 10.0


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; returns (old soft, new soft)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return soft, hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, hard, exc)
    return soft, soft


class AcceptGuard:
    """Wraps ``loop.sock_accept`` for a hand-written accept loop."""

    def __init__(self, what: str):
        self.what = what
        self.failures = 0
        self._logged = 0.0

    async def accept(self, sock):
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES and not isinstance(exc, ConnectionAbortedError):
                    raise
                self.failures += 1
                now = time.monotonic()
                if now - self._logged >= LOG_EVERY:
                    self._logged = now
                    log.error("%s: cannot accept a connection (%s); retrying", self.what, exc.strerror)
                await asyncio.sleep(BACKOFF)
