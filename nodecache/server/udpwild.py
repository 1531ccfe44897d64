"""UDP on a socket bound to every address: each reply leaves from the address
its query was sent to.

A socket bound to 0.0.0.0 or :: (a server block without ``bind``) takes
queries for every address of the node. A plain ``sendto`` lets routing pick
the reply's source, which on a node with several addresses is usually not
the one the client asked (169.254.20.10, the kube-dns ClusterIP): every
stub resolver drops such a reply (RFC 5452 §9.1; glibc, musl and Go wait
out their timeouts, dig says "reply from unexpected source"). So the
socket asks the kernel for each datagram's destination (``IP_PKTINFO``;
``IPV6_RECVPKTINFO``, which also reports the IPv4 destinations of a
dual-stack socket as v4-mapped addresses) and every reply is sent with
that address as its source, interface left to routing (as miekg/dns's
``correctSource``, what CoreDNS does).

Only wildcard sockets come here: the agent's default listeners are bound
to their one address, where the kernel already answers from it, and keep
the batched transport (``server.udpbatch``) untouched. A wildcard socket
gets that transport too, with its control-message side switched on
(``WildcardBatchServer``): every receive slot has a buffer for the
destination the kernel reports, each reply queued for ``sendmmsg`` carries
it back as its source, a datagram read on its own comes with
``recvmsg``, and a miss's later reply is sent with ``sendmsg`` from its
query's destination: a ``Source``, which is also the query path's ``via``
for a datagram read on its own. ``WildcardUdpServer`` is the same, one
datagram per wakeup, where ``recvmmsg`` is not available.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import sys

from ..observe.ratelog import Throttle
from .mmsg import BATCH, Q_CONTROL, Q_CONTROLLEN, Q_PER, SLOT
from .udpbatch import PACE, BatchUdpServer

log = logging.getLogger("nodecache.udp")

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 does not export it
_V4_PKTINFO, _V6_PKTINFO = 12, 20  # struct in_pktinfo, struct in6_pktinfo
ANCILLARY = socket.CMSG_SPACE(_V6_PKTINFO) + socket.CMSG_SPACE(_V4_PKTINFO)
CTL = 64          # bytes of control buffer per message slot (one pktinfo message of either family)
_CMSG_HEADER = 16  # struct cmsghdr on 64-bit Linux: length, level, type
MEMO_LIMIT = 4096  # destinations (address and ingress interface) remembered; then forgotten at once


def is_wildcard(sock: socket.socket) -> bool:
    return sock.getsockname()[0] in ("0.0.0.0", "::")


def ask_destinations(sock: socket.socket) -> None:
    """Make the kernel report every datagram's destination address."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def source_for(ancillary: list) -> list:
    """The ancillary data that sends a reply from the destination reported
    in ``ancillary`` (recvmsg's), interface index 0; [] when none was."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _V4_PKTINFO:
            # in_pktinfo: ifindex, spec_dst, addr. The destination (addr) becomes spec_dst.
            return [(socket.IPPROTO_IP, IP_PKTINFO, b"\x00\x00\x00\x00" + data[8:12] + b"\x00\x00\x00\x00")]
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= _V6_PKTINFO:
            return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, data[:16] + b"\x00\x00\x00\x00")]
    return []


def send_from(server, source: list, reply: bytes | None, addr) -> None:
    """A reply (None: nothing to send) from ``source`` (sendmsg's ancillary
    list) on either wildcard transport's socket."""
    if reply is None or server.fd < 0:
        return
    try:
        server.sock.sendmsg([reply], source, 0, addr)
    except OSError:  # buffer full, client gone, or the address left the node
        server.unsent += 1


class Source:
    """Replies from one destination of the socket (``ancillary``: sendmsg's
    list, ``source_for``), and the query path's ``via`` for a datagram sent
    there (its ref: the client's address)."""
    __slots__ = ("server", "ancillary")

    def __init__(self, server, ancillary: list):
        self.server, self.ancillary = server, ancillary

    @staticmethod
    def client_of(addr):
        return addr

    def sender_of(self, addr):
        return self.send

    def send(self, reply: bytes | None, addr) -> None:
        send_from(self.server, self.ancillary, reply, addr)


