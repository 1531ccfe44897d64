"""DNS over TLS upstreams (RFC 7858): the TCP channel of
``upstream.transport`` with TLS between it and the socket.

The TLS layer is the ``ssl`` module's sans-IO object (``SSLObject`` over
two memory BIOs), not asyncio's own TLS transport, for two reasons:

* **Session resumption** (RFC 7858 §3.4 recommends it): a recycled
  connection (``expire``, by default every 10 s) offers the session of the
  last one, so it pays an abbreviated handshake, not a full one with the
  certificate chain verified again. asyncio's ``create_connection`` takes
  no session; ``wrap_bio`` does.
* The channel stays what it is for plain TCP: the same ID matching,
  pipelining, quarantine, re-send on a reset and cork (``upstream.cork``:
  a poll may read a paused connection's socket itself; what it reads is
  ciphertext, handed to ``data_received`` like any other read).

``Sealed`` stands where the channel keeps its transport: ``write``
encrypts, the rest goes to the socket's transport. The pool opens a
connection, waits for its handshake (within the attempt's timeout), and
only then hands it out, so nothing is ever written before verification.

Verification is always on: the certificate must chain to the system's
roots or ``tls``'s CA file and carry the server name (``tls_servername``,
``tls://IP%NAME``, else the address). TLS 1.2 is the least we speak
(RFC 8310 §9 and CoreDNS). A handshake or verification failure fails the
attempt like a refused connect (``TlsFailed``, an ``OSError``), is counted
by reason and logged once per upstream and reason.
"""
from __future__ import annotations

import asyncio
import logging
import ssl

from .cork import Cork
from .options import TlsFiles
from .transport import TcpPool, UpstreamClosed, _Channel, _TcpConnection

log = logging.getLogger("nodecache.forward")
READ_SIZE = 1 << 16
HANDSHAKE_TIMEOUT = 2.0  # the attempt timeout: a handshake slower than that is a failed one


class TlsSetupError(ValueError):
    """The ``tls`` files cannot be used (at start: a Corefile error)."""


class TlsFailed(OSError):
    """A handshake failed (verification, protocol): the attempt failed."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"TLS handshake failed ({reason}): {detail}")
        self.reason = reason


def client_context(files: TlsFiles, alpn: list[str] | None) -> ssl.SSLContext:
    """A client context as CoreDNS's ``tls`` option makes one: verify
    against ``files.ca`` or the system's roots, present ``files.cert``
    when given, TLS 1.2 or newer."""
    try:
        ctx = ssl.create_default_context(cafile=files.ca or None)
        if files.cert or files.key:
            ctx.load_cert_chain(files.cert, files.key or None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(str(exc)) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def failure_reason(exc: BaseException) -> str:
    """A short label for a failed handshake: ``verify`` for a certificate
    the name or the roots do not vouch for, else the OpenSSL reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "verify"
    return (getattr(exc, "reason", None) or type(exc).__name__).lower()


class Sealed:
    """The channel's transport for a TLS connection: plaintext in, TLS records out."""

    def __init__(self, raw: asyncio.Transport, tls: ssl.SSLObject, outgoing: ssl.MemoryBIO):
        self.raw, self.tls, self.outgoing = raw, tls, outgoing

    def write(self, data: bytes) -> None:
        self.tls.write(data)
        self.raw.write(self.outgoing.read())

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    def close(self) -> None:
        try:
            self.tls.unwrap()  # close_notify (RFC 8446 §6.1), then close
        except ssl.SSLError:
            pass
        if self.outgoing.pending and not self.raw.is_closing():
            self.raw.write(self.outgoing.read())
        self.raw.close()

    def abort(self) -> None:
        self.raw.abort()

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def get_extra_info(self, name, default=None):
        return self.raw.get_extra_info(name, default)


