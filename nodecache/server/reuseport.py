"""Sharing a DNS port with the cache we replace (SO_REUSEPORT).

node-cache (CoreDNS) binds its sockets with SO_REUSEPORT, and so do we: a
new agent can start on a node where node-cache (or another agent that
found no handoff socket) still serves IP:53, instead of failing to bind
and crash-looping through a DaemonSet swap. Both processes then own
sockets in one *reuseport group*, and by default the kernel spreads
datagrams and new connections over the group by a hash of the sender.

Spreading is not what a replacement wants: the old process will soon
exit, and whatever sits in its receive queue (or accept queue) then is
lost. So a socket that joins a group *steers* the group to itself: a
one-instruction classic BPF program (``SO_ATTACH_REUSEPORT_CBPF``,
Linux >= 4.5) that returns the joiner's index in the group. The index is
the number of members before us (the kernel appends; it keeps the array
dense by moving the last member into a leaver's slot, so when the old
process's sockets close ours becomes index 0, the program's index falls
out of range, and the kernel falls back to its hash over the remaining
members: only us). Whoever joins after us (a rollback to node-cache, a
test) may steer it again, or share it by hash: either way no datagram is
dropped by the choice.

Members are counted from ``/proc/net/{udp,tcp}[6]`` (this namespace's
sockets, with their inodes): the same list tells, at exit, whether some
other process still serves the address (``others_hold``), in which case
its interface and rules stay (see ``lifecycle``).
"""
from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import socket
import struct

log = logging.getLogger("nodecache")
SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68  # Linux >= 5.3
TCP_LISTEN = "0A"
BPF_RET_K = 0x06


def _proc_address(hexaddr: str) -> str:
    """A /proc/net address: 32-bit words in the kernel's (host) byte order."""
    raw = b"".join(struct.pack("=I", int(hexaddr[i:i + 8], 16)) for i in range(0, len(hexaddr), 8))
    return str(ipaddress.ip_address(raw))


def bound_sockets(table: str, listening_only: bool) -> list[tuple[str, int, int]]:
    """(address, port, inode) of each socket in a /proc/net table's text;
    ``listening_only`` (TCP tables) keeps only listeners."""
    out = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or ":" not in fields[1] or (listening_only and fields[3] != TCP_LISTEN):
            continue
        addr, port = fields[1].split(":")
        out.append((_proc_address(addr), int(port, 16), int(fields[9])))
    return out


def holders(kind: int, family: int, addr: str, port: int) -> set[int]:
    """Inodes of this namespace's sockets bound (UDP) or listening (TCP) on
    exactly addr:port."""
    name = ("udp" if kind == socket.SOCK_DGRAM else "tcp") + ("6" if family == socket.AF_INET6 else "")
    try:
        with open(f"/proc/net/{name}") as fh:
            table = fh.read()
    except OSError:  # no /proc (or no IPv6): nobody to count
        return set()
    want = str(ipaddress.ip_address(addr))
    return {inode for a, p, inode in bound_sockets(table, kind == socket.SOCK_STREAM) if a == want and p == port}


def steer_to(sock: socket.socket, index: int) -> None:
    """Make the reuseport group deliver to member ``index`` (see the top)."""
    program = ctypes.create_string_buffer(struct.pack("=HBBI", BPF_RET_K, 0, 0, index))
    fprog = struct.pack("=H6xQ", 1, ctypes.addressof(program))  # struct sock_fprog, 64-bit layout
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def join(sock: socket.socket, addr: str, port: int) -> int:
    """Called right after ``sock`` bound addr:port with SO_REUSEPORT: if
    other sockets already serve it, steer the group to ``sock``. Returns
    how many others there were (0: we are alone, nothing to do)."""
    kind, family = sock.type, sock.family
    others = holders(kind, family, addr, port) - {os.fstat(sock.fileno()).st_ino}
    if not others:
        return 0
    try:
        steer_to(sock, len(others))
    except OSError as exc:  # an old kernel: the group shares by hash, nothing is lost
        log.warning("joined %s:%d held by %d other socket(s), cannot steer it here (%s): sharing the "
                    "traffic until they close", addr, port, len(others), exc)
        return len(others)
    log.warning("%s:%d (%s) is also held by another process (node-cache, or an agent that found no "
                "handoff socket): joined it with SO_REUSEPORT, new %s come here", addr, port,
                "udp" if kind == socket.SOCK_DGRAM else "tcp",
                "queries" if kind == socket.SOCK_DGRAM else "connections")
    return len(others)


def others_hold(addr: str, port: int, ours: set[int]) -> bool:
    """Whether some socket not in ``ours`` (inodes) serves addr:port."""
    family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    return any(holders(kind, family, addr, port) - ours for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM))
