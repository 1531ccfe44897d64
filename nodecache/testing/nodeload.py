"""What happens to an emulated node (``testing.emunode``) while it is
measured: a pod resolving with glibc back to back, and the cluster DNS
replicas rolled and killed. Shared by the e2e tests and bench/datapaths.py."""
from __future__ import annotations

import signal
import subprocess
import threading
import time

from .emunode import EmulatedNode


class Lookups:
    """glibc lookups from the pod, back to back in ``workers`` threads, each
    a distinct name (misses and hits). Several workers, because a lookup
    whose query dies with a killed agent holds its thread for glibc's 5 s
    timeout: the others go on sampling what happens meanwhile."""

    def __init__(self, n: EmulatedNode, seconds: float, workers: int = 3):
        self.n, self.seconds = n, seconds
        self.results: list[tuple[str, int]] = []
        self.seconds_each: list[float] = []  # how long each lookup took (a glibc retry shows here)
        self.started: list[float] = []       # when each began (time.monotonic)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(k, workers), daemon=True) for k in range(workers)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _run(self, k: int, workers: int) -> None:
        end, i = time.monotonic() + self.seconds, k
        time.sleep(0.02 * k)  # spread the workers over a lookup's duration
        while time.monotonic() < end:
            name = f"svc-{i % 100}.default"
            t0 = time.monotonic()
            try:
                code = self.n.getent(name, timeout=20).returncode
            except subprocess.TimeoutExpired:
                code = -1  # no answer at all
            with self._lock:
                self.seconds_each.append(time.monotonic() - t0)
                self.started.append(t0)
                self.results.append((name, code))
            i += workers
            time.sleep(0.05)

    @property
    def failed(self) -> list:
        return [r for r in self.results if r[1] != 0]

    @property
    def slow(self) -> list[float]:
        """Lookups that took over a second (a resolver timeout and retry)."""
        return [t for t in self.seconds_each if t > 1.0]


def churn(n: EmulatedNode) -> None:
    """The upstream events, about 8 s in all: a rolling update one replica at
    a time, one OOM-killed while kube-proxy still sends to it, then no
    endpoint answering for a second."""
    time.sleep(1.0)
    for i in (0, 1):
        n.stop_replica(i, signal.SIGTERM)
        time.sleep(0.3)
        n.start_replica(i)
        time.sleep(0.7)
    n.stop_replica(0, signal.SIGKILL)
    time.sleep(1.0)
    n.start_replica(0)
    time.sleep(0.5)
    n.stop_replica(0, signal.SIGKILL)
    n.stop_replica(1, signal.SIGKILL)
    time.sleep(1.0)
    n.start_replica(0, wait=False)
    n.start_replica(1)
