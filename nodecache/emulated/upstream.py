"""An emulated cluster DNS: what kube-dns/CoreDNS answers inside a cluster.

Used by ``nodecache demo``, by the tests and by the benchmarks, and runnable
on its own (``nodecache fake-upstream``). It is authoritative for the
cluster domain:

* ``svc-N.NS.svc.<domain>`` (N below ``services``, NS in ``namespaces``),
  ``kubernetes.default`` and ``kube-dns.kube-system``: A (10.96.0.0/12),
  AAAA (fd00:10:96::/48), SRV (port 80, also as ``_http._tcp.SVC...``);
  other types NODATA;
* names between the domain and a service (``NS.svc.<domain>``) exist with
  no data (NODATA, RFC 8020); anything else under the domain is NXDOMAIN;
* both with the SOA in the authority section (RFC 2308 §3).

Outside the cluster domain it plays "the internet": the RFC 2606 example
domains resolve to documentation addresses (192.0.2.0/24, 2001:db8::/32),
``many-N.example.com`` has N addresses of each family (N up to 250),
``cname-N.example.com`` is a chain of N CNAMEs ending at ``www``, and
``big-N.example.com`` TXT returns N 100-byte strings (to exercise
truncation; an answer longer than 65,535 bytes, N above 579, is
REFUSED: no DNS message can carry it), PTR for the service range maps back to service names, and
everything else is NXDOMAIN under the root SOA. The addresses are answer
data only; nothing ever connects to them.

The server part (``FakeUpstream``) serves any answer function over UDP and
pipelined TCP, records what it was asked (transport, name, type), and can
add delay or drop queries, for scenario tests and benchmarks.
"""
from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import zlib
from dataclasses import dataclass
from typing import Callable

from dnslib import AAAA, CNAME, EDNS0, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSRecord

from ..dns.framing import FrameReader, FrameTooLarge, frame

EXAMPLE_ZONES = ("example.", "example.com.", "example.net.", "example.org.")
MAX_MESSAGE = 65535


def _hash(text: str) -> int:
    return zlib.crc32(text.encode()) & 0xFFFF


