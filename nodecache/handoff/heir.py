"""The heir side: take the sockets and the cache from a running donor.

``take_over`` is called after our configuration is loaded and before any
listener is created. No handoff socket: start cold. A socket file with no
process behind it (a crash left it): log, remove it, start cold. Refused
as "busy" (another heir is mid-handoff): retry for a while. Anything
garbled in the snapshot: keep the sockets, start with an empty cache.
``finish`` sends READY once our listeners serve and our own handoff
socket is published, and keeps the connection open for our lifetime. A
donor in another network namespace (another pod) gives its cache only:
``finish`` then says DONE (see handoff.protocol).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..ttlcache import snapshot
from .protocol import (CHUNK, DONE, END, HELLO, MAX_FDS, MAX_MESSAGE, READY, REVISION, SOCKET_NAME,
                       SOCKETS, VERSION, ProtocolError, control, in_our_netns, netns_id, parse_control,
                       peer_uid)

log = logging.getLogger("nodecache.handoff")
BUSY_RETRY_FOR = 20.0


@dataclass
class Takeover:
    conn: socket.socket
    donor_pid: int
    sockets: dict[tuple[str, int, str], socket.socket]
    snapshot: bytes = b""
    entries: int = 0
    started: float = field(default_factory=time.monotonic)
    received: float = 0.0
    cache_only: bool = False  # the donor is in another network namespace: its cache, not its sockets

    def cache(self, now: float) -> dict:
        try:
            return snapshot.decode(self.snapshot, now) if self.snapshot else {}
        except snapshot.SnapshotError as exc:
            log.warning("handoff: cache snapshot unusable (%s); starting with an empty cache", exc)
            return {}

    def finish(self) -> None:
        """Say READY. The connection stays open for as long as this process
        lives: its end tells the donor, within its grace period, that we died
        (see handoff.donor). After a cache-only handoff, say DONE and close:
        the donor keeps its sockets and serves on until it is stopped."""
        if self.cache_only:
            try:
                self.conn.sendall(control(DONE, pid=os.getpid()))
            except OSError as exc:
                log.info("handoff: donor pid %d gone before DONE (%s)", self.donor_pid, exc)
            self.conn.close()
            return
        try:
            self.conn.sendall(control(READY, pid=os.getpid()))
        except OSError as exc:
            log.warning("handoff: could not send READY to donor pid %d: %s", self.donor_pid, exc)
            self.conn.close()

    def abandon(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.conn.close()


def take_over(directory: str, timeout: float = 10.0) -> Takeover | None:
    path = Path(directory) / SOCKET_NAME
    deadline = time.monotonic() + BUSY_RETRY_FOR
    while True:
        try:
            return _attempt(path, timeout)
        except FileNotFoundError:
            return None
        except ConnectionRefusedError:
            log.warning("handoff: %s has no process behind it (stale); starting cold", path)
            try:
                path.unlink()
            except OSError:
                pass
            return None
        except ProtocolError as exc:
            if "busy" in str(exc) or "already handed off" in str(exc):
                if time.monotonic() < deadline:
                    time.sleep(0.2)  # another heir, or the path is about to change hands
                    continue
            raise


def _attempt(path: Path, timeout: float) -> Takeover | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(timeout)
    try:
        conn.connect(str(path))
    except OSError as exc:
        conn.close()
        if exc.errno in (errno.ENOENT,):
            raise FileNotFoundError(str(path)) from exc
        if exc.errno in (errno.ECONNREFUSED,):
            raise ConnectionRefusedError(str(path)) from exc
        raise
    t0 = time.monotonic()
    try:
        donor_pid, donor_uid = peer_uid(conn)
        if donor_uid != os.getuid():  # never take sockets or a cache from another user's process
            raise ProtocolError(f"refused: the process at {path} (pid {donor_pid}) runs as uid {donor_uid}, "
                                f"we run as {os.getuid()}")
        conn.sendall(control(HELLO, version=VERSION, revision=REVISION, pid=os.getpid(),
                             snapshots=list(snapshot.FORMATS), netns=netns_id()))
        message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, MAX_FDS)
        try:
            meta = parse_control(message, SOCKETS)
            described = meta.get("sockets", [])
            if len(described) != len(fds):
                raise ProtocolError(f"{len(described)} sockets described, {len(fds)} received")
        except ProtocolError:
            for fd in fds:
                os.close(fd)
            raise
        sockets = {}
        for item, fd in zip(described, fds):
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            sockets[(item["addr"], int(item["port"]), item["kind"])] = sock
        cache_only = bool(meta.get("cache_only")) or any(not in_our_netns(s) for s in sockets.values())
        if cache_only:
            for sock in sockets.values():  # another namespace's: of no use here, and not ours to close down
                sock.close()
            sockets = {}
        take = Takeover(conn, int(meta.get("pid", 0)), sockets, started=t0, cache_only=cache_only)
        chunks = []
        while True:
            message = conn.recv(MAX_MESSAGE)
            if message[:1] == CHUNK:
                chunks.append(message[1:])
                continue
            end = parse_control(message, END)
            take.entries = int(end.get("entries", 0))
            break
        take.snapshot = b"".join(chunks)
        take.received = time.monotonic()
    except (OSError, ProtocolError, KeyError, ValueError) as exc:
        conn.close()
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"handoff failed: {exc}") from exc
    if take.cache_only:
        log.info("handoff: took %d cache entries (%d bytes) from pid %d in another network namespace in "
                 "%.0f ms; its sockets stay its own", take.entries, len(take.snapshot), take.donor_pid,
                 (take.received - t0) * 1000)
    else:
        log.info("handoff: took %d sockets and %d cache entries (%d bytes) from pid %d in %.0f ms",
                 len(take.sockets), take.entries, len(take.snapshot), take.donor_pid,
                 (take.received - t0) * 1000)
    return take
