"""docs/flags.md from the argument parser, so the flag reference cannot
drift from the code: ``python -m nodecache.docgen > docs/flags.md``
(tests/unit/test_docs.py fails when the file differs)."""
from __future__ import annotations

import argparse

from .cli import parser
from .cliparse import size

HEADER = """# `nodecache run` flags

Generated from the argument parser (`python -m nodecache.docgen > docs/flags.md`).
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


if __name__ == "__main__":
    print(flags_markdown(), end="")
