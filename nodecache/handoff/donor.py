"""The donor side: the running agent offers its sockets and cache to a heir.

The handoff socket is published atomically (bind a temporary path, then
``rename`` over ``handoff.sock``), only once our listeners serve, so a heir
that finds the path always finds a process able to hand over. One heir at
a time; a second one is refused ("busy") and retries. Before the heir says
READY nothing changes here: if it disappears, we carry on untouched. After
READY we stop reading (the heir reads the same sockets now), finish what we
took, and never tear down interface or rules: the heir owns them. A heir
in another network namespace (a pod-network rollout) gets the cache only
and says DONE: then we serve on, on our own sockets, until stopped.

Safety net: after READY we keep duplicates of every listening socket (not
read) for ``grace`` seconds, and the heir keeps its end of the handoff
connection open for as long as it lives. If that connection ends within
the grace period and no process answers at the handoff socket, the heir
died (crash, OOM kill, a failed rollout killed it): ``on_heir_died`` gets
the duplicates and resumes service, cache included, within milliseconds.
After the grace period the duplicates are closed and the kernel's
fail-open rules (``node.rules``) cover the node if the heir dies later.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path

from ..ttlcache import snapshot
from ..fdlimit import AcceptGuard
from .protocol import (CHUNK, DONE, END, HELLO, MAX_MESSAGE, READY, REFUSE, REVISION, SOCKET_NAME, SOCKETS,
                       STATUS, STATUS_REPLY, VERSION, ProtocolError, control, netns_id, parse_control,
                       peer_uid)

log = logging.getLogger("nodecache.handoff")
HELLO_TIMEOUT = 5.0
READY_NAG = 30.0  # log while a heir that is still connected has not said READY


def publish(path: Path) -> socket.socket:
    """A listening SEQPACKET socket at ``path`` (mode 0600), replacing any old
    one atomically. A directory we create is 0700; an existing one (say
    /tmp) keeps its mode: the socket's own mode and the peer uid check guard
    the handoff."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(str(tmp))
    os.chmod(tmp, 0o600)
    sock.listen(4)
    os.rename(tmp, path)
    sock.setblocking(False)
    return sock


