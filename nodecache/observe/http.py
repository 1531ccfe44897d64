"""A small HTTP/1.x server for /metrics, /health and /ready.

Only GET and HEAD, one request per connection, headers capped at 8 KiB and
the whole exchange at 5 seconds from accept: a scrape or a probe, never a
general web server. Over HTTPS (node-cache's ``-tls-*`` flags) the TLS
layer is ours too (``_TlsConn``, an ``ssl`` object over memory buffers):
the 5 s count from accept, so a client that never sends its ClientHello
is closed then (the loop's own TLS server waited 60 s for a handshake and
made no protocol until it ended), and at most ``MAX_TLS_CONNS`` are open
per listener, more aborted at accept, so silent connections cannot grow
memory (each TLS session holds its buffers). Each listening
address serves the union of the endpoints configured on it (CoreDNS lets
several blocks name the same ``prometheus`` address). Sockets are ours, so
they can be handed to a successor with the DNS sockets.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Callable

log = logging.getLogger("nodecache.http")
MAX_HEAD = 8192
DEADLINE = 5.0       # seconds from accept to the reply sent
MAX_TLS_CONNS = 64   # open HTTPS connections per listener (a scrape or two, probes)
RETRY = 2.0  # seconds between attempts to bind an HTTP address that was taken
Handler = Callable[[], tuple[int, str, bytes]]
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def split_address(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if host == "":
        host = "::"  # every address, both families
    elif host == "localhost":
        host = "127.0.0.1"
    return host, int(port)


def make_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Conn(asyncio.Protocol):
    def __init__(self, routes: dict[str, Handler]):
        self.routes = routes
        self.buf = b""
        self.transport = None
        self.timer = None

    def connection_made(self, transport):
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(DEADLINE, transport.abort)

    def connection_lost(self, exc):
        if self.timer:
            self.timer.cancel()

    def data_received(self, data):
        self.request(data)

    def request(self, data: bytes) -> None:
        """Bytes of the request, as they come."""
        self.buf += data
        if b"\r\n\r\n" not in self.buf and b"\n\n" not in self.buf:
            if len(self.buf) > MAX_HEAD:
                self._send(400, "text/plain", b"request too large\n", True)
            return
        line = self.buf.split(b"\n", 1)[0].decode("latin-1").strip().split()
        if len(line) != 3 or not line[2].startswith("HTTP/"):
            self._send(400, "text/plain", b"bad request\n", True)
            return
        method, target = line[0], line[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            self._send(405, "text/plain", b"GET or HEAD\n", True)
            return
        handler = self.routes.get(target)
        if handler is None:
            self._send(404, "text/plain", b"not found\n", method == "GET")
            return
        try:
            status, ctype, body = handler()
        except Exception:  # a broken handler must not kill the server
            log.exception("handler for %s failed", target)
            status, ctype, body = 503, "text/plain", b"internal error\n"
        self._send(status, ctype, body, method == "GET")

    def _send(self, status: int, ctype: str, body: bytes, with_body: bool) -> None:
        head = (f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        self.respond(head + (body if with_body else b""))

    def respond(self, data: bytes) -> None:
        self.transport.write(data)
        self.transport.close()


class _TlsConn(_Conn):
    """HTTPS: the TLS session over memory buffers, counted in ``gate``."""

    def __init__(self, routes: dict[str, Handler], context: ssl.SSLContext, gate: list[int]):
        super().__init__(routes)
        self.gate = gate            # [connections open on this listener]
        self.counted = False
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.handshaken = False

    def connection_made(self, transport):
        if self.gate[0] >= MAX_TLS_CONNS:
            transport.abort()
            return
        self.gate[0] += 1
        self.counted = True
        super().connection_made(transport)

    def connection_lost(self, exc):
        if self.counted:
            self.gate[0] -= 1
            self.counted = False
        super().connection_lost(exc)

    def data_received(self, data):
        self.incoming.write(data)
        try:
            if not self.handshaken:
                self.tls.do_handshake()
                self.handshaken = True
            plain = b""
            while True:
                plain += self.tls.read(MAX_HEAD + 1)
        except ssl.SSLWantReadError:
            self._flush()
            if self.handshaken and plain and not self.transport.is_closing():
                self.request(plain)
        except (ssl.SSLError, ValueError) as exc:  # a failed handshake or a broken record
            log.debug("https from %s: %s", self.transport.get_extra_info("peername"), exc)
            self._flush()
            self.transport.abort()

    def respond(self, data: bytes) -> None:
        try:
            self.tls.write(data)
            self.tls.unwrap()  # close_notify; the client's own is not awaited
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass
        self._flush()
        self.transport.close()

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending and not self.transport.is_closing():
            self.transport.write(pending)


class HttpServers:
    """Every HTTP listener of the agent, keyed by its address."""

    def __init__(self):
        self.routes: dict[str, dict[str, Handler]] = {}
        self.servers: dict[str, asyncio.AbstractServer] = {}
        self.failed: dict[str, str] = {}
        self.tls: dict[str, object] = {}  # address -> ssl.SSLContext: served over HTTPS

    def add(self, addr: str, path: str, handler: Handler) -> None:
        self.routes.setdefault(addr, {})[path] = handler

    async def start(self, adopted: dict[tuple[str, int, str], socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for addr, routes in self.routes.items():
            if addr in self.servers:
                continue
            host, port = split_address(addr)
            sock = (adopted or {}).pop((host, port, "http"), None)
            try:
                sock = sock or make_listener(host, port)
            except OSError as exc:
                why = exc.strerror or str(exc)
                if self.failed.get(addr) != why:  # once per reason: ``start`` is retried while it fails
                    log.error("cannot serve %s on %s: %s; DNS keeps serving, retrying every %gs",
                              " ".join(sorted(routes)), addr, why, RETRY)
                self.failed[addr] = why
                continue
            context, gate = self.tls.get(addr), [0]  # gate: this listener's open HTTPS connections
            if context is None:
                factory = lambda r=routes: _Conn(r)  # noqa: E731
            else:
                factory = lambda r=routes, c=context, g=gate: _TlsConn(r, c, g)  # noqa: E731
            self.servers[addr] = await loop.create_server(factory, sock=sock)
            was = self.failed.pop(addr, None)
            log.info("serving %s on %s%s", " ".join(sorted(routes)), addr, f" (it was: {was})" if was else "")

    async def retry(self) -> None:
        """Until cancelled: start the listeners that could not bind. During a
        migration node-cache holds :8080 (health) and :9253 (metrics) until
        it exits; the probes and scrapes must find us once it has."""
        while True:
            await asyncio.sleep(RETRY)
            if self.failed:
                await self.start()

    async def apply(self, routes: dict[str, dict[str, Handler]]) -> None:
        """Switch to a new set of endpoints (a reload): addresses that stay keep
        their sockets and only change what they serve."""
        for addr in list(self.servers):
            if addr not in routes:
                self.servers.pop(addr).close()
                del self.routes[addr]
        for addr, new in routes.items():
            if addr in self.servers:
                self.routes[addr].clear()
                self.routes[addr].update(new)
            else:
                self.routes[addr] = dict(new)
        self.failed.clear()
        await self.start()

    def listening_sockets(self) -> list[tuple[str, int, str, int]]:
        out = []
        for addr, server in self.servers.items():
            if server.sockets:
                host, port = split_address(addr)
                out.append((host, port, "http", server.sockets[0].fileno()))
        return out

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()
