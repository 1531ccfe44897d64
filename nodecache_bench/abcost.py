"""nodecache against a baseline nodecache at once, as one ratio per run
(``nodecache-bench compare --hits 5000 --misses 1000 --baseline PY --at-once``).

Why a mode of its own: on a shared machine the same server's runs vary by
up to 2x from one run to the next (the host steals time, caches are cold
in between), so alternating runs of two builds cannot see a change of 5%
in CPU per query: the alternating table's ratio moves by more than that
between two invocations. Here both builds run at the same time, pinned to
the same core, each with its own dnsperf at the same fixed rate over the
same names (the runs rotating through them as ``hitcost`` does), so
whatever the machine does to one it does to the other within the same
seconds; a run's ratio is CPU per query of this checkout over the
baseline's, both from schedstat. The ratio of two identical builds
(A/A) gives the method's own error: 1.00 ± 0.03 over 6 runs here.
"""
from __future__ import annotations

import contextlib
import itertools
import statistics
import threading
import time
from pathlib import Path

from .cpustat import times
from .hitcost import NameCursor, fill_and_warm, working_set
from .misscost import behind_cluster_dns, dnsperf_at, fresh_names

NAMES = ("nodecache", "nodecache@baseline")


def at_once(rates: list[int], duration: float, rounds: int, tmp: Path, cpus: list[int], free_port, pin,
            server_cls, baseline: str, names: int = 1000, flags: tuple[str, ...] = (),
            bind: str = "127.0.0.1", base_flags: tuple[str, ...] = ()) -> dict:
    """Cache hits over ``names`` names: {rate: {"ratios": [...], "median": r,
    "cpu": {name: [us/q per run]}}}."""
    in_use, capacity = working_set(names)
    load = pin(set(cpus[1:]) or {cpus[0]})
    with _both(tmp, free_port, pin, cpus, server_cls, baseline, capacity, flags, bind, base_flags) as servers:
        for k, s in enumerate(servers):
            fill_and_warm(s.port, in_use, tmp / f"ab-{k}.txt", load)
        cursor = NameCursor(in_use)  # both servers get the same names in each run
        return _runs(servers, rates, duration, rounds, tmp, load, lambda rate: cursor.take(rate, duration))


def at_once_misses(rates: list[int], duration: float, rounds: int, tmp: Path, cpus: list[int], free_port,
                   pin, server_cls, baseline: str, flags: tuple[str, ...] = (), bind: str = "127.0.0.1",
                   base_flags: tuple[str, ...] = ()) -> dict:
    """Cache misses over TCP (names never asked before), as ``at_once``."""
    load = pin(set(cpus[1:]) or {cpus[0]})
    with _both(tmp, free_port, pin, cpus, server_cls, baseline, 0, flags, bind, base_flags) as servers:
        run = itertools.count()
        return _runs(servers, rates, duration, rounds, tmp, load,
                     lambda rate: fresh_names(f"ab{next(run)}r{rate}", rate, duration))


@contextlib.contextmanager
def _both(tmp: Path, free_port, pin, cpus: list[int], server_cls, baseline: str, capacity: int,
          flags: tuple[str, ...], bind: str, base_flags: tuple[str, ...] = ()):
    """The two nodecaches behind one stand-in cluster DNS, started on the first CPU."""
    with behind_cluster_dns(tmp, free_port, pin, set(cpus[1:]) or {cpus[0]}, server_cls, baseline,
                            capacity, flags, bind, base_flags) as (servers, _):
        servers[:] = [s for s in servers if s.name in NAMES]  # the peers are not started
        time.sleep(1.0)
        for s in servers:
            s.start({cpus[0]})
        time.sleep(1.5)
        yield servers


def _runs(servers, rates: list[int], duration: float, rounds: int, tmp: Path, load, names_for) -> dict:
    out: dict = {}
    for rate in rates:
        entry = out[rate] = {"ratios": [], "cpu": {s.name: [] for s in servers}}
        for _ in range(rounds):
            per = _together(servers, names_for(rate), rate, duration, tmp, load)
            for name, cost in per.items():
                entry["cpu"][name].append(round(cost, 1))
            entry["ratios"].append(round(per["nodecache"] / per["nodecache@baseline"], 3))
        entry["median"] = statistics.median(entry["ratios"])
    return out


def _together(servers, asked: list[str], rate: int, duration: float, tmp: Path, load) -> dict[str, float]:
    """One run of both at once: CPU µs per answered query, by server."""
    before = {s.name: times(s.proc.pid)[2] for s in servers}
    answered: dict[str, int] = {}
    failed: list[BaseException] = []

    def drive(k: int, s) -> None:
        try:
            answered[s.name] = dnsperf_at(s.port, asked, tmp / f"ab-{k}.txt", rate, duration, load)["answered"]
        except BaseException as exc:  # re-raised below, in the caller's thread
            failed.append(exc)

    threads = [threading.Thread(target=drive, args=(k, s)) for k, s in enumerate(servers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise failed[0]
    if not all(answered.values()):
        raise RuntimeError(f"a server answered nothing: {answered}")
    return {s.name: (times(s.proc.pid)[2] - before[s.name]) / answered[s.name] * 1e6 for s in servers}


def print_at_once(table: dict, duration: float, what: str) -> None:
    print(f"\nnodecache against the baseline at once ({what}; both on one core, each with its "
          f"own dnsperf -Q at the rate, {duration:g} s runs; CPU per answered query from schedstat; ratio <1: "
          f"this checkout uses less):")
    print(f"  {'rate/s':>7} {'median ratio':>12}  {'ratios':30} nodecache / baseline us/q")
    for rate, e in table.items():
        ratios = ",".join(f"{r:.3f}" for r in e["ratios"])
        cpu = " ".join(f"{a:g}/{b:g}" for a, b in zip(e["cpu"]["nodecache"], e["cpu"]["nodecache@baseline"]))
        print(f"  {rate:>7} {e['median']:>12.3f}  {ratios:30} {cpu}")
