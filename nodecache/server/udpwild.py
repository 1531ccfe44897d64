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
the batched transport (``server.udpbatch``) at no cost. One datagram per
wakeup: same interface as the other transports (``start``, ``send``,
``stop_reading``, ``fileno``, ``close``); a miss's later reply carries its
source in the ``send`` it was given.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from functools import partial

from ..observe.ratelog import Throttle

log = logging.getLogger("nodecache.udp")

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 does not export it
SLOT = 1 << 16
_V4_PKTINFO, _V6_PKTINFO = 12, 20  # struct in_pktinfo, struct in6_pktinfo
ANCILLARY = socket.CMSG_SPACE(_V6_PKTINFO) + socket.CMSG_SPACE(_V4_PKTINFO)


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


class WildcardUdpServer:
    def __init__(self, path, sock: socket.socket):
        self.path = path
        self.hit, self.miss = path.hit, path.miss
        self.sock = sock
        self.fd = sock.fileno()
        ask_destinations(sock)  # idempotent: an adopted socket has it already
        self.buffer = bytearray(SLOT)
        self.view = memoryview(self.buffer)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reading = False
        self.unsent = 0
        self.throttle = Throttle(log)  # a failed query's traceback (observe.ratelog)

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
        source = source_for(ancillary)
        try:
            query = self.view[:size].tobytes()
            reply = self.hit(query)
            if reply.__class__ is not bytes:
                reply = self.miss(reply, query, addr, partial(self.send_from, source))
                if reply is None:
                    return
        except Exception as exc:  # a bug costs this datagram only
            self.throttle.error("query", "udp query failed", exc_info=exc)
            return
        self.send_from(source, reply, addr)

    def send_from(self, source: list, reply: bytes | None, addr) -> None:
        if reply is None or self.fd < 0:
            return
        try:
            self.sock.sendmsg([reply], source, 0, addr)
        except OSError:  # buffer full, client gone, or the address left the node
            self.unsent += 1

    def send(self, reply: bytes | None, addr) -> None:
        """A reply with no known destination: routing picks its source."""
        self.send_from([], reply, addr)