class Donor:
    def __init__(self, agent, directory: str, on_handed_off, extra_sockets=lambda: [],
                 grace: float = 10.0, on_heir_died=None):
        self.agent = agent
        self.extra_sockets = extra_sockets  # () -> [(addr, port, kind, fd)]: the HTTP listeners
        self.path = Path(directory) / SOCKET_NAME
        self.on_handed_off = on_handed_off
        self.sock: socket.socket | None = None
        self.task: asyncio.Task | None = None
        self.busy = False
        self.handed_off = False
        self.handoffs = 0
        self.cache_given = 0  # cache-only handoffs to a heir in another network namespace
        self.refused = 0
        self.grace = grace
        self.on_heir_died = on_heir_died  # async (spare sockets) -> None
        self.watch: asyncio.Task | None = None

    def start(self) -> None:
        self.sock = publish(self.path)
        self.inode = os.stat(self.path).st_ino
        self.task = asyncio.get_running_loop().create_task(self._accept_loop())
        log.info("handoff socket published at %s", self.path)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.watch is not None:
            self.watch.cancel()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:  # remove the path only if it is still ours, not a heir's
                if os.stat(self.path).st_ino == self.inode:
                    self.path.unlink()
            except OSError:
                pass

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        guard = AcceptGuard("handoff socket")
        while True:
            conn, _ = await guard.accept(self.sock)
            conn.setblocking(False)
            task = loop.create_task(self._handle(conn))
            task.add_done_callback(_log_failure)

    async def _handle(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            first = await asyncio.wait_for(loop.sock_recv(conn, MAX_MESSAGE), HELLO_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            conn.close()
            return
        if first[:1] == STATUS:
            await self._status(conn)
            return
        if self.busy or self.handed_off:
            self.refused += 1
            await self._refuse(conn, "busy: a handoff is in progress" if self.busy
                               else "this process has already handed off")
            return
        self.busy = True  # no await since the check: one heir at a time
        await self._serve_heir(conn, first)

    async def _status(self, conn: socket.socket) -> None:
        entries = sum(len(e) for _, e in self.agent.snapshot_blocks())
        try:
            await asyncio.get_running_loop().sock_sendall(conn, control(
                STATUS_REPLY, pid=os.getpid(), revision=REVISION, entries=entries,
                handed_off=self.handed_off, listeners=len(self.agent.listening_sockets())))
        except OSError:
            pass
        conn.close()

    async def _refuse(self, conn: socket.socket, reason: str) -> None:
        try:
            await asyncio.get_running_loop().sock_sendall(conn, control(REFUSE, reason=reason))
        except OSError:
            pass
        conn.close()

    async def _serve_heir(self, conn: socket.socket, first: bytes) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        try:
            pid, uid = peer_uid(conn)
            if uid != os.getuid():
                log.warning("handoff refused: peer pid %d has uid %d, we run as %d", pid, uid, os.getuid())
                await self._refuse(conn, "different uid")
                return
            hello = parse_control(first, HELLO)
            if hello.get("version") != VERSION:
                log.warning("handoff refused: heir pid %d speaks protocol version %s, we speak %d",
                            pid, hello.get("version"), VERSION)
                await self._refuse(conn, f"incompatible: donor speaks protocol version {VERSION}")
                return
            fmt = snapshot.negotiate(hello.get("snapshots", [1]))
            log.info("handoff: heir pid %d (revision %s%s) connected; cache %s", pid, hello.get("revision"),
                     ", a rollback" if _older(hello.get("revision"), REVISION) else "",
                     f"in snapshot format {fmt}" if fmt else "not sent: no snapshot format in common")
            ours = netns_id()
            cache_only = hello.get("netns") is not None and ours is not None and hello["netns"] != ours
            listed = [] if cache_only else self.agent.listening_sockets() + self.extra_sockets()
            meta = [{"addr": a, "port": p, "kind": k} for a, p, k, _ in listed]
            socket.send_fds(conn, [control(SOCKETS, sockets=meta, pid=os.getpid(), revision=REVISION,
                                           netns=ours, cache_only=cache_only)],
                            [fd for *_, fd in listed])
            sent = 0
            blocks = self.agent.snapshot_blocks() if fmt else []
            entries = sum(len(e) for _, e in blocks)
            for chunk in snapshot.encode(blocks, self.agent.clock(), fmt=fmt) if fmt else ():
                await loop.sock_sendall(conn, CHUNK + chunk)
                sent += len(chunk)
            await loop.sock_sendall(conn, control(END, entries=entries, bytes=sent, format=fmt))
            t_sent = time.monotonic()
            answer = await self._wait_ready(conn, pid)
            if answer[:1] == DONE:
                parse_control(answer, DONE)
                self._gave_cache(pid, entries, sent, t0)
                conn.close()
                return
            parse_control(answer, READY)
        except (ProtocolError, OSError, asyncio.TimeoutError) as exc:
            log.warning("handoff aborted before READY (%s); still serving as before",
                        exc or type(exc).__name__)
            conn.close()
            return
        finally:
            self.busy = False
        spare = [(a, p, k, socket.socket(fileno=os.dup(fd))) for a, p, k, fd in listed]
        self.handed_off = True
        self.handoffs += 1
        log.info("handoff: heir pid %d READY after %.0f ms (%d sockets, %d cache entries, %d bytes "
                 "sent in %.0f ms)", pid, (time.monotonic() - t0) * 1000, len(listed), entries, sent,
                 (t_sent - t0) * 1000)
        self.sock.close()  # the path is the heir's now
        self.sock = None
        self.watch = loop.create_task(self._watch_heir(conn, pid, spare, time.monotonic()))
        self.watch.add_done_callback(_log_failure)
        await self.on_handed_off()

    def _gave_cache(self, pid: int, entries: int, sent: int, t0: float) -> None:
        """A cache-only handoff is over: the heir (another pod, another network
        namespace) serves on its own sockets and has published its handoff
        socket at our path. We keep serving, sockets untouched, until stopped
        (the rollout removes our pod next); the path is no longer ours."""
        self.cache_given += 1
        log.info("handoff: gave %d cache entries (%d bytes) to pid %d in another network namespace in %.0f ms; "
                 "still serving on our own sockets until stopped", entries, sent, pid, (time.monotonic() - t0) * 1000)
        if self.task is not None:
            self.task.cancel()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def _wait_ready(self, conn: socket.socket, pid: int) -> bytes:
        """The heir's READY, however long it takes while its connection lives:
        giving up on a live heir would leave two agents each believing the
        node is theirs. Until READY we serve as before; EOF means it died."""
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        while True:
            try:
                return await asyncio.wait_for(loop.sock_recv(conn, MAX_MESSAGE), READY_NAG)
            except asyncio.TimeoutError:
                log.warning("handoff: heir pid %d connected %.0f s ago and not READY yet; still serving",
                            pid, time.monotonic() - t0)

    async def _watch_heir(self, conn: socket.socket, pid: int, spare: list, t_ready: float) -> None:
        """Hold the spare sockets for the grace period; resume if the heir dies in it."""
        loop = asyncio.get_running_loop()
        try:
            try:
                said = await asyncio.wait_for(loop.sock_recv(conn, 64), self.grace)
            except asyncio.TimeoutError:
                said = None
            except OSError:
                said = b""
            if said != b"" or self.on_heir_died is None:
                log.info("handoff: grace period over; pid %d owns the node", pid)
                return
            if await asyncio.to_thread(_someone_serves, self.path):
                log.info("handoff: heir pid %d exited and another agent serves; nothing to resume", pid)
                return
            log.warning("handoff: heir pid %d died %.0f ms after READY; resuming service with our cache",
                        pid, (time.monotonic() - t_ready) * 1000)
            sockets, spare = spare, []
            await self.on_heir_died(sockets)
        finally:
            conn.close()
            for *_, sock in spare:
                sock.close()


def _someone_serves(path: Path) -> bool:
    """Does a live agent that has not handed off answer at the handoff socket?"""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(0.5)
            s.connect(str(path))
            s.sendall(control(STATUS))
            reply = parse_control(s.recv(MAX_MESSAGE), STATUS_REPLY)
    except (OSError, ProtocolError):
        return False
    return not reply.get("handed_off", True)


def _older(revision, ours: int) -> bool:
    try:
        return int(revision) < ours
    except (TypeError, ValueError):
        return False


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("handoff connection failed", exc_info=task.exception())
