"""The coverage-guided fuzz targets (nodecache_lab.fuzz): every seed
holds each target's properties in-process, a target does catch a planted
bug (the control), and each runs under atheris for a short bounded count."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from nodecache_lab import fuzz, lab_env

SEEDS = Path(__file__).parent.parent / "data" / "fuzz"
RUNS = {"corefile": 4000, "configmap": 4000}  # the slower targets; the others 20,000


@pytest.mark.parametrize("target", sorted(fuzz.TARGETS))
def test_every_seed_holds_the_targets_properties(target):
    seeds = sorted((SEEDS / target).iterdir())
    assert seeds, f"no seed corpus for {target}"
    for seed in seeds:
        fuzz.TARGETS[target](seed.read_bytes())


def test_the_query_target_catches_a_direct_path_that_forwards_what_the_slow_path_refuses(monkeypatch):
    """Control: a query_from_scan without the refusal check (the policy
    bypass of the security review) fails the target on the CH seed."""
    from nodecache.dns import wire

    def lax(data, scanned):
        key, qend, flags, limit, edns = scanned
        qtype, qclass = data[qend - 4] << 8 | data[qend - 3], data[qend - 2] << 8 | data[qend - 1]
        return wire.Query(data, flags, qend, data[12:qend - 4], qtype, qclass, edns, limit, key)
    monkeypatch.setattr(fuzz, "query_from_scan", lax)
    with pytest.raises(AssertionError):
        fuzz.query((SEEDS / "query" / "q6").read_bytes())  # CH TXT version.bind


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed (Linux x86_64 only)")
@pytest.mark.parametrize("target", sorted(fuzz.TARGETS))
def test_a_short_guided_run_finds_nothing(target, tmp_path):
    runs = RUNS.get(target, 20000)
    proc = subprocess.run([sys.executable, "-m", "nodecache_lab.fuzz", target, f"-runs={runs}",
                           "-max_total_time=30", "-max_len=4096", f"-artifact_prefix={tmp_path}/",
                           str(tmp_path), str(SEEDS / target)],
                          capture_output=True, text=True, timeout=90, env={**lab_env(), "PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DONE" in proc.stderr and " cov: " in proc.stderr


def test_the_query_target_catches_a_fast_path_that_answers_otherwise_than_the_slow_path(monkeypatch):
    """Control: a hit path that sets one flag the chain would not (here AD)
    fails the target on a seed the filled cache answers."""
    fuzz.query(b"")  # builds the target's query path
    path = fuzz._PATH
    block = path.router.blocks[0]
    real = block.front

    def off_by_a_bit(data, scanned, now):
        out = real(data, scanned, now)
        return out[:3] + bytes([out[3] | 0x20]) + out[4:] if out is not None else out
    monkeypatch.setattr(block, "front", off_by_a_bit)
    monkeypatch.setattr(path.memo, "admit", lambda: False)  # every hit through the patched path
    path.memo.clear()  # (a reply memoised by an earlier test would answer before the hit path)
    with pytest.raises(AssertionError):
        fuzz.query((SEEDS / "query" / "q1").read_bytes())
