"""nodecache-bench end to end: its JSON report, its errors, Ctrl-C, and the
side-by-side comparison with a peer server where one is installed."""
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from nodecache.emulated import client

BENCH = [sys.executable, "-m", "nodecache_bench.cli"]


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    up, port = client.free_port(), client.free_port()
    conf = tmp / "Corefile"
    conf.write_text(f".:{port} {{\n cache\n bind 127.0.0.1\n forward . 127.0.0.1:{up}\n}}\n")
    procs = [subprocess.Popen([sys.executable, "-m", "nodecache", "fake-upstream", "--listen", f"127.0.0.1:{up}"],
                              stdout=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, "-m", "nodecache", "run", "-conf", str(conf), "-handoff=false",
                               "-metrics-listen-address", "", "-status-socket", str(tmp / "s")],
                              stdout=subprocess.DEVNULL)]
    time.sleep(1.5)
    yield port
    for p in procs:
        p.terminate()
        p.wait(10)


SCHEMA = {"server": str, "proto": str, "mode": str, "scenario": str, "workers": int, "duration_s": float,
          "sent": int, "answered": int, "lost": int, "late": int, "errors": int, "rcodes": dict,
          "qps": float, "latency_ms": dict, "warnings": list}


def test_json_report_schema(agent):
    out = subprocess.run(BENCH + ["run", "-p", str(agent), "--qps", "2000", "--duration", "2", "--workers", "2",
                                  "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    for key, kind in SCHEMA.items():
        assert isinstance(rep[key], kind), key
    assert set(rep["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max", "mean"}
    assert rep["answered"] == rep["sent"] and rep["lost"] == 0 and 3500 <= rep["sent"] <= 4500
    assert rep["rcodes"] == {"NOERROR": rep["answered"]}


def test_pod_scenario_and_tcp(agent):
    out = subprocess.run(BENCH + ["run", "-p", str(agent), "--qps", "50", "--duration", "2", "--workers", "1",
                                  "--scenario", "pod", "--json"], capture_output=True, text=True, timeout=60)
    rep = json.loads(out.stdout)
    assert rep["lookups"] >= 90 and rep["lookup_failures"] == 0 and rep["rcodes"].get("NXDOMAIN", 0) > 0
    out = subprocess.run(BENCH + ["run", "-p", str(agent), "--concurrency", "16", "--proto", "tcp",
                                  "--duration", "1", "--workers", "1", "--json"], capture_output=True, text=True,
                         timeout=60)
    rep = json.loads(out.stdout)
    assert rep["mode"] == "closed" and rep["answered"] > 1000 and rep["lost"] == 0


def test_rate_beyond_the_generator_is_reported(agent):
    out = subprocess.run(BENCH + ["run", "-p", str(agent), "--qps", "2000000", "--duration", "1",
                                  "--workers", "1", "--json"], capture_output=True, text=True, timeout=60)
    rep = json.loads(out.stdout)
    assert any("could not drive" in w for w in rep["warnings"]), rep


def test_unreachable_server_is_a_clear_error():
    port = client.free_port()
    t0 = time.monotonic()
    out = subprocess.run(BENCH + ["run", "-p", str(port), "--qps", "10", "--duration", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"no answer from 127.0.0.1:{port}" in out.stderr
    assert time.monotonic() - t0 < 15


def test_at_once_without_a_baseline_is_a_clear_error():
    """--at-once compares two nodecaches: without --baseline there is only one."""
    out = subprocess.run(BENCH + ["compare", "--scenarios", "", "--servers", "", "--hits", "5000", "--at-once"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--at-once measures nodecache against --baseline" in out.stderr


def test_ctrl_c_prints_the_partial_report(agent):
    proc = subprocess.Popen(BENCH + ["run", "-p", str(agent), "--qps", "500", "--duration", "60",
                                     "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted: partial results" in out and "answered" in out


def test_compare_with_a_peer():
    peers = [p for p in ("unbound", "dnsmasq") if shutil.which(p)]
    if not peers:
        pytest.skip("neither unbound nor dnsmasq is installed (apt-get install unbound dnsmasq)")
    out = subprocess.run(BENCH + ["compare", "--duration", "1", "--rounds", "1", "--scenarios", "hits",
                                  "--servers", f"nodecache,{peers[0]}", "--json"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)["results"]["hits"]
    for name in ("nodecache", peers[0]):
        assert res[name]["saturation_qps"] > 1000 and res[name]["cpu_us_per_query"] > 0
        assert res[name]["lost"] == 0


def test_plot(agent, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs the optional extra: .venv/bin/pip install -e '.[plot]'")
    png = tmp_path / "latency.png"
    out = subprocess.run(BENCH + ["run", "-p", str(agent), "--qps", "500", "--duration", "1", "--workers", "1",
                                  "--plot", str(png), "--quiet"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


async def test_a_hits_run_warms_the_cache_before_it_measures():
    """Every name of the hits set is asked (and answered) once before the
    measured run: the upstream sees each name once, all before the run."""
    from nodecache_lab.harness import node
    from nodecache_bench.runload import warm_up
    from nodecache_bench.loadgen import Spec
    import asyncio
    async with node(".:{port} {{\n cache\n bind 127.0.0.1\n forward . 127.0.0.1:{up0}\n}}\n") as n:
        spec = Spec("127.0.0.1", n.port, scenario="hits", names=120)
        answered = await asyncio.to_thread(warm_up, spec)
        assert answered == 120 and len({s.name for s in n.up.seen}) == 120 and len(n.up.seen) == 120
        assert sum(len(b.cache) for b in n.agent.blocks if b.cache is not None) == 120


def test_every_run_option_has_help_text():
    import argparse
    from nodecache_bench.cli import add_run_args
    ap = argparse.ArgumentParser()
    add_run_args(ap)
    missing = [a.dest for a in ap._actions if not a.help and a.dest != "help"]
    assert missing == []


@pytest.mark.parametrize("package", ["nodecache_bench", "bench"])
def test_every_bench_module_imports_as_part_of_its_package(package):
    """The shipped generator (nodecache_bench) and the lab (bench/, run
    from the repository root) are packages: a module run as a script, or
    importing a sibling by bare name, breaks (as the abuse bench's abuser
    process once did, silently)."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2]
    mods = sorted(p.stem for p in (root / package).glob("*.py") if p.stem != "__init__")
    code = "import importlib\n" + "".join(f"importlib.import_module('{package}.{m}')\n" for m in mods)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert out.returncode == 0, out.stderr
    assert len(mods) >= 8


def test_the_lab_is_not_installed():
    """bench/ (the lab) is not among the packages the wheel (and so the
    image) is built from; the agent and the shipped generator are."""
    import pathlib
    import tomllib
    from setuptools import find_packages
    root = pathlib.Path(__file__).resolve().parents[2]
    include = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = set(find_packages(str(root), include=include))
    assert {"nodecache", "nodecache.server", "nodecache.plugins.cache", "nodecache_bench"} <= packages
    assert not any(p == "bench" or p.startswith(("bench.", "tests")) for p in packages)


def test_the_abuse_bench_runs_its_abuser_as_a_module():
    import asyncio
    from bench.abuse import _abuser_process
    out = asyncio.run(_abuser_process("idle", client.free_port(), 0.1))
    assert out == "nothing"


@pytest.mark.parametrize("retry", [True, False])
def test_a_short_soak_loses_and_fails_nothing_through_every_kind_of_churn(retry):
    """bench/soak.py for 24 s with a roll, a handoff and a reload each at
    least once: 0 lost, 0 failed (exit 0), every sample has the agent's
    figures, and the hostile client was refused. Control: with the
    forwarder's retries off the rolls fail queries and the soak says so."""
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--minutes", "0.4", "--rate", "600",
                           "--hostile-rate", "1500", "--roll", "6", "--handoff", "9", "--reload", "7",
                           "--sample", "4", *(() if retry else ("--no-forward-retry",))],
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout
    if not retry:
        assert proc.returncode == 1 and "failed 0;" not in out, out
        return
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "lost 0, failed 0" in out
    events = next(line for line in out.splitlines() if line.startswith("events:"))
    rolls, handoffs, reloads = (int(w) for w in events.split()[1::2])
    assert rolls >= 2 and handoffs >= 1 and reloads >= 2, events
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert len(rows) >= 5 and all(int(r[3]) > 0 and int(r[5]) > 0 for r in rows)  # fds, entries seen
    hostile = next(line for line in out.splitlines() if line.startswith("queries from pods"))
    assert int(hostile.split(", ")[-1].split()[0]) > 0  # REFUSED for the hostile client


def test_the_pod_scenario_keeps_samples_for_the_plots_time_panel(agent):
    """--plot's time panel was empty for the pod scenario: lookups kept no samples."""
    from nodecache_bench.loadgen import Spec
    from nodecache_bench.runload import run_load
    result = run_load(Spec("127.0.0.1", agent, qps=50, duration=1.0, scenario="pod", sample_every=1), 1)
    assert result.lookups >= 40 and len(result.samples) >= 40
    assert all(t >= 0 and latency > 0 for t, latency in result.samples)


def test_the_progress_line_says_how_far_the_run_is():
    from nodecache_bench.loadgen import Spec
    from nodecache_bench.runload import _progress
    line = _progress(Spec("127.0.0.1", 53, qps=1000, duration=10.0, mode="open"), 2, 2.5)
    assert "25%" in line and "about 2,500 queries sent" in line