class WildcardUdpServer:
    def __init__(self, path, sock: socket.socket):
        self.path = path
        self.dispatch = path.dispatch
        self.sock = sock
        self.fd = sock.fileno()
        ask_destinations(sock)  # idempotent: an adopted socket has it already
        self.buffer = bytearray(SLOT)
        self.view = memoryview(self.buffer)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reading = False
        self.unsent = 0
        self.throttle = Throttle(log)  # a failed query's traceback (observe.ratelog)
        self.sources = Sources(self)

    def events(self) -> dict[str, int]:
        return {"udp_reply_unsent": self.unsent}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.add_reader(self.fd, self.readable)
        self.reading = True

    def stop_reading(self) -> None:
        """Queued datagrams stay in the kernel for a successor; replies still
        being worked on go out on the same socket."""
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def close(self) -> None:
        self.stop_reading()
        if self.fd >= 0:
            self.sock.close()
            self.fd = -1

    def fileno(self) -> int | None:
        return self.fd if self.reading else None

    def sockname(self):
        return self.sock.getsockname()

    def readable(self) -> None:
        try:
            size, ancillary, _, addr = self.sock.recvmsg_into([self.buffer], ANCILLARY)
        except OSError:  # nothing after all, or an ICMP error queued on the socket
            return
        answer_from(self, self.view[:size].tobytes(), addr, self.sources.of(ancillary))

    def send(self, reply: bytes | None, addr) -> None:
        """A reply with no known destination: routing picks its source."""
        send_from(self, [], reply, addr)


class Sources:
    """A ``Source`` for each pktinfo the kernel reports, made once per
    destination (address, and the interface the query came in on):
    ``MEMO_LIMIT`` at most, then forgotten at once."""

    def __init__(self, server):
        self.server = server
        self.memo: dict[bytes, Source] = {}

    def of(self, ancillary: list) -> Source:
        key = ancillary[0][2] if ancillary else b""
        source = self.memo.get(key)
        if source is None:
            if len(self.memo) >= MEMO_LIMIT:
                self.memo.clear()
            source = self.memo[key] = Source(self.server, source_for(ancillary))
        return source


def answer_from(server, query: bytes, addr, source: Source) -> None:
    """One datagram's answer, sent from ``source`` (``server``: either
    wildcard transport: its ``dispatch`` and ``throttle``)."""
    try:
        reply = server.dispatch(query, "udp", source, addr)
    except Exception as exc:  # a bug costs this datagram only
        server.throttle.error("query", "udp query failed", exc_info=exc)
        return
    if reply is not None:
        source.send(reply, addr)


def _ancillary(raw) -> list:
    """recvmsg's form, [(level, type, data)], of one control message's bytes."""
    if len(raw) < _CMSG_HEADER:
        return []
    length = int.from_bytes(raw[:8], sys.byteorder)
    level = int.from_bytes(raw[8:12], sys.byteorder)
    kind = int.from_bytes(raw[12:16], sys.byteorder)
    return [(level, kind, bytes(raw[_CMSG_HEADER:min(length, len(raw))]))]


def _reply_control(received: bytes) -> bytes:
    """The control message that sends a reply from the destination in
    ``received`` (a pktinfo control message): interface index 0 (routing
    chooses), and for IPv4 the destination as ``ipi_spec_dst``."""
    if len(received) < _CMSG_HEADER + _V4_PKTINFO:
        return b""
    out = bytearray(received)
    if int.from_bytes(received[8:12], sys.byteorder) == socket.IPPROTO_IP:
        out[16:20] = b"\x00\x00\x00\x00"
        out[20:24] = received[24:28]
    elif len(received) >= _CMSG_HEADER + _V6_PKTINFO:
        out[32:36] = b"\x00\x00\x00\x00"
    return bytes(out)


