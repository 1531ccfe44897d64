"""``nodecache handoff [status|reload]``: the operator's side of the handoff
socket. ``status`` asks the agent that owns the node's handoff socket what
it holds; ``reload`` restarts that agent in place (its own command line and
environment, read from /proc), lets the new process take over through the
socket, and then stops the old one: a hot restart on a node without a
DaemonSet rollout (systemd installs, debugging)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .protocol import MAX_MESSAGE, SOCKET_NAME, STATUS, STATUS_REPLY, control


def status(directory: str) -> dict:
    """The running agent's answer at the handoff socket; raises OSError."""
    path = Path(directory) / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.settimeout(5)
        conn.connect(str(path))
        conn.sendall(control(STATUS))
        reply = conn.recv(MAX_MESSAGE)
    if reply[:1] != STATUS_REPLY:
        raise OSError(f"unexpected answer from {path}")
    return json.loads(reply[1:])


def cmd_status(directory: str) -> int:
    try:
        info = status(directory)
    except FileNotFoundError:
        print(f"no agent: {directory}/handoff.sock does not exist")
        return 1
    except OSError as exc:
        print(f"no agent answering in {directory}: {exc.strerror or exc}")
        return 1
    print(f"pid {info['pid']} holds {info['listeners']} sockets, revision {info['revision']}, "
          f"{info['entries']} cache entries" + (" (handed off)" if info.get("handed_off") else ""))
    return 0


def cmd_reload(directory: str, timeout: float) -> int:
    """Start the running agent's own command line again, detached; it takes
    over through the handoff socket. Once it holds the sockets, the old
    process is told to stop (SIGTERM): it keeps its safety net for its
    handoff grace period, then exits. Exit 0 once the successor serves."""
    try:
        old = status(directory)["pid"]
        argv = open(f"/proc/{old}/cmdline", "rb").read().split(b"\0")[:-1]
        env = dict(kv.split(b"=", 1) for kv in open(f"/proc/{old}/environ", "rb").read().split(b"\0") if b"=" in kv)
    except OSError as exc:
        print(f"no running agent to reload: {exc}", file=sys.stderr)
        return 1
    heir = subprocess.Popen(argv, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if heir.poll() is not None:
            print(f"successor exited with {heir.returncode}; pid {old} keeps serving", file=sys.stderr)
            return 1
        try:
            if status(directory)["pid"] == heir.pid:
                print(f"pid {heir.pid} took over from pid {old}; pid {old} exits after its grace period")
                try:
                    os.kill(old, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                return 0
        except OSError:
            pass
        time.sleep(0.1)
    print(f"successor pid {heir.pid} did not take over within {timeout:g}s", file=sys.stderr)
    return 1
