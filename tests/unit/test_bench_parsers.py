"""What the comparison benchmark reads from its tools' output."""
from pathlib import Path

from nodecache_bench.cpustat import split, strace_total
from nodecache_bench.hitcost import NameCursor, rotated

DATA = Path(__file__).parent.parent / "data"


def test_strace_total_reads_the_calls_of_the_total_line():
    assert strace_total((DATA / "strace-summary.txt").read_text()) == 20002
    without_errors = "100.00    0.201530          10     20000           total\n"
    assert strace_total(without_errors) == 20000


def test_strace_total_is_none_for_a_summary_without_one():
    assert strace_total("") is None
    assert strace_total("strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted\n") is None


def test_runs_go_on_through_the_names_where_the_last_one_stopped():
    names = [f"h{i}" for i in range(5)]
    assert rotated(names, 0) == names
    assert rotated(names, 3) == ["h3", "h4", "h0", "h1", "h2"]
    assert sorted(rotated(names, 4)) == sorted(names)
    cursor = NameCursor(names)
    assert cursor.take(1, 2) == names  # a run of 2 queries: the next starts at the third name
    assert cursor.current() == ["h2", "h3", "h4", "h0", "h1"]
    cursor.take(2, 2)
    assert cursor.current() == ["h1", "h2", "h3", "h4", "h0"]  # past the end: round again


def test_cpu_per_query_is_split_by_the_tick_samples_ratio():
    # 3 ms of CPU over 100 queries; 30 user ticks and 10 system ticks
    cost = split((100, 50, 1.000), (130, 60, 1.003), 100)
    assert cost == {"cpu": 30.0, "user": 22.5, "sys": 7.5}
    assert split((0, 0, 1.0), (0, 0, 1.001), 10)["user"] is None  # no tick in between: no split
    assert split((0, 0, 1.0), (1, 0, 1.001), 0) == {"cpu": None, "user": None, "sys": None}
