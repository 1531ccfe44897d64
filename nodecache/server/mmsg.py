"""recvmmsg(2) and sendmmsg(2) through ctypes: the system calls, their
message headers over fixed buffers, and the sender addresses they carry.

A pure layer with no event loop and no DNS in it, used by the agent's
batched UDP transport (``server.udpbatch``) and by the load generator
(``nodecache_bench.udpbatched``). ``Vectors`` is one direction's buffers:
``BATCH`` slots of ``SLOT`` bytes (anonymous memory the kernel backs only
where datagrams are written), their iovecs and message headers, read and
written through memoryviews (an index per field, no ctypes object per
datagram). ``available()`` says whether the calls and the 64-bit struct
layout written here exist on this machine.
"""
from __future__ import annotations

import ctypes
import mmap
import socket
import sys

BATCH = 32            # datagrams per system call (libuv reads at most 32 per wakeup too)
SLOT = 1 << 16        # bytes per datagram: more than any UDP payload
NAME = 32             # bytes per sender address: a sockaddr_in6 (28), aligned
MSG_DONTWAIT = 0x40


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint32)]


# Field positions in units of the memoryview that reads them: 8-byte words
# (Q) for pointers and lengths, 4-byte words (I) for the 32-bit fields.
MM = ctypes.sizeof(_Mmsghdr)
Q_NAME, Q_IOV, Q_IOVLEN = _Msghdr.name.offset // 8, _Msghdr.iov.offset // 8, _Msghdr.iovlen.offset // 8
Q_CONTROL, Q_CONTROLLEN = _Msghdr.control.offset // 8, _Msghdr.controllen.offset // 8
I_NAMELEN, I_LEN = _Msghdr.namelen.offset // 4, _Mmsghdr.len.offset // 4
Q_PER, I_PER = MM // 8, MM // 4


def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None


CALLS = _libc() if sys.platform.startswith("linux") else None


def available() -> bool:
    """Whether recvmmsg/sendmmsg and the struct layout written here exist."""
    return (CALLS is not None
            and ctypes.sizeof(ctypes.c_void_p) == 8 and MM == 64 and ctypes.sizeof(_Iovec) == 16)


def _region(size: int):
    """Anonymous memory (backed only where written) and its address."""
    mem = mmap.mmap(-1, size)
    anchor = ctypes.c_char.from_buffer(mem)  # keeps the mapping exported while we hold it
    return mem, anchor, ctypes.addressof(anchor)


class Vectors:
    """One direction's buffers and headers: BATCH slots, each with its iovec
    and no address (set one per message, or leave it for a connected socket,
    as the load generator does)."""

    def __init__(self):
        self.mem, self._anchor, data = _region(BATCH * SLOT)
        self.data = memoryview(self.mem)
        self.headers = ctypes.create_string_buffer(BATCH * MM)
        self.iovecs = ctypes.create_string_buffer(BATCH * 16)
        self.q = memoryview(self.headers).cast("B").cast("Q")
        self.i = memoryview(self.headers).cast("B").cast("I")
        self.iov = memoryview(self.iovecs).cast("B").cast("Q")
        self.address = ctypes.addressof(self.headers)
        self.pointer = ctypes.c_void_p(self.address)
        iov = ctypes.addressof(self.iovecs)
        for k in range(BATCH):
            self.iov[2 * k], self.iov[2 * k + 1] = data + k * SLOT, SLOT
            self.q[k * Q_PER + Q_IOV], self.q[k * Q_PER + Q_IOVLEN] = iov + 16 * k, 1

    def release(self) -> None:
        for view in (self.q, self.i, self.iov, self.data):
            view.release()
        del self._anchor
        self.mem.close()


def sender(name: bytes) -> tuple:
    """The (host, port[, flowinfo, scope_id]) tuple socket.recvfrom would give
    for a sockaddr the kernel wrote (family in host order, port and address
    in network order)."""
    family = int.from_bytes(name[:2], sys.byteorder)
    port = int.from_bytes(name[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, name[4:8]), port
    return (socket.inet_ntop(socket.AF_INET6, name[8:24]), port, int.from_bytes(name[4:8], "big"),
            int.from_bytes(name[24:28], sys.byteorder))
