"""A stand-in for node-cache (kubernetes/dns cmd/node-cache) on an emulated
node, for migration tests: ``python -m nodecache_lab.nodelocaldns``.

It does to the node what node-cache does, in the same order:

* start: the ``nodelocaldns`` interface (dummy; a port-less bridge on
  kernels without the dummy module) with the local IPs; sockets on each
  IP:53 (or on 0.0.0.0:53 with ``-bind-all``, a Corefile's ``bind
  0.0.0.0``), UDP and TCP, with SO_REUSEPORT (CoreDNS's reuseport
  listeners); then, unless ``-setupiptables=false``, its iptables rules,
  each inserted at the top of its chain and written exactly as
  node-cache's ``initIptables`` lists them (NOTRACK in raw
  PREROUTING/OUTPUT, ACCEPT in filter INPUT/OUTPUT, the NOTRACK of its
  ``-health-port``, 8080 unless told), with no comment;
* its health plugin on ``-health`` (HOST:PORT, the Corefile's; an empty
  host is every address) and its prometheus plugin on :9253 (plain
  listeners, as CoreDNS's HTTP servers: no SO_REUSEPORT);
* serving: each query relayed to the upstream (UDP or TCP as it came; the
  emulated cluster DNS answers small);
* SIGTERM: ``TeardownNetworking`` (the interface deleted, then every rule
  deleted), then exit, which closes its sockets.

It prints ``serving`` once its sockets and rules are in place.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import subprocess

HEALTH_PORT = "8080"


def node_cache_rules(ip: str, port: str = "53", health_port: str = HEALTH_PORT) -> list[tuple[str, str, list[str]]]:
    """(table, chain, args) of node-cache's rules for one local IP."""
    out = []
    for proto in ("tcp", "udp"):
        out.append(("raw", "PREROUTING", ["-p", proto, "-d", ip, "--dport", port, "-j", "NOTRACK"]))
    for proto in ("tcp", "udp"):
        out.append(("filter", "INPUT", ["-p", proto, "-d", ip, "--dport", port, "-j", "ACCEPT"]))
    for proto in ("tcp", "udp"):
        out.append(("raw", "OUTPUT", ["-p", proto, "-s", ip, "--sport", port, "-j", "NOTRACK"]))
    for proto in ("tcp", "udp"):
        out.append(("filter", "OUTPUT", ["-p", proto, "-s", ip, "--sport", port, "-j", "ACCEPT"]))
    for proto in ("tcp", "udp"):
        out.append(("raw", "OUTPUT", ["-p", proto, "-d", ip, "--dport", port, "-j", "NOTRACK"]))
    out.append(("raw", "OUTPUT", ["-p", "tcp", "-d", ip, "--dport", health_port, "-j", "NOTRACK"]))
    out.append(("raw", "OUTPUT", ["-p", "tcp", "-s", ip, "--sport", health_port, "-j", "NOTRACK"]))
    return out


def _tool(ip: str) -> str:
    return "ip6tables" if ":" in ip else "iptables"


def setup_interface(name: str, ips: list[str]) -> None:
    if subprocess.run(["ip", "link", "show", name], capture_output=True).returncode != 0:
        if subprocess.run(["ip", "link", "add", name, "type", "dummy"], capture_output=True).returncode != 0:
            subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    for ip in ips:
        subprocess.run(["ip", "addr", "replace", f"{ip}/{128 if ':' in ip else 32}", "dev", name,
                       *(["nodad"] if ":" in ip else [])], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)


def setup_rules(ips: list[str], health_port: str) -> None:
    for ip in ips:
        for table, chain, args in node_cache_rules(ip, health_port=health_port):
            base = [_tool(ip), "-w", "5", "-t", table]
            if subprocess.run(base + ["-C", chain, *args], capture_output=True).returncode != 0:
                subprocess.run(base + ["-I", chain, "1", *args], check=True)


def teardown(name: str, ips: list[str], health_port: str, rules: bool) -> None:
    """node-cache's TeardownNetworking: the interface, then its rules."""
    subprocess.run(["ip", "link", "del", name], capture_output=True)
    for ip in (ips if rules else ()):
        for table, chain, args in node_cache_rules(ip, health_port=health_port):
            base = [_tool(ip), "-w", "5", "-t", table]
            while subprocess.run(base + ["-D", chain, *args], capture_output=True).returncode == 0:
                pass


