"""The handoff wire protocol over an AF_UNIX SOCK_SEQPACKET socket.

One message per packet (SEQPACKET keeps boundaries): a one-byte kind, then
a payload, JSON for control messages and raw bytes for cache chunks.

    heir  -> donor  HELLO   {"version", "revision", "pid", "snapshots": [formats it reads]}
    donor -> heir   SOCKETS {"sockets": [{"addr", "port", "kind"}...], "pid", "revision"}
                    + the listening sockets as SCM_RIGHTS file descriptors, in that order
    donor -> heir   CHUNK   snapshot bytes (cache.snapshot), any number
    donor -> heir   END     {"entries", "bytes", "format": the chosen one, or null: no cache}
    heir  -> donor  READY   {"pid"}
    donor -> heir   REFUSE  {"reason"} instead of SOCKETS
    anyone -> donor STATUS  {}  answered by STATUS_REPLY {"pid", "revision", "entries", "handed_off"}

``VERSION`` changes when these messages change (a donor refuses another
version). ``REVISION`` orders releases; any revision may take over from any
other, so ``kubectl rollout undo`` is as hitless as a rollout: the donor
sends the cache in the highest snapshot format both speak (a heir that
lists none, as revision 1 did, reads format 1), or none at all, and the
sockets pass either way.
"""
from __future__ import annotations

import json
import socket
import struct

VERSION = 1
REVISION = 2
MAX_MESSAGE = 256 * 1024
MAX_FDS = 128
HELLO, SOCKETS, CHUNK, END, READY, REFUSE = b"H", b"S", b"C", b"E", b"R", b"X"
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
