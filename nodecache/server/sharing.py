"""Ports we share with another server: leaving them, and holding them alone.

When a listener binds an address another process still serves (node-cache
during a migration, an agent that found no handoff socket), ``reuseport``
joins the group and steers it to our socket. Steering is right while we
serve and wrong the moment we stop, and it outlives its reason:

* **Leaving while the other serves** (our exit during a migration, a
  rollback to node-cache, a swap that failed half way): a stopping agent
  keeps its UDP socket open while it drains, to send the replies still in
  flight. Steered to us, the group kept queueing new datagrams on a socket
  nobody reads any more: 181 of 800 queries were lost in a 4 s drain while
  node-cache was there to answer them. ``release`` takes each shared UDP
  socket out of the group's choice the moment we stop reading, and keeps
  it for sending: it ``connect``s it to our own address's discard port.
  The kernel never delivers to a connected member of a reuseport group a
  datagram from another peer (it scores the group again without it), so
  every new query reaches the other server, and replies still go out with
  ``sendto`` from our address. (A socket bound to every address cannot be
  connected without losing its other addresses: its group's steering is
  detached instead and the kernel's hash shares the traffic.) TCP
  listeners leave the group when they close, at the start of the drain.
* **Alone at last** (the migration done): the program stays on the group
  and would take every datagram to whichever socket now sits at its index;
  a later joiner of the same user would be steered nothing, or everything.
  ``settle`` looks at the group's members (``reuseport.holders``) and
  detaches the program (``SO_DETACH_REUSEPORT_BPF``) once only our sockets
  hold the address, so a later joiner finds the kernel's plain sharing, as
  docs/migrate.md says.
* **The other server leaving socket by socket** (CoreDNS ``multisocket``,
  several sockets per address): the kernel keeps a group's members dense
  by moving its last member, us, into a leaver's slot, and our program's
  index then points past the group: the kernel's hash spread the queries
  over the exiting process's other sockets (~45% of them). Which slot we
  moved to cannot be read anywhere, so ``settle``, seeing the members
  shrink, finds it: it steers to each index in turn (ours is likeliest
  high: we joined last) and sends a probe query to the address; the index
  whose probe arrives on our socket is ours. Queries queued on our socket
  meanwhile are answered as the reader would (``answer``), and a probe
  that reaches the other server is an ordinary query it answers.

Every operation works on a duplicate of the listener's descriptor: the
same socket, so nothing a successor holds is disturbed.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import socket

from ..dns.wire import make_query, question_bytes
from . import reuseport

log = logging.getLogger("nodecache")
DISCARD = 9          # the port a released socket is connected to: nobody sends from it
SETTLE_EVERY = 0.2   # seconds between looks while a port is shared


def _dup(fd: int) -> socket.socket:
    return socket.socket(fileno=os.dup(fd))


def _inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


class Shared:
    """One address:port we hold with someone else: our descriptors, and the
    other members we last saw."""
    __slots__ = ("addr", "port", "udp_fd", "tcp_fd", "others")

    def __init__(self, addr: str, port: int, udp_fd: int | None, tcp_fd: int | None, others: set[int]):
        self.addr, self.port, self.udp_fd, self.tcp_fd, self.others = addr, port, udp_fd, tcp_fd, others

    def ours(self) -> set[int]:
        return {_inode(fd) for fd in (self.udp_fd, self.tcp_fd) if fd is not None}

    def current_others(self) -> set[int]:
        family = _family(self.addr)
        members = (reuseport.holders(socket.SOCK_DGRAM, family, self.addr, self.port)
                   | reuseport.holders(socket.SOCK_STREAM, family, self.addr, self.port))
        return members - self.ours()

    def udp_others(self) -> int:
        return len(reuseport.holders(socket.SOCK_DGRAM, _family(self.addr), self.addr, self.port)
                   - self.ours())


def shared_ports(listening: list[tuple[str, int, str, int]]) -> list[Shared]:
    """The listeners (``Agent.listening_sockets``) whose address another socket serves too."""
    by_addr: dict[tuple[str, int], dict[str, int]] = {}
    for addr, port, kind, fd in listening:
        if kind in ("udp", "tcp"):
            by_addr.setdefault((addr, port), {})[kind] = fd
    out = []
    for (addr, port), fds in by_addr.items():
        entry = Shared(addr, port, fds.get("udp"), fds.get("tcp"), set())
        entry.others = entry.current_others()
        if entry.others:
            out.append(entry)
    return out


def release(entries: list[Shared]) -> None:
    """Our exit while others serve: no new datagram for our sockets (see the top)."""
    for entry in entries:
        if entry.udp_fd is None:
            continue
        with _dup(entry.udp_fd) as sock:
            host = sock.getsockname()[0]
            if host in ("0.0.0.0", "::"):
                _detach(sock)
                log.info("leaving %s:%d to the other server shared by the kernel's hash (a socket on every "
                         "address cannot be connected)", entry.addr, entry.port)
                continue
            sock.connect((host, DISCARD))
        log.info("leaving %s:%d to the other server that holds it: new queries go there", entry.addr, entry.port)


def _detach(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, reuseport.SO_DETACH_REUSEPORT_BPF, 0)
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # no program attached: nothing to detach
            raise


def settle(entries: list[Shared], answers: dict) -> list[Shared]:
    """One look at each shared port; returns those still shared.
    ``answers``: (addr, port) -> the listener's ``answer(data, addr)``, for
    the UDP transports that can take a datagram read elsewhere."""
    still = []
    for entry in entries:
        others = entry.current_others()
        if not others:
            for fd in (entry.udp_fd, entry.tcp_fd):
                if fd is not None:
                    with _dup(fd) as sock:
                        _detach(sock)
            log.info("%s:%d is ours alone now: steering detached (a later joiner shares by hash)",
                     entry.addr, entry.port)
            continue
        answer = answers.get((entry.addr, entry.port))
        if others < entry.others and entry.udp_fd is not None and answer is not None:
            resteer(entry, answer)
        entry.others = others
        still.append(entry)
    return still


PROBE_QUESTION = question_bytes("steering-probe.nodecache.invalid", 1)  # RFC 6761: exists nowhere


def probe_query() -> bytes:
    """A query with a random ID: the bytes that say "this arrived on our socket"."""
    return make_query(int.from_bytes(os.urandom(2), "big"), PROBE_QUESTION)


def resteer(entry: Shared, answer, limit: float = 0.005) -> int | None:
    """After a member left, find our index in the UDP group and steer to it
    (see the top); ``answer(data, addr)`` takes the queries read off our
    socket on the way. Returns the index, or None when no index brought the
    probe (the kernel's hash then shares the traffic until the next look)."""
    members = entry.udp_others() + 1
    with _dup(entry.udp_fd) as ours, socket.socket(_family(entry.addr), socket.SOCK_DGRAM) as client:
        for index in range(members - 1, -1, -1):
            reuseport.steer_to(ours, index)
            probe = probe_query()
            client.sendto(probe, (entry.addr, entry.port))
            if _arrived(ours, probe, answer, limit):
                return index
    log.warning("%s:%d: could not find our place in the shared group: the kernel shares it by hash",
                entry.addr, entry.port)
    return None


def _arrived(sock: socket.socket, probe: bytes, answer, limit: float) -> bool:
    """Read ``sock`` until ``probe`` comes; every other datagram read is a
    query, given to ``answer``. A local datagram is queued before sendto
    returns, so an empty socket is waited for ``limit`` at most, once: this
    runs on the event loop."""
    waited = False
    while True:
        try:
            data, addr = sock.recvfrom(65535, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if waited or not select.select([sock], [], [], limit)[0]:
                return False
            waited = True
            continue
        if data == probe:
            return True
        answer(data, addr)
