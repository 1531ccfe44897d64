"""observe.top: bounded heavy-hitter tables, whatever the traffic."""
from __future__ import annotations

import random
import sys

from nodecache.dns.wire import scan
from nodecache.emulated.client import build
from nodecache.observe.top import SAMPLE, SLOTS, SpaceSaving, Top
from nodecache.topview import render



def _key(name: str, qtype: int) -> bytes:
    """The cache key the query path hands the top tables."""
    return scan(build(name, qtype))[0]

def _size(table: SpaceSaving) -> int:
    """The table's bytes: its dicts, their keys and records."""
    return (sys.getsizeof(table.table) + sys.getsizeof(table.counts)
            + sum(sys.getsizeof(k) + sys.getsizeof(r) + sum(sys.getsizeof(x) for x in r)
                  for k, r in table.table.items()))


def test_a_heavy_hitter_among_a_million_distinct_keys_is_found_first_in_fixed_memory(capsys):
    table = SpaceSaving(SLOTS)
    rng = random.Random(1)
    for i in range(1_000_000):
        table.add("heavy" if rng.random() < 0.05 else f"client-{i}")
        if i == 10_000:
            early = _size(table)
    late = _size(table)
    assert len(table.table) == SLOTS
    (first, rec), *_ = table.ranked(1)
    assert first == "heavy" and rec[0] - rec[1] > 40_000  # its count minus the overestimate: a lower bound
    assert late <= early * 1.1 and late < 64 * 1024
    with capsys.disabled():
        print(f"\n  one table of {SLOTS} slots after 1,000,000 distinct keys: {late / 1024:.0f} KiB "
              f"({early / 1024:.0f} KiB after 10,000)")


def test_counts_halve_every_half_window_and_keys_at_zero_leave():
    now = [0.0]
    top = Top(slots=8, window=10.0, clock=lambda: now[0])
    for _ in range(4):
        top.miss("10.0.0.1", _key("a.example.com", 1), "udp")
    top.miss("10.0.0.2", _key("b.example.com", 1), "udp")
    now[0] = 5.0
    top.miss("10.0.0.3", _key("c.example.com", 1), "udp")  # the decay runs first
    clients = {c["client"]: c["queries"] for c in top.snapshot()["clients"]}
    assert clients == {"10.0.0.1": 2, "10.0.0.3": 1}


def test_a_client_row_counts_hits_failures_walk_steps_and_tcp():
    top = Top()
    q = build("x.example.com.default.svc.cluster.local", 1)
    top.hit("10.0.0.1", _key("svc-1.default.svc.cluster.local", 1), "udp")
    top.miss("10.0.0.1", scan(q)[0], "tcp")
    top.answered("10.0.0.1", scan(q)[0], q[:2] + b"\x81\x83" + q[4:])  # NXDOMAIN
    top.refused("10.0.0.1", scan(q)[0], "udp")
    (row,) = top.snapshot()["clients"]
    assert row["queries"] == SAMPLE + 2 and row["nxdomain"] == 1 and row["walk_steps"] == 1
    assert row["refused"] == 1 and row["tcp"] == 1 and row["hit_ratio"] == round(SAMPLE / (SAMPLE + 2), 3)
    failing = {(f["name"], f["rcode"]) for f in top.snapshot()["failing"]}
    assert failing == {("x.example.com.default.svc.cluster.local.", "NXDOMAIN"),
                       ("x.example.com.default.svc.cluster.local.", "REFUSED")}


def test_the_live_view_fits_a_narrow_terminal():
    top = Top()
    for i in range(30):
        top.miss(f"10.0.{i}.1", _key(f"n{i}.example.com", 1), "udp")
    lines = render(top.snapshot(), "queries", 40, 20)
    assert len(lines) <= 20 and all(len(line) <= 40 for line in lines)
    assert "CLIENT" in lines[2] and "SERVFAIL" not in lines[2]  # the columns that do not fit are left out
    wide = render(top.snapshot(), "queries", 120, 60)
    assert "SERVFAIL" in wide[2] and any(line.startswith("NAME") for line in wide)
