"""Queries the kernel dropped before we read them.

A UDP socket whose receive queue is full drops every datagram that
arrives: no log line, no reply, the client waits out its timeout (5 s for
glibc). node-local-dns's liveness stays green meanwhile
(kubernetes/dns#586). The kernel counts those drops per socket, in the
last column of /proc/net/udp and /proc/net/udp6 (the network namespace's
sockets; ours found by inode). Reading the files costs nothing on the
query path (``SO_RXQ_OVFL`` would add a control message to every read) and
is done once a second by ``DropWatch.check``, which keeps each listener's
count (``nodecache_udp_receive_drops_total{listener}``), logs a warning
when drops start (once per burst: a check that finds none ends it) and says
a listener is overflowing when drops grew at each of the last
``OVERFLOW_CHECKS`` checks (readiness reports it; one check without new
drops clears it).
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("nodecache.udp")

PROC_FILES = ("/proc/net/udp", "/proc/net/udp6")
OVERFLOW_CHECKS = 3   # consecutive checks with new drops: overflowing (3 s at the watch's period)
PERIOD = 1.0          # seconds between checks


def parse(text: str) -> dict[int, int]:
    """inode -> drops, from the text of /proc/net/udp or udp6 (header skipped)."""
    out = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 13 and fields[9].isdigit() and fields[-1].isdigit():
            out[int(fields[9])] = int(fields[-1])
    return out


def read(paths=PROC_FILES) -> dict[int, int]:
    out = {}
    for path in paths:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                out.update(parse(f.read()))
        except OSError:  # no IPv6 in this kernel, or no /proc: nothing to count there
            continue
    return out


def inode(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


class DropWatch:
    """Per listener (its label): the kernel's drop count for its UDP socket,
    what grew since the last check, and whether it keeps overflowing."""

    def __init__(self, paths=PROC_FILES):
        self.paths = paths
        self.totals: dict[str, int] = {}     # listener -> drops counted so far (what the metric says)
        self.last: dict[str, tuple[int, int]] = {}  # listener -> (inode, the kernel's count at the last check)
        self.growing: dict[str, int] = {}    # listener -> consecutive checks with new drops

    def check(self, listeners: dict[str, int]) -> None:
        """``listeners``: label -> the UDP socket's file descriptor (of those read now)."""
        counts = read(self.paths)
        for label, fd in listeners.items():
            ino = inode(fd)
            if ino is None or ino not in counts:
                continue
            now = counts[ino]
            before_ino, before = self.last.get(label, (ino, now))
            new = now - before if before_ino == ino and now >= before else 0
            self.last[label] = (ino, now)
            self.totals[label] = self.totals.get(label, 0) + new
            if new:
                if not self.growing.get(label):
                    log.warning("udp receive queue of %s overflowed: %d queries dropped by the kernel "
                                "(nodecache_udp_receive_drops_total; raise the rate this agent can take or "
                                "its socket buffer)", label, new)
                self.growing[label] = self.growing.get(label, 0) + 1
            elif self.growing.get(label):
                log.info("udp receive queue of %s: no more drops (%d in all)", label, self.totals[label])
                self.growing[label] = 0

    def overflowing(self) -> list[str]:
        """Listeners whose queue overflowed at each of the last OVERFLOW_CHECKS checks."""
        return sorted(label for label, n in self.growing.items() if n >= OVERFLOW_CHECKS)