class TlsHandshake:
    """One connection's TLS state until and after its handshake; the
    connection feeds it what the socket reads and gets plaintext back."""

    def __init__(self, ctx: ssl.SSLContext, name: str, session: ssl.SSLSession | None):
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=name, session=session)
        self.done = False

    def step(self) -> bool:
        """Advance the handshake; True once it is complete. Raises
        ``ssl.SSLError`` (verification included) when it failed."""
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.done = True
        return True

    def pending_output(self) -> bytes:
        return self.outgoing.read()

    def feed(self, data: bytes) -> bytes:
        """Ciphertext in, the plaintext it completes out (b"" for none yet).
        Raises ``ssl.SSLZeroReturnError`` at the upstream's close_notify."""
        incoming, tls = self.incoming, self.tls
        incoming.write(data)
        chunks = []
        while True:
            try:
                chunk = tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not incoming.pending and not tls.pending():
                break  # all read: no second call just to be told so (an exception per read)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class TlsConnection(_TcpConnection):
    """A pipelined DNS-over-TCP channel (``_TcpConnection``) whose bytes
    go through ``TlsHandshake``; ``ready`` resolves once verified."""

    def __init__(self, loop, cork: Cork, pool: "TlsPool"):
        super().__init__(loop, cork)
        self.pool = pool
        self.handshake = TlsHandshake(pool.context, pool.server_name, pool.session if pool.resume else None)
        self.ready: asyncio.Future = loop.create_future()
        self.raw: asyncio.Transport | None = None
        self.session_saved = False

    def connection_made(self, transport):
        self.raw = transport
        super().connection_made(Sealed(transport, self.handshake.tls, self.handshake.outgoing))
        self._advance(b"")

    def data_received(self, data: bytes):
        if not self.handshake.done:
            self._advance(data)
        else:
            self._received(data)

    def _received(self, data: bytes) -> None:
        """Records after the handshake: decrypted and handed on."""
        try:
            plain = self.handshake.feed(data)
        except ssl.SSLZeroReturnError:
            self.transport.close()
            return
        except ssl.SSLError as exc:
            # (TLS 1.3: a server that rejects our certificate says so here,
            # after our side of the handshake finished: counted alike)
            self.pool.handshake_failed(TlsFailed(failure_reason(exc), str(exc)))
            self._fail(UpstreamClosed(f"TLS error: {exc}"))
            return
        self._flush()  # (TLS 1.3: a key update may need an answer)
        if not self.session_saved:
            self._save_session()
        if plain:
            self.plaintext(plain)

    def plaintext(self, data: bytes) -> None:
        """What the upstream sent, decrypted: DNS over TCP's frames."""
        _TcpConnection.data_received(self, data)

    def on_handshake(self) -> None:
        """The connection is verified; before any query is written."""

    def _advance(self, data: bytes) -> None:
        hs = self.handshake
        if data:
            hs.incoming.write(data)
        try:
            finished = hs.step()
        except ssl.SSLError as exc:
            self._flush()
            self._handshake_failed(exc)
            return
        self._flush()
        if finished:
            self.pool.handshook(hs.tls.session_reused)
            self._save_session()
            try:
                self.on_handshake()
            except TlsFailed as failure:
                self._handshake_failed(failure)
                return
            if not self.ready.done():
                self.ready.set_result(self)
            self._received(b"")  # records that came with the handshake's last flight

    def _save_session(self) -> None:
        """Keep the session for the next connection (TLS 1.3 sends it after
        the handshake, in a ticket: looked for in each read until it came)."""
        session = self.handshake.tls.session
        if session is None:
            return
        tls13 = self.handshake.tls.version() == "TLSv1.3"
        if session.has_ticket or not tls13:
            self.pool.session = session
            self.session_saved = True

    def _flush(self) -> None:
        out = self.handshake.pending_output()
        if out and self.raw is not None and not self.raw.is_closing():
            self.raw.write(out)

    def _handshake_failed(self, exc: BaseException) -> None:
        failure = exc if isinstance(exc, TlsFailed) else TlsFailed(failure_reason(exc), str(exc))
        self.pool.handshake_failed(failure)
        if not self.ready.done():
            self.ready.set_exception(failure)
        self.closed = True
        if self.raw is not None:
            self.raw.abort()

    def connection_lost(self, exc):
        if not self.ready.done():
            self.ready.set_exception(UpstreamClosed(f"connection lost during the TLS handshake: {exc or 'EOF'}"))
        super().connection_lost(exc)


class TlsPool(TcpPool):
    """Persistent pipelined TLS connections to one upstream, resuming the
    last session on each new one."""

    def __init__(self, host: str, port: int, expire: float, cork: Cork, context: ssl.SSLContext,
                 server_name: str, label: str):
        super().__init__(host, port, expire, cork)
        self.context, self.server_name, self.label = context, server_name, label
        self.session: ssl.SSLSession | None = None
        self.resume = True       # offer the last session (off: the handshakes benchmark's control)
        self.handshakes = 0      # full handshakes
        self.resumed = 0         # abbreviated ones (the session was resumed)
        self.failures: dict[str, int] = {}  # failed handshakes by reason
        self._logged: set[str] = set()

    def handshook(self, resumed: bool) -> None:
        if resumed:
            self.resumed += 1
        else:
            self.handshakes += 1

    def handshake_failed(self, failure: TlsFailed) -> None:
        self.failures[failure.reason] = self.failures.get(failure.reason, 0) + 1
        self.session = None  # a session the server no longer likes is not offered again
        if failure.reason not in self._logged:  # once per upstream and reason, not per attempt
            self._logged.add(failure.reason)
            log.error("upstream %s: %s", self.label, failure)

    def _connection(self, loop) -> _Channel:
        return TlsConnection(loop, self.cork, self)

    async def _connect(self, loop) -> _Channel:
        _, conn = await loop.create_connection(lambda: self._connection(loop), self.host, self.port)
        try:
            return await asyncio.wait_for(conn.ready, HANDSHAKE_TIMEOUT)
        except BaseException as exc:
            conn.raw.abort()  # no half-open connection left behind a slow or failed handshake
            if isinstance(exc, asyncio.TimeoutError):  # (a server that reads our ClientHello as something else)
                self.handshake_failed(TlsFailed("timeout", f"no TLS handshake within {HANDSHAKE_TIMEOUT:g}s"))
            elif isinstance(exc, UpstreamClosed):
                self.handshake_failed(TlsFailed("closed", str(exc)))
            raise
