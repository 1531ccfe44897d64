"""systemd integration: socket activation and readiness notification.

Socket activation (sd_listen_fds(3)): systemd passes listening sockets as
fds 3..3+LISTEN_FDS-1 when LISTEN_PID is ours. We identify each by its
bound address and type and adopt it exactly like a socket received in a
hot handoff, so a restart queues queries in the kernel instead of
refusing them. Readiness (sd_notify(3)): one datagram to $NOTIFY_SOCKET;
a heir that took over from the main process also announces its PID.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("nodecache.systemd")
SD_LISTEN_FDS_START = 3


def listen_fds(env: dict[str, str] | None = None) -> dict[tuple[str, int, str], socket.socket]:
    env = os.environ if env is None else env
    try:
        if int(env.get("LISTEN_PID", "0")) != os.getpid():
            return {}
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    out = {}
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.error("systemd passed fd %d that is not a socket: %s", fd, exc)
            continue
        kind = {socket.SOCK_DGRAM: "udp", socket.SOCK_STREAM: "tcp"}.get(sock.type)
        if kind is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            log.warning("ignoring systemd socket fd %d (%s)", fd, sock)
            sock.detach()
            continue
        addr, port = sock.getsockname()[:2]
        sock.setblocking(False)
        out[(addr, port, kind)] = sock
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    if out:
        log.info("adopted %d sockets from systemd", len(out))
    return out


def notify(message: str, env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), path)
        return True
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)
        return False
