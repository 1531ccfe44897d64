"""The handoff wire protocol over an AF_UNIX SOCK_SEQPACKET socket.

One message per packet (SEQPACKET keeps boundaries): a one-byte kind, then
a payload, JSON for control messages and raw bytes for cache chunks.

    heir  -> donor  HELLO   {"version", "revision", "pid", "snapshots": [formats it reads], "netns"}
    donor -> heir   SOCKETS {"sockets": [{"addr", "port", "kind"}...], "pid", "revision", "netns",
                             "cache_only"}
                    + the listening sockets as SCM_RIGHTS file descriptors, in that order
    donor -> heir   CHUNK   snapshot bytes (ttlcache.snapshot), any number
    donor -> heir   END     {"entries", "bytes", "format": the chosen one, or null: no cache}
    heir  -> donor  READY   {"pid"}
    heir  -> donor  DONE    {"pid"}  instead of READY after a cache-only handoff
    donor -> heir   REFUSE  {"reason"} instead of SOCKETS
    anyone -> donor STATUS  {}  answered by STATUS_REPLY {"pid", "revision", "entries", "handed_off"}

**Cache only.** Sockets belong to a network namespace. When heir and donor
are in different ones (two pods in the pod network, each with its own
address, behind Cilium's Local Redirect Policy), the donor sends no
sockets (``cache_only``) and the cache only; the heir serves on its own
sockets and says DONE; the donor keeps serving, its own sockets untouched,
until it is stopped. ``netns`` is ``DEV:INODE`` of /proc/self/ns/net.
Heirs and donors that predate these fields ignore them: an older heir in
another namespace is sent sockets as before; an older donor's sockets are
checked by the heir (``SO_NETNS_COOKIE``) and closed if they are not in its
namespace, and the older donor, seeing no READY, carries on.

``VERSION`` changes when these messages change incompatibly (a donor refuses
another version; added fields are not such a change). ``REVISION`` orders releases; any revision may take over from any
other, so ``kubectl rollout undo`` is as hitless as a rollout: the donor
sends the cache in the highest snapshot format both speak (a heir that
lists none, as revision 1 did, reads format 1), or none at all, and the
sockets pass either way.
"""
from __future__ import annotations

import json
import os
import socket
import struct

VERSION = 1
REVISION = 2
MAX_MESSAGE = 256 * 1024
MAX_FDS = 128
HELLO, SOCKETS, CHUNK, END, READY, REFUSE, DONE = b"H", b"S", b"C", b"E", b"R", b"X", b"D"
STATUS, STATUS_REPLY = b"?", b"="  # `nodecache handoff status`: who holds the sockets
SOCKET_NAME = "handoff.sock"


class ProtocolError(Exception):
    pass


def control(kind: bytes, **payload) -> bytes:
    return kind + json.dumps(payload).encode()


def parse_control(message: bytes, expected: bytes) -> dict:
    if not message:
        raise ProtocolError("peer closed the connection")
    if message[:1] == REFUSE and expected != REFUSE:
        raise ProtocolError(f"refused: {_json(message).get('reason', '?')}")
    if message[:1] != expected:
        raise ProtocolError(f"expected {expected!r}, got {message[:1]!r}")
    return _json(message)


def _json(message: bytes) -> dict:
    try:
        value = json.loads(message[1:].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"garbled {message[:1]!r} message") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"garbled {message[:1]!r} message")
    return value


def peer_uid(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", raw)
    return pid, uid


SO_NETNS_COOKIE = 71  # Linux >= 5.14: an id of the network namespace a socket lives in


def netns_id() -> str | None:
    """This process's network namespace as ``DEV:INODE``, or None."""
    try:
        st = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def in_our_netns(sock: socket.socket) -> bool:
    """Whether a received socket lives in our network namespace (True when
    the kernel cannot tell: older kernels, where heir and donor always share
    the host's namespace anyway)."""
    try:
        theirs = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            ours = probe.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError:
        return True
    return theirs == ours