class Relay(asyncio.DatagramProtocol):
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        asyncio.get_running_loop().create_task(self._relay(data, addr, self.transport))

    async def _relay(self, data: bytes, addr, transport) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, self.upstream)
            for _ in range(2):
                await loop.sock_sendall(sock, data)
                try:
                    reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), 2.0)
                except asyncio.TimeoutError:
                    continue
                transport.sendto(reply, addr)
                return
        finally:
            sock.close()


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


class WildcardRelay(Relay):
    """On 0.0.0.0, each reply leaves from the address its query was sent
    to, as CoreDNS's does (IP_PKTINFO; RFC 5452 §9.1): clients drop any
    other. The transport's ``sendto`` cannot say which address, so replies
    go out with ``sendmsg`` on the socket itself."""

    def __init__(self, upstream: tuple[str, int], sock: socket.socket):
        super().__init__(upstream)
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)

    def _read(self) -> None:
        try:
            data, ancdata, _, addr = self.sock.recvmsg(65535, socket.CMSG_SPACE(12))
        except BlockingIOError:
            return
        dst = next((c[2][8:12] for c in ancdata if c[0] == socket.IPPROTO_IP and c[1] == IP_PKTINFO), None)
        self.transport = _FromAddress(self.sock, dst)
        self.datagram_received(data, addr)


class _FromAddress:
    """A transport whose ``sendto`` sends from one local address."""

    def __init__(self, sock: socket.socket, dst: bytes | None):
        self.sock, self.dst = sock, dst

    def sendto(self, data: bytes, addr) -> None:
        control = [] if self.dst is None else [(socket.IPPROTO_IP, IP_PKTINFO, b"\0" * 4 + self.dst + b"\0" * 4)]
        self.sock.sendmsg([data], control, 0, addr)


async def _tcp_client(reader, writer, upstream) -> None:
    try:
        while True:
            head = await reader.readexactly(2)
            query = await reader.readexactly(int.from_bytes(head, "big"))
            ur, uw = await asyncio.open_connection(*upstream)
            uw.write(head + query)
            rhead = await ur.readexactly(2)
            writer.write(rhead + await ur.readexactly(int.from_bytes(rhead, "big")))
            uw.close()
    except (asyncio.IncompleteReadError, OSError):
        pass
    finally:
        writer.close()


def _bound(ip: str, kind: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((ip, 53))
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    sock.setblocking(False)
    return sock


async def _http_ok(reader, writer) -> None:
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, OSError):
        pass
    finally:
        writer.close()


async def serve(args) -> int:
    ips = [ip for ip in args.localip.split(",") if ip]
    upstream = (args.upstream, 53)
    loop = asyncio.get_running_loop()
    setup_interface(args.interfacename, ips)
    for ip in ["0.0.0.0"] if args.bind_all else ips:
        if args.bind_all:
            WildcardRelay(upstream, _bound(ip, socket.SOCK_DGRAM))
        else:
            await loop.create_datagram_endpoint(lambda: Relay(upstream), sock=_bound(ip, socket.SOCK_DGRAM))
        await asyncio.start_server(lambda r, w: _tcp_client(r, w, upstream), sock=_bound(ip, socket.SOCK_STREAM))
    host, port = (args.health or f"{ips[0]}:{HEALTH_PORT}").rsplit(":", 1)
    http = [await asyncio.start_server(_http_ok, host or "0.0.0.0", int(port)),
            await asyncio.start_server(_http_ok, "0.0.0.0", 9253)]
    rules = args.setupiptables == "true"
    if rules:
        setup_rules(ips, args.health_port)
    print("serving", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    teardown(args.interfacename, ips, args.health_port, rules)
    for server in http:
        server.close()
    print("torn down", flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-localip", required=True)
    p.add_argument("-upstream", required=True, help="the cluster DNS Service IP to relay to")
    p.add_argument("-interfacename", default="nodelocaldns")
    p.add_argument("-health", default="", help="the Corefile's health HOST:PORT (default: first local IP:8080)")
    p.add_argument("-health-port", default=HEALTH_PORT, help="the port node-cache NOTRACKs for probes")
    p.add_argument("-bind-all", action="store_true", help="bind 0.0.0.0:53, as a Corefile's `bind 0.0.0.0`")
    p.add_argument("-setupiptables", default="true", choices=("true", "false"))
    return asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
