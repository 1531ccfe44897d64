"""Running a load and reporting it: the machinery behind ``nodecache-bench
run``, shared with ``compare`` (which imports this, never the command line).

``run_load`` checks that the server answers (``preflight``), warms a
``hits`` run's names (``warm_up``), splits the spec over worker processes
and merges their histograms; ``report`` turns a result into the figures
both commands print, with warnings for anything that makes them lie
(a generator behind schedule, REFUSED or SERVFAIL answers).
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import socket
import sys
import time
from dataclasses import asdict, replace

from .loadgen import BEHIND_LIMIT, Engine, Result, Spec

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class BenchError(Exception):
    pass


def _worker(spec_dict: dict, stop, out) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    import uvloop
    spec = Spec(**spec_dict)
    try:
        result = uvloop.run(Engine(spec, stop).run())
        out.put(("ok", result.to_dict()))
    except Exception as exc:  # reported by the parent
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def preflight(spec: Spec, wait: float = 2.0, tries: int = 3) -> None:
    """Fail clearly, after a bounded wait, if the server does not answer."""
    from nodecache.emulated.client import build
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    if spec.proto == "tcp":
        try:
            socket.create_connection((spec.host, spec.port), timeout=wait).close()
        except OSError as exc:
            raise BenchError(f"cannot connect to {spec.host}:{spec.port} over TCP: {exc}") from None
        return
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        for _ in range(tries):
            try:
                sock.sendto(build("preflight.nodecache.invalid", 1), (spec.host, spec.port))
                sock.recv(65535)
                return
            except (TimeoutError, ConnectionRefusedError, OSError):
                continue
    raise BenchError(f"no answer from {spec.host}:{spec.port} over UDP within {wait * tries:g} s")


def warm_up(spec: Spec, wait: float = 5.0, window: int = 50) -> int:
    """Ask every name of a ``hits`` run once, with the run's EDNS, before
    measuring: the scenario promises cache hits, and the first pass would
    otherwise mix cold misses into them. Returns how many were answered;
    bounded by ``wait`` seconds."""
    from nodecache.dns.wire import RD, make_query
    from .scenarios import Hits
    questions = Hits(spec.names or 300).questions
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    answered = 0
    deadline = time.monotonic() + wait
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((spec.host, spec.port))
        for start in range(0, len(questions), window):
            batch = questions[start:start + window]
            for i, question in enumerate(batch):
                sock.send(make_query(start + i, question, RD, spec.edns))
            waiting = set(range(start, start + len(batch)))
            while waiting and time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data = sock.recv(65535)
                except (TimeoutError, OSError):
                    break
                qid = data[0] << 8 | data[1] if len(data) >= 2 else -1
                if qid in waiting:
                    waiting.discard(qid)
                    answered += 1
    return answered


def run_load(spec: Spec, workers: int, progress: bool = False, check: bool = True) -> Result:
    """Run ``spec`` split over ``workers`` processes; returns the merged result.
    A ``hits`` run warms the server's cache first (``warm_up``)."""
    if check:
        preflight(spec)
    if spec.scenario == "hits":
        warm_up(spec)
    ctx = mp.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    share = replace(spec, qps=spec.qps / workers, concurrency=max(1, spec.concurrency // workers),
                    max_queries=max(1, spec.max_queries // workers))
    procs = [ctx.Process(target=_worker, args=(asdict(replace(share, seed=spec.seed + i)), stop, out),
                         daemon=True) for i in range(workers)]
    for p in procs:
        p.start()
    results, errors = [], []
    t0 = time.monotonic()
    interrupted = False
    try:
        while len(results) + len(errors) < workers:
            try:
                kind, payload = out.get(timeout=0.5)
            except Exception:  # queue.Empty
                if progress and sys.stderr.isatty():
                    sys.stderr.write("\r" + _progress(spec, workers, time.monotonic() - t0))
                if not any(p.is_alive() for p in procs) and out.empty():
                    break
                continue
            (results if kind == "ok" else errors).append(payload)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        deadline = time.monotonic() + spec.timeout + 5
        while len(results) + len(errors) < workers and time.monotonic() < deadline:
            try:
                kind, payload = out.get(timeout=0.5)
                (results if kind == "ok" else errors).append(payload)
            except Exception:
                pass
    finally:
        stop.set()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
        if progress and sys.stderr.isatty():
            sys.stderr.write("\r" + " " * 60 + "\r")
    if errors and not results:
        raise BenchError("; ".join(errors))
    merged = Result()
    for r in results:
        merged.merge(Result.from_dict(r))
    merged.interrupted = interrupted
    merged.worker_errors = errors
    return merged


def _progress(spec: Spec, workers: int, elapsed: float) -> str:
    """The progress line: time, share of the run, and (open loop) what was sent by now."""
    unit = "lookups" if spec.scenario == "pod" else "queries"
    sent = f", about {spec.qps * min(elapsed, spec.duration):,.0f} {unit} sent" if spec.mode == "open" else ""
    return (f"  {elapsed:5.1f}s of {spec.duration:g}s ({min(elapsed / spec.duration, 1):.0%}){sent}, "
            f"{workers} worker(s) running...")


SATURATED = 0.01  # unanswered share above which an open-loop run says the server is likely saturated


def report(spec: Spec, result: Result, workers: int) -> dict:
    h = result.hist
    elapsed = result.elapsed or float("nan")
    unit = "lookups" if spec.scenario == "pod" else "queries"
    warnings = []
    if spec.mode == "open" and result.max_behind > BEHIND_LIMIT:
        warnings.append(f"the generator fell {result.max_behind * 1000:.0f} ms behind schedule: it could not "
                        f"drive {spec.qps:g} {unit}/s here (use more --workers or a lower --qps); "
                        f"latencies include that delay")
    if result.sent and result.lost > result.sent * SATURATED and spec.mode == "open":
        warnings.append(f"{result.lost / result.sent:.0%} of the {unit} went unanswered: at {spec.qps:g}/s the "
                        f"server (or this machine) is most likely saturated, not broken; find its limit with "
                        f"--mode closed, then measure below it")
    if getattr(result, "interrupted", False):
        warnings.append("interrupted: partial results")
    for err in getattr(result, "worker_errors", []):
        warnings.append(f"a worker failed: {err}")
    refused, servfail = result.rcodes.get(5, 0), result.rcodes.get(2, 0)
    if refused:
        warnings.append(f"{refused} answers were REFUSED: a per-client or capacity limit of the server "
                        f"(nodecache: -miss-rate-per-client, -max-inflight-per-client, -max-inflight; its "
                        f"nodecache_refused_total says which). A load generator is one client: spread it "
                        f"over source addresses, or raise the limit for the test")
    if servfail:
        warnings.append(f"{servfail} answers were SERVFAIL: the server's upstream failed them")
    out = {
        "server": f"{spec.host}:{spec.port}", "proto": spec.proto, "mode": spec.mode,
        "scenario": spec.scenario, "workers": workers,
        "target_rate": spec.qps if spec.mode == "open" else None,
        "concurrency": spec.concurrency if spec.mode == "closed" else None,
        "duration_s": round(elapsed, 3), "sent": result.sent, "answered": result.answered,
        "lost": result.lost, "late": result.late, "errors": result.errors,
        "rcodes": {RCODES.get(int(k), str(k)): v for k, v in sorted(result.rcodes.items())},
        "qps": round(result.answered / elapsed, 1) if result.elapsed else 0.0,
        "latency_ms": {name: round(h.percentile(p) * 1000, 3) for name, p in
                       (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))},
        "warnings": warnings,
    }
    out["latency_ms"]["max"] = round(h.max_us / 1000, 3)
    out["latency_ms"]["mean"] = round(h.mean() * 1000, 3) if h.total else None
    if spec.scenario == "pod":
        out["lookups"] = result.lookups
        out["lookup_failures"] = result.lookup_failures
        out["lookups_per_s"] = round(result.lookups / elapsed, 1) if result.elapsed else 0.0
    return out