class ClusterDNS:
    def __init__(self, domain: str = "cluster.local", services: int = 100,
                 namespaces: tuple[str, ...] = ("default", "other", "kube-system"),
                 ttl: int = 30, negative_ttl: int = 30):
        self.domain = domain.strip(".").lower() + "."
        self.services = services
        self.namespaces = namespaces
        self.ttl, self.negative_ttl = ttl, negative_ttl
        self.extra = {f"kubernetes.default.svc.{self.domain}", f"kube-dns.kube-system.svc.{self.domain}"}

    # -- data ---------------------------------------------------------
    def service_exists(self, name: str) -> bool:
        if name in self.extra:
            return True
        parts = name[: -len(self.domain)].split(".")
        if len(parts) != 4 or parts[2] != "svc" or parts[1] not in self.namespaces:
            return False
        svc = parts[0]
        return svc.startswith("svc-") and svc[4:].isdigit() and int(svc[4:]) < self.services

    def cluster_ip(self, name: str) -> str:
        h = _hash(name)
        return f"10.96.{h >> 8}.{h & 255}"

    def _soa(self, zone: str) -> RR:
        mname = f"ns.dns.{zone}" if zone != "." else "a.root-servers.net."
        return RR(zone, QTYPE.SOA, ttl=self.negative_ttl, rdata=SOA(
            mname, f"hostmaster.{zone}".replace("..", "."), (1, 7200, 1800, 86400, self.negative_ttl)))

    # -- answering ----------------------------------------------------
    def answer(self, data: bytes) -> bytes | None:
        try:
            req = DNSRecord.parse(data)
        except Exception:
            return None  # a real server drops what it cannot parse
        reply = req.reply(ra=1, aa=1)
        reply.header.ad = 0  # dnslib copies the query's flags: AD is ours to set (never, unsigned data)
        q = req.q
        name = str(q.qname).lower()
        if name.endswith("." + self.domain) or name == self.domain:
            self._cluster(reply, name, q.qtype)
        elif name.endswith(".in-addr.arpa."):
            self._ptr(reply, name)
        else:
            self._internet(reply, name, q.qtype)
        opt = next((r for r in req.ar if r.rtype == QTYPE.OPT), None)
        if opt is not None:  # RFC 6891 §7: answer OPT with OPT; RFC 3225 §3: DO copied
            reply.add_ar(EDNS0(udp_len=1232, flags="do" if opt.ttl & 0x8000 else ""))
        out = reply.pack()
        if len(out) > MAX_MESSAGE:  # no DNS message is longer (RFC 1035 §4.2.2's length field)
            return _refusal(req, opt is not None)
        return out

    def _cluster(self, reply: DNSRecord, name: str, qtype: int) -> None:
        target = name
        if name.startswith("_"):  # _port._proto.svc.ns.svc.domain
            target = name.split(".", 2)[2]
            if not self.service_exists(target):
                return self._nx(reply, self.domain)
            if qtype == QTYPE.SRV:
                reply.add_answer(RR(name, QTYPE.SRV, ttl=self.ttl, rdata=SRV(0, 100, 80, target)))
            else:
                reply.add_auth(self._soa(self.domain))
            return
        if self.service_exists(name):
            rdata = {QTYPE.A: lambda: A(self.cluster_ip(name)),
                     QTYPE.AAAA: lambda: AAAA(f"fd00:10:96::{_hash(name):x}"),
                     QTYPE.SRV: lambda: SRV(0, 100, 80, name)}.get(qtype)
            if rdata is not None:
                reply.add_answer(RR(name, qtype, ttl=self.ttl, rdata=rdata()))
            else:
                reply.add_auth(self._soa(self.domain))
            return
        if name == self.domain and qtype == QTYPE.SOA:
            reply.add_answer(self._soa(self.domain))
            return
        if self._empty_non_terminal(name):
            reply.add_auth(self._soa(self.domain))
            return
        self._nx(reply, self.domain)

    def _empty_non_terminal(self, name: str) -> bool:
        rest = name[: -len(self.domain)].rstrip(".")
        parts = rest.split(".") if rest else []
        return parts == [] or parts == ["svc"] or (len(parts) == 2 and parts[1] == "svc"
                                                    and parts[0] in self.namespaces)

    def _ptr(self, reply: DNSRecord, name: str) -> None:
        octets = name[: -len(".in-addr.arpa.")].split(".")[::-1]
        try:
            ip = str(ipaddress.IPv4Address(".".join(octets)))
        except ValueError:
            return self._nx(reply, "in-addr.arpa.")
        for ns in self.namespaces:
            for n in range(self.services):
                svc = f"svc-{n}.{ns}.svc.{self.domain}"
                if self.cluster_ip(svc) == ip:
                    reply.add_answer(RR(name, QTYPE.PTR, ttl=self.ttl, rdata=PTR(svc)))
                    return
        self._nx(reply, "in-addr.arpa.")

    def _internet(self, reply: DNSRecord, name: str, qtype: int) -> None:
        zone = next((z for z in EXAMPLE_ZONES if name == z or name.endswith("." + z)), None)
        if zone is None:
            return self._nx(reply, ".")
        h = _hash(name)
        label = name.split(".")[0]
        number = label.partition("-")[2]
        number = int(number) if number.isdigit() else -1
        if label.startswith("cname-") and 0 < number <= 8:  # a chain of CNAMEs, then the address
            target = name.replace(label, f"cname-{number - 1}" if number > 1 else "www", 1)
            reply.add_answer(RR(name, QTYPE.CNAME, ttl=self.ttl, rdata=CNAME(target)))
            if qtype != QTYPE.CNAME:
                self._internet(reply, target, qtype)
            return
        if label.startswith("many-") and 0 < number <= 250 and qtype in (QTYPE.A, QTYPE.AAAA):
            for i in range(1, number + 1):
                rdata = A(f"192.0.2.{i}") if qtype == QTYPE.A else AAAA(f"2001:db8::{i:x}")
                reply.add_answer(RR(name, qtype, ttl=self.ttl, rdata=rdata))
            return
        if qtype == QTYPE.A:
            reply.add_answer(RR(name, QTYPE.A, ttl=self.ttl, rdata=A(f"192.0.2.{h % 254 + 1}")))
        elif qtype == QTYPE.AAAA:
            reply.add_answer(RR(name, QTYPE.AAAA, ttl=self.ttl, rdata=AAAA(f"2001:db8::{h:x}")))
        elif qtype == QTYPE.TXT and label.startswith("big-") and label[4:].isdigit():
            for i in range(min(int(label[4:]), 600)):
                reply.add_answer(RR(name, QTYPE.TXT, ttl=self.ttl, rdata=TXT(f"{i:03d}" + "x" * 97)))
        else:
            reply.add_auth(self._soa(zone))

    def _nx(self, reply: DNSRecord, zone: str) -> None:
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(self._soa(zone))


