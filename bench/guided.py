"""Coverage-guided fuzzing of every parser that reads outside bytes, for
longer than ``make test`` does (its test runs each target for a few
thousand inputs).

    python -m bench.guided --seconds 120          # each target
    python -m bench.guided --only query reply --seconds 600

Each target of ``nodecache_lab.fuzz`` runs under atheris (libFuzzer)
in its own process, from the checkout's seed corpus (tests/data/fuzz) into
a fresh corpus directory, for a bounded time. Prints, per target, the
inputs executed, their rate, the coverage reached (libFuzzer's ``cov``:
instrumented edges of nodecache and dnslib code; ``ft``: features) and
the corpus grown; a finding (an exception that is not the parser's
documented error, a property that fails) ends that target with its input
saved and the command fails.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from nodecache_lab import lab_env

SEEDS = Path(__file__).resolve().parent.parent / "tests" / "data" / "fuzz"
_DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)")


def run_target(target: str, seconds: int, seeds: Path, keep: Path | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"nodecache-fuzz-{target}-"))
    try:
        corpus, found = work / "corpus", work / "found"
        corpus.mkdir()
        found.mkdir()
        cmd = [sys.executable, "-m", "nodecache_lab.fuzz", target, f"-max_total_time={seconds}",
               "-max_len=4096", "-print_final_stats=1", f"-artifact_prefix={found}/", str(corpus),
               str(seeds / target)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, env=lab_env())
        stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", proc.stderr, re.M))
        done = _DONE.search(proc.stderr)
        row = {"target": target, "ok": proc.returncode == 0, "execs": int(stats.get("number_of_executed_units", 0)),
               "seconds": int(stats.get("total_time", seconds) or seconds),
               "cov": int(done.group(2)) if done else None, "ft": int(done.group(3)) if done else None,
               "corpus": len(list(corpus.iterdir())), "findings": sorted(p.name for p in found.iterdir())}
        if not row["ok"]:
            row["tail"] = proc.stderr[-2500:]
        if keep is not None:
            shutil.copytree(work, keep / target, dirs_exist_ok=True)
        return row
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from nodecache_lab.fuzz import TARGETS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=60, help="time per target (default 60)")
    ap.add_argument("--only", nargs="*", choices=sorted(TARGETS), help="these targets only (default: all)")
    ap.add_argument("--seeds", type=Path, default=SEEDS, help=f"seed corpus directory (default {SEEDS})")
    ap.add_argument("--keep", type=Path, help="copy each target's grown corpus and findings here")
    args = ap.parse_args(argv)
    if args.seconds < 1:
        ap.error("--seconds must be at least 1")
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed (pip install atheris; Linux x86_64 wheels)", file=sys.stderr)
        return 2
    print(f"{'target':<10} {'executions':>11} {'exec/s':>8} {'cov':>5} {'ft':>6} {'corpus':>7}  findings")
    failed = False
    for target in args.only or sorted(TARGETS):
        row = run_target(target, args.seconds, args.seeds, args.keep)
        rate = row["execs"] / max(row["seconds"], 1)
        print(f"{target:<10} {row['execs']:>11,} {rate:>8,.0f} {row['cov'] or '-':>5} {row['ft'] or '-':>6} "
              f"{row['corpus']:>7}  {', '.join(row['findings']) or 'none'}", flush=True)
        if not row["ok"]:
            failed = True
            print(row["tail"], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
