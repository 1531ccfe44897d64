"""What a server process costs, read from outside it: CPU time from /proc
(``times``) and system calls per answered query from ``strace -f -c``
(``syscalls_per_query``, ``strace_total``). Shared by the hit, miss and
at-once comparisons; no load of its own (the caller runs it)."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path


def times(pid: int) -> tuple[float, float, float]:
    """(user ticks, system ticks, CPU seconds) of process ``pid``: the tick
    counts of /proc/PID/stat (sampled at CLK_TCK, so only their ratio is
    used) and the scheduler's exact runtime of all its threads, summed from
    /proc/PID/task/*/schedstat (nanoseconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    runtime = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            runtime += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return int(fields[11]), int(fields[12]), runtime / 1e9


def split(before: tuple, after: tuple, answered: int) -> dict:
    """CPU µs per answered query between two ``times``, and its user and
    system parts (the exact total divided by the tick samples' ratio)."""
    (u0, s0, c0), (u1, s1, c1) = before, after
    if not answered:
        return {"cpu": None, "user": None, "sys": None}
    per = (c1 - c0) / answered * 1e6
    ticks = (u1 - u0) + (s1 - s0)
    share = (u1 - u0) / ticks if ticks else None
    return {"cpu": round(per, 1), "user": None if share is None else round(per * share, 1),
            "sys": None if share is None else round(per * (1 - share), 1)}


def syscalls_per_query(pid: int, load, tmp: Path) -> float | None:
    """System calls of every thread of ``pid`` per answered query while
    ``load()`` runs (it returns the queries answered), traced with
    ``strace -f -c``; None without strace."""
    strace = shutil.which("strace")
    if not strace:
        return None
    summary = tmp / f"strace-{pid}.txt"
    tracer = subprocess.Popen([strace, "-f", "-c", "-o", str(summary), "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached
    try:
        answered = load()
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(20)
    calls = strace_total(summary.read_text())
    return round(calls / answered, 2) if calls is not None and answered else None


def strace_total(summary: str) -> int | None:
    """The number of calls on the ``total`` line of an ``strace -c`` summary."""
    for line in summary.splitlines():
        fields = line.split()
        if fields and fields[-1] == "total" and len(fields) >= 4 and fields[3].isdigit():
            return int(fields[3])
    return None
