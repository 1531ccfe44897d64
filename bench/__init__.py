"""The engineering lab: measurements and experiments behind bench/RESULTS.md.
Not installed and not in the image; run from the repository root as
``python -m bench.NAME`` (see bench/README.md). The shipped load generator
is ``nodecache_bench`` (``nodecache-bench``)."""
