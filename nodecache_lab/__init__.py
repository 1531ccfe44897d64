"""The lab: what the tests and benchmarks build around the agent, kept out
of the installed package (pyproject.toml installs nodecache and
nodecache_bench only). An emulated Kubernetes node in network namespaces
(``emunode``) with kube-proxy's rules (``kubeproxy``), the stand-ins for
node-cache (``nodelocaldns``, laid out as each installer lays it out:
``layouts``) and for Cilium's redirect (``podnetwork``), what happens on
the node while it is measured (``nodeload``), an in-process agent against
the emulated cluster DNS (``harness``), replay scenarios (``replay``), fuzz
targets (``fuzz``) and small fakes (``fakes``). Run from the repository
root (pytest's pythonpath; ``python -m`` from the root)."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: where this package is importable from


def lab_env(env: dict | None = None) -> dict:
    """``env`` (default: ours) for a child that imports the lab (``python -m
    nodecache_lab.X``) from wherever it runs."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env
