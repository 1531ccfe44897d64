"""CPU per miss over DNS over TLS and HTTPS, and over TCP for scale, in one
run (bench/results.py's section; each table is `nodecache-bench compare
--misses 1000 --upstream PROTO`).

    .venv/bin/python -m bench.tlsmisses [--rate 1000] [--rounds 3] [--duration 5]
"""
from __future__ import annotations

import argparse
import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", default="1000")
    ap.add_argument("--rounds", default="3")
    ap.add_argument("--duration", default="5")
    args = ap.parse_args(argv)
    for proto in ("tls", "https", "tcp"):
        out = subprocess.run([sys.executable, "-m", "nodecache_bench.cli", "compare", "--scenarios", "",
                              "--servers", "", "--misses", args.rate, "--rounds", args.rounds,
                              "--duration", args.duration, "--upstream", proto],
                             capture_output=True, text=True, timeout=1800)
        lines = out.stdout.strip().splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("misses over")), None)
        print("\n".join(lines[start:]) if start is not None else (out.stdout + out.stderr)[-2000:])
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
