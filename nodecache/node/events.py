"""Reconcile at once when someone removes what we keep (netlink events).

The reconcile loop (``node.reconcile``) puts the interface, its addresses
and our rules back every ``-syncinterval``, 60 s by default as node-cache.
That is too slow for the one removal we can predict: during a migration
node-cache serves beside us (``server.reuseport``), and on SIGTERM it
deletes the ``nodelocaldns`` interface it created, which takes our
addresses with it, and its rules. Until we restore the interface, pods'
packets to the link-local address have nowhere to go.

So while we own the node we also listen to the kernel's change events,
and a removal of something ours starts a reconcile within
``SETTLE`` seconds:

* rtnetlink (``RTMGRP_LINK``, ``RTMGRP_IPV4_IFADDR``, ``RTMGRP_IPV6_IFADDR``):
  ``RTM_DELLINK`` of our interface, ``RTM_DELADDR`` of one of our local IPs;
* nfnetlink (``NFNLGRP_NFTABLES``): a rule, chain or table deleted in the
  tables our rules live in (iptables-nft's ``raw``/``filter``/``nat`` base
  chains, our nftables table ``nodecache``). kube-proxy rewrites its own
  chains all the time; those events are read and ignored.

Only deletions count: our own repairs create things, so they never feed
back. The parsers are pure functions over the bytes of one ``recv``. The
kernel drops events when a socket's buffer overflows (``ENOBUFS``): we
may have missed a removal, so that also starts a reconcile. A legacy
(non-nf_tables) iptables sends no events: there the interval decides.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct

log = logging.getLogger("nodecache.node")

NETLINK_ROUTE, NETLINK_NETFILTER = 0, 12
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
NFNLGRP_NFTABLES = 7
RTM_DELLINK, RTM_DELADDR = 17, 21
IFLA_IFNAME, IFA_ADDRESS, IFA_LOCAL = 3, 1, 2
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_DELTABLE, NFT_MSG_DELCHAIN, NFT_MSG_DELRULE = 2, 5, 8
IPTABLES_TABLES = {"raw", "filter", "nat"}
BASE_CHAINS = {"PREROUTING", "INPUT", "OUTPUT"}
NFT_TABLE = "nodecache"
SETTLE = 0.01  # a removal comes as a burst (a link takes its addresses): one reconcile for it


def messages(data: bytes):
    """(type, payload) of each netlink message in one datagram."""
    off = 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, off)
        if length < 16 or off + length > len(data):
            return
        yield mtype, data[off + 16:off + length]
        off += (length + 3) & ~3


def attributes(data: bytes, off: int) -> dict[int, bytes]:
    """Netlink attributes from ``off`` on: type (flags masked) -> value."""
    out = {}
    while off + 4 <= len(data):
        length, atype = struct.unpack_from("=HH", data, off)
        if length < 4 or off + length > len(data):
            break
        out[atype & 0x3FFF] = data[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def _text(value: bytes | None) -> str:
    return (value or b"").split(b"\0", 1)[0].decode("ascii", "replace")


def route_removal(data: bytes, interface: str, ips: frozenset[str]) -> str | None:
    """What of ours an rtnetlink datagram says was removed, or None."""
    for mtype, body in messages(data):
        if mtype == RTM_DELLINK and len(body) >= 16:
            if _text(attributes(body, 16).get(IFLA_IFNAME)) == interface:
                return f"interface {interface} deleted"
        elif mtype == RTM_DELADDR and len(body) >= 8:
            family = socket.AF_INET if body[0] == socket.AF_INET else socket.AF_INET6
            attrs = attributes(body, 8)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            # an address whose length is not its family's is not one: skip
            # that message, read the rest of the datagram
            if raw and len(raw) == (4 if family == socket.AF_INET else 16):
                addr = socket.inet_ntop(family, raw)
                if addr in ips:
                    return f"address {addr} deleted"
    return None


def netfilter_removal(data: bytes) -> str | None:
    """Whether an nfnetlink datagram deletes something in the tables and
    chains our rules live in (see the top), as a description, else None."""
    for mtype, body in messages(data):
        if mtype >> 8 != NFNL_SUBSYS_NFTABLES or len(body) < 4:
            continue
        msg, attrs = mtype & 0xFF, attributes(body, 4)
        if msg == NFT_MSG_DELTABLE:
            table, chain = _text(attrs.get(1)), None
        elif msg == NFT_MSG_DELCHAIN:
            table, chain = _text(attrs.get(1)), _text(attrs.get(3))
        elif msg == NFT_MSG_DELRULE:
            table, chain = _text(attrs.get(1)), _text(attrs.get(2))
        else:
            continue
        if table == NFT_TABLE or (table in IPTABLES_TABLES and (chain is None or chain in BASE_CHAINS)):
            what = {NFT_MSG_DELTABLE: "table", NFT_MSG_DELCHAIN: "chain", NFT_MSG_DELRULE: "rule"}[msg]
            return f"a {what} deleted in {table}{' ' + chain if chain else ''}"
    return None


def _open(protocol: int, groups: int = 0, member: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, groups))
        if member is not None:
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, member)
    except OSError:
        sock.close()
        raise
    return sock


async def watch(interface: str, ips: frozenset[str], rules: bool, on_removal) -> None:
    """Until cancelled: call ``on_removal(why)`` for each removal of ours
    (bursts within SETTLE seconds coalesced into one call)."""
    loop = asyncio.get_running_loop()
    pending: list[str] = []
    socks = []

    def readable(sock: socket.socket, parse) -> None:
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.warning("netlink events stopped (%s): repairs wait for the next reconcile", exc)
                    loop.remove_reader(sock.fileno())
                    return
                why = "events were dropped (netlink buffer full)"
            else:
                why = parse(data)
            if why is not None:
                if not pending:
                    loop.call_later(SETTLE, flush)
                pending.append(why)

    def flush() -> None:
        reasons = list(dict.fromkeys(pending))
        pending.clear()
        on_removal("; ".join(reasons))

    try:
        socks.append((_open(NETLINK_ROUTE, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR),
                      lambda d: route_removal(d, interface, ips)))
        if rules:
            try:
                socks.append((_open(NETLINK_NETFILTER, member=NFNLGRP_NFTABLES), netfilter_removal))
            except OSError as exc:
                log.info("no nf_tables events (%s): rules removed by others return at the next reconcile", exc)
        for sock, parse in socks:
            loop.add_reader(sock.fileno(), readable, sock, parse)
        await asyncio.Event().wait()
    except OSError as exc:
        log.warning("cannot watch netlink for removals (%s): repairs wait for the next reconcile", exc)
        await asyncio.Event().wait()
    finally:
        for sock, _ in socks:
            loop.remove_reader(sock.fileno())
            sock.close()