class WildcardBatchServer(BatchUdpServer):
    """``server.udpbatch``'s transport on a socket bound to every address:
    the same read modes, each reply sent from its query's destination."""

    def __init__(self, path, sock: socket.socket, cork=None):
        super().__init__(path, sock, cork)
        ask_destinations(sock)
        self.wild = True
        self.rx_ctl = ctypes.create_string_buffer(BATCH * CTL)
        self.tx_ctl = ctypes.create_string_buffer(BATCH * CTL)
        self.rx_view = memoryview(self.rx_ctl).cast("B")
        self.tx_view = memoryview(self.tx_ctl).cast("B")
        rx_at, tx_at = ctypes.addressof(self.rx_ctl), ctypes.addressof(self.tx_ctl)
        for k in range(BATCH):
            self.rx.q[k * Q_PER + Q_CONTROL] = rx_at + k * CTL
            self.tx.q[k * Q_PER + Q_CONTROL] = tx_at + k * CTL
        self.received = BATCH
        self.ready_controls()
        # made once per destination (address, and the interface the query came in on): MEMO_LIMIT at most
        self.controls: dict[bytes, bytes] = {}   # received control message -> the reply's
        self.sources = Sources(self)
        self.inboxes = [self.inbox]
        self.recvmsg_into = sock.recvmsg_into

    def ready_controls(self) -> None:
        """Before each recvmmsg: the slots the last one filled get their
        control buffer's full length back (the kernel wrote what it used)."""
        q = self.rx.q
        for k in range(self.received):
            q[k * Q_PER + Q_CONTROLLEN] = CTL
        self.received = 0

    def reply_from(self, k: int, slot: int) -> None:
        """Queued reply ``slot`` leaves from datagram ``k``'s destination: the
        control message that says so, made once per destination (a node
        has a few) from the pktinfo the kernel reported."""
        length = self.rx.q[k * Q_PER + Q_CONTROLLEN]
        at = k * CTL
        received = self.rx_view[at:at + length].tobytes()
        reply_control = self.controls.get(received)
        if reply_control is None:
            if len(self.controls) >= MEMO_LIMIT:
                self.controls.clear()
            reply_control = self.controls[received] = _reply_control(received)
        at = slot * CTL
        self.tx_view[at:at + len(reply_control)] = reply_control
        self.tx.q[slot * Q_PER + Q_CONTROLLEN] = len(reply_control)

    def sender_of(self, k: int):
        """``send`` for a miss of datagram ``k`` of a batch: from its destination."""
        raw = self.rx_view[k * CTL:k * CTL + min(self.rx.q[k * Q_PER + Q_CONTROLLEN], CTL)]
        return Source(self, source_for(_ancillary(raw))).send

    def readable_one(self) -> None:
        try:
            size, ancillary, _, addr = self.recvmsg_into(self.inboxes, ANCILLARY)
        except OSError:
            return
        self.datagrams += 1
        if self.datagrams - self.paced >= PACE:
            self._pace()
        answer_from(self, self.inbox[:size].tobytes(), addr, self.sources.of(ancillary))

    def _queued_source(self, k: int) -> list:
        """Queued reply k's control message (``reply_from``), as sendmsg takes it."""
        return _ancillary(self.tx_view[k * CTL:k * CTL + self.tx.q[k * Q_PER + Q_CONTROLLEN]])

    def _send_one(self, k: int) -> bool:
        reply, addr = self._queued(k)
        try:
            self.sock.sendmsg([reply], self._queued_source(k), 0, addr)
        except OSError:
            return False
        return True

    def _send_each(self, first: int, count: int) -> None:
        for k in range(first, count):
            send_from(self, self._queued_source(k), *self._queued(k))

    def close(self) -> None:
        super().close()
        for view in (self.rx_view, self.tx_view):
            view.release()
