"""``nodecache top``: which pods make this node's DNS traffic, read from the
running agent through its status socket (no port of its own).

``--json`` prints one snapshot (``observe.top``'s: clients sorted by
queries, names, and the failing (client, name, rcode) triples). Without it,
a live view like top(1): the clients table refreshed every ``--interval``
seconds, sorted by ``--sort`` (``s`` cycles the key, ``q`` quits); on a
narrow terminal the columns that do not fit are left out, rightmost first,
and the names and failing tables follow when there are lines for them.
"""
from __future__ import annotations

import json
import sys
import time

from .run.status import read_status

SORT_KEYS = ("queries", "nxdomain", "servfail", "refused", "walk_steps", "tcp", "storm", "hit_ratio")
COLUMNS = (("CLIENT", "client", 24), ("QUERIES", "queries", 9), ("HIT%", "hit_ratio", 6),
           ("NXDOMAIN", "nxdomain", 9), ("SERVFAIL", "servfail", 9), ("REFUSED", "refused", 8),
           ("WALK", "walk_steps", 7), ("TCP", "tcp", 7), ("STORM", "storm", 7))


def snapshot(path: str) -> dict:
    status = read_status(path)
    top = status.get("top")
    if top is None:
        raise ValueError("the agent at this status socket has no top tables (an older version)")
    return top


def cmd_top(args) -> int:
    try:
        if args.json:
            print(json.dumps(snapshot(args.status_socket), indent=1))
            return 0
        if not sys.stdout.isatty():
            print("\n".join(render(snapshot(args.status_socket), args.sort, 100, 40)))
            return 0
        import curses
        return curses.wrapper(_live, args)
    except (OSError, ValueError) as exc:
        print(f"nodecache top: no answer from {args.status_socket}: {exc}", file=sys.stderr)
        return 1


def render(top: dict, sort: str, width: int, height: int) -> list[str]:
    """The view as lines of at most ``width`` characters, ``height`` lines."""
    cols, used = [], 0
    for col in COLUMNS:
        if used + col[2] + 1 > width and cols:
            break
        cols.append(col)
        used += col[2] + 1
    clients = sorted(top["clients"], key=lambda c: -c.get(sort, 0))
    lines = [f"nodecache top: last ~{top['window_s']:g} s, hits sampled 1 in {top['sample']}, "
             f"sorted by {sort} (s: sort, q: quit)"[:width], ""]
    lines.append(" ".join(f"{title:>{w}}" if key != "client" else f"{title:<{w}}" for title, key, w in cols))
    for row in clients:
        cells = []
        for _, key, w in cols:
            value = row.get(key, "")
            if key == "hit_ratio":
                value = f"{100 * value:.0f}"
            cells.append(f"{str(value)[:w]:<{w}}" if key == "client" else f"{value:>{w}}")
        lines.append(" ".join(cells))
    room = height - len(lines) - 2
    if room > 3 and top["names"]:
        lines += ["", f"{'NAME':<{max(10, width - 10)}} {'QUERIES':>9}"[:width]]
        lines += [f"{n['name'][:max(10, width - 10)]:<{max(10, width - 10)}} {n['queries']:>9}"[:width]
                  for n in top["names"][:room // 2]]
    room = height - len(lines) - 2
    if room > 3 and top["failing"]:
        lines += ["", "FAILING (client name rcode count)"[:width]]
        lines += [f"{f['client']} {f['name']} {f['rcode']} {f['count']}"[:width] for f in top["failing"][:room - 2]]
    return lines[:height]


def _live(screen, args) -> int:
    import curses
    curses.curs_set(0)
    screen.timeout(int(args.interval * 1000))
    sort = args.sort
    while True:
        height, width = screen.getmaxyx()
        screen.erase()
        try:
            lines = render(snapshot(args.status_socket), sort, width - 1, height)
        except (OSError, ValueError) as exc:
            lines = [f"no answer from {args.status_socket}: {exc}"[:width - 1], f"retrying every {args.interval:g} s"]
        for y, line in enumerate(lines):
            screen.addstr(y, 0, line)
        screen.refresh()
        started = time.monotonic()
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return 0
        if key in (ord("s"), ord("S")):
            sort = SORT_KEYS[(SORT_KEYS.index(sort) + 1) % len(SORT_KEYS)]
        elif key != -1:  # another key: wait out the rest of the interval
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
