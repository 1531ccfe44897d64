"""Reference pages generated from the code, so they cannot drift from it
(tests/unit/test_docs.py fails when a file differs):

* docs/flags.md from the argument parser: ``python -m nodecache.docgen flags``;
* docs/metrics.md from the metric collectors, run over an agent built
  from the demo Corefile (nothing started): ``python -m nodecache.docgen metrics``.
"""
from __future__ import annotations

import argparse

from .cli import parser
from .cliparse import size

HEADER = """# `nodecache run` flags

Generated from the argument parser (`python -m nodecache.docgen flags > docs/flags.md`).
Every flag is node-cache's spelling; `-flag VALUE`, `-flag=VALUE`, `--flag VALUE`
and `--flag=VALUE` all work, booleans also as a bare `-flag`. Durations are seconds
or Go durations (`60s`, `1m30s`); sizes are bytes or `64Ki`/`64Mi`/`1Gi`. A bad
value stops the start with one line naming the flag (exit 2).

| flag | default | meaning |
| --- | --- | --- |
"""


def _default(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "off"
    if action.default in (None, ""):
        return "(none)"
    if isinstance(action.default, bool):
        return str(action.default).lower()
    if action.type is size:
        for unit, scale in (("Mi", 1 << 20), ("Ki", 1 << 10)):
            if action.default % scale == 0:
                return f"{action.default // scale}{unit}"
    if isinstance(action.default, float) and action.default.is_integer():
        return str(int(action.default))
    return str(action.default)


def flags_markdown() -> str:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    rows = []
    for action in sub.choices["run"]._actions:
        if not action.option_strings or action.dest == "help":
            continue
        names = ", ".join(f"`{o}`" for o in action.option_strings if not o.startswith("--"))
        text = (action.help or "").replace("|", "\\|")
        if action.choices:
            text += f" (one of: {', '.join(map(str, action.choices))})"
        rows.append(f"| {names} | `{_default(action)}` | {text} |")
    return HEADER + "\n".join(rows) + "\n"


METRICS_HEADER = """# Metrics

Generated from the collectors (`python -m nodecache.docgen metrics > docs/metrics.md`).
CoreDNS's names, labels and buckets where CoreDNS has the series (so its
dashboards and alerts work); `nodecache_*` for what it has not. Served on
the `prometheus` plugin's address (default `:9253`), except
`coredns_nodecache_setup_errors_total` and `nodecache_rules_backend`, on
`-metrics-listen-address` as node-cache serves them. What each
`nodecache_events_total` event means: docs/observability.md.

| metric | type | labels | help |
| --- | --- | --- | --- |
"""


def metrics_markdown() -> str:
    from types import SimpleNamespace

    from .config.parse import parse_config
    from .demo import COREFILE
    from .node.reconcile import ERROR_TYPES
    from .run.status import Runtime
    from .server.agent import Agent
    agent = Agent(parse_config(COREFILE.format(port=53, upstream=53), "demo"))
    node = SimpleNamespace(errors=dict.fromkeys(ERROR_TYPES, 0), backend=SimpleNamespace(name="iptables"),
                           events=lambda: {})
    rt = Runtime(agent, node)
    rt.top_clients = 1  # (-metrics-top-clients: the opt-in family is listed too)
    agent.top.miss("10.0.0.1", None, "udp")
    rows = {}
    for registry in (rt.dns_registry, rt.setup_registry):
        for fam in registry.collect():
            if fam.name.startswith(("process_", "python_")):
                continue
            name = fam.name + ("_total" if fam.type == "counter" else "")
            # the declared label names (families without samples yet have them too)
            declared = set(getattr(fam, "_labelnames", ()))
            labels = sorted(declared | {k for sample in fam.samples for k in sample.labels if k != "le"})
            rows[name] = f"| `{name}` | {fam.type} | {', '.join(labels)} | {fam.documentation} |"
    for block in agent.blocks:
        block.close()
    return METRICS_HEADER + "\n".join(rows[k] for k in sorted(rows)) + "\n"


if __name__ == "__main__":
    import sys
    what = sys.argv[1] if len(sys.argv) > 1 else "flags"
    print(metrics_markdown() if what == "metrics" else flags_markdown(), end="")