@dataclass
class Seen:
    proto: str
    name: str
    qtype: int
    qid: int
    client: str = ""
    question: bytes = b""  # the name's wire bytes as sent (names dnslib cannot read included)


class FakeUpstream:
    """Serves ``answer(query) -> reply | None`` on UDP and TCP.

    ``delay`` (seconds, or a function of the query) comes before every reply, ``drop`` is the chance a
    query goes unanswered; UDP replies too big for the client are sent
    with TC=1 and no records, as a real server does.

    ``sever = (how, n, conns)`` plays a replica going away under pipelined
    queries: each of the first ``conns`` TCP connections is cut when its
    ``n``-th query arrives, with nothing it carries answered; ``how`` is
    "reset" (RST, as a killed process) or "close" (FIN, as a clean exit).
    """

    def __init__(self, answer: Callable[[bytes], bytes | None] | None = None,
                 delay: float | Callable[[bytes], float] = 0.0, drop: float = 0.0,
                 udp_limit: int | None = None, log_path: str | None = None,
                 record: bool = True, sever: tuple[str, int, int] | None = None):
        self.answer = answer or ClusterDNS().answer
        self.delay, self.drop = delay, drop
        self.udp_limit = udp_limit
        self.log_file = open(log_path, "a", buffering=1) if log_path else None
        self.seen: list[Seen] = []
        self.record = record  # keep ``seen`` (tests); a long-running server does not
        self.queries = 0
        self.udp_transport = None
        self.tcp_server = None
        self.tcp_connections = 0
        self.tcp_conns: set[asyncio.Transport] = set()
        self.port = 0
        self.host = ""
        self.tasks: set[asyncio.Task] = set()
        self.sever = sever
        self.severed = 0
        self.udp_ports: set[int] = set()  # source ports UDP queries came from

    def _record(self, proto: str, data: bytes, client: str = "") -> None:
        self.queries += 1
        if not self.record and self.log_file is None:
            return
        try:
            q = DNSRecord.parse(data).q
            seen = Seen(proto, str(q.qname).lower(), q.qtype, data[0] << 8 | data[1], client)
        except Exception:
            seen = Seen(proto, "", -1, -1, client)
        if self.record:
            zero = data.find(0, 12)
            seen.question = data[12:zero + 1] if zero > 0 else b""
            self.seen.append(seen)
        if self.log_file is not None:
            self.log_file.write(f"{seen.proto} {seen.client} {seen.qtype} {seen.name}\n")

    async def reply_for(self, proto: str, data: bytes, client: str = "") -> bytes | None:
        self._record(proto, data, client)
        if self.drop and random.random() < self.drop:
            return None
        delay = self.delay(data) if callable(self.delay) else self.delay
        if delay:
            await asyncio.sleep(delay)
        out = self.answer(data)
        if out is not None and proto == "udp" and len(out) > self._limit(data):
            out = _truncate(out)
        return out

    def _limit(self, data: bytes) -> int:
        if self.udp_limit is not None:
            return self.udp_limit
        try:
            req = DNSRecord.parse(data)
        except Exception:
            return 512
        opt = [r for r in req.ar if r.rtype == QTYPE.OPT]
        return max(512, opt[0].rclass) if opt else 512

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (``::`` = both families); port 0 = any free one."""
        from ..server.agent import make_sockets
        loop = asyncio.get_running_loop()
        for _ in range(20):  # port 0: the UDP port may be taken for TCP; try another
            try:
                udp, tcp = make_sockets(host, port)
                break
            except OSError:
                if port:
                    raise
        self.udp_transport, _ = await loop.create_datagram_endpoint(lambda: _FakeUdp(self), sock=udp)
        self.tcp_server = await loop.create_server(lambda: _FakeTcp(self), sock=tcp)
        self.host, self.port = host, udp.getsockname()[1]
        return self.port

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        if self.udp_transport is not None:
            self.udp_transport.close()
        if self.tcp_server is not None:
            self.tcp_server.close()
        for transport in list(self.tcp_conns):
            transport.abort()
        for task in list(self.tasks):
            task.cancel()

    def raw_questions(self) -> list[bytes]:
        return [s.question for s in self.seen]

    def names(self, proto: str | None = None) -> list[str]:
        return [s.name for s in self.seen if proto is None or s.proto == proto]


def _refusal(req: DNSRecord, edns: bool) -> bytes:
    """REFUSED for an answer too long for any DNS message."""
    reply = req.reply(ra=1, aa=1)
    reply.header.ad = 0
    reply.header.rcode = RCODE.REFUSED
    if edns:
        reply.add_ar(EDNS0(udp_len=1232))
    return reply.pack()


def _truncate(reply: bytes) -> bytes:
    rec = DNSRecord.parse(reply)
    rec.header.tc = 1
    rec.rr, rec.auth, rec.ar = [], [], []
    return rec.pack()


class _FakeUdp(asyncio.DatagramProtocol):
    def __init__(self, server: FakeUpstream):
        self.server = server

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.server.udp_ports.add(addr[1])
        self.server.spawn(self._reply(data, addr))

    async def _reply(self, data, addr):
        out = await self.server.reply_for("udp", data, str(addr[0]))
        if out is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)


class _FakeTcp(asyncio.Protocol):
    def __init__(self, server: FakeUpstream):
        self.server = server
        self.reader = FrameReader()

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # as real servers do (Go's net sets it on every TCP connection: CoreDNS):
            # without it, two replies written back to back wait for a delayed ACK (40 ms)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer = str((transport.get_extra_info("peername") or ("",))[0])
        self.server.tcp_connections += 1
        self.index = self.server.tcp_connections
        self.received = 0
        self.server.tcp_conns.add(transport)

    def connection_lost(self, exc):
        self.server.tcp_conns.discard(self.transport)

    def data_received(self, data):
        try:
            for msg in self.reader.feed(data):
                self.received += 1
                if self._severed():
                    return
                self.server.spawn(self._reply(msg))
        except FrameTooLarge:
            self.transport.abort()

    def _severed(self) -> bool:
        sever = self.server.sever
        if sever is None or self.index > sever[2] or self.received < sever[1]:
            return False
        self.server.severed += 1
        if sever[0] == "reset":
            self.transport.abort()
        else:
            self.transport.close()  # FIN; the replies still being built are never written
        return True

    async def _reply(self, msg):
        out = await self.server.reply_for("tcp", msg, self.peer)
        if out is not None and not self.transport.is_closing():
            self.transport.write(frame(out))
