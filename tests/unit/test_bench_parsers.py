"""What the comparison benchmark reads from its tools' output."""
from pathlib import Path

from nodecache_bench.hitcost import rotated, strace_total

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
