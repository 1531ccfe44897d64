"""Log lines a client can cause, at most one per reason per interval.

A query is cheap to send and a log line is not: a client that can make the
agent log once per query can fill the node's disk and the log pipeline
(101 queries made 2,407 lines of tracebacks). So every line whose cause is
a query goes through a ``Throttle`` owned by whoever logs it: the first
line of a reason is written at once, the next ones within ``interval``
only counted, and the first line after the interval says how many were
held back. Reasons are our own words (never client data), so the table
stays small; no timer runs.
"""
from __future__ import annotations

import logging
import time

INTERVAL = 60.0


class Throttle:
    def __init__(self, logger: logging.Logger, interval: float = INTERVAL, clock=time.monotonic):
        self.logger, self.interval, self.clock = logger, interval, clock
        self.windows: dict[str, list] = {}  # reason -> [start of its window, lines held back]

    def log(self, level: int, reason: str, msg: str, *args, exc_info=None) -> bool:
        """Log ``msg`` for ``reason`` unless one was written within the
        interval (then count it). Returns whether it was written."""
        now = self.clock()
        window = self.windows.get(reason)
        if window is not None and now - window[0] < self.interval:
            window[1] += 1
            return False
        held = window[1] if window is not None else 0
        self.windows[reason] = [now, 0]
        if held:
            msg += f" ({held} more like it in the last {now - window[0]:.0f} s were not logged)"
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def error(self, reason: str, msg: str, *args, exc_info=None) -> bool:
        return self.log(logging.ERROR, reason, msg, *args, exc_info=exc_info)

    def warning(self, reason: str, msg: str, *args) -> bool:
        return self.log(logging.WARNING, reason, msg, *args)
