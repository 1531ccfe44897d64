"""DNS over HTTPS upstreams (RFC 8484): HTTP/2 over the TLS channel of
``upstream.tls``, many queries on one connection, one stream each.

The connection is a ``TlsConnection`` (same handshake, session
resumption, verification, cork) that speaks HTTP/2 instead of DNS-over-TCP
frames, through ``h2``'s sans-IO state machine: a query becomes a POST
(or, with ``doh_method GET``, a GET with ``?dns=`` base64url, RFC 8484
§4.1) of ``application/dns-message`` on a new stream; the reply is the
stream's body, handed to the channel's ID-and-question matching like any
other reply. The query keeps the channel's random ID: RFC 8484 §4.1 asks
for ID 0 so HTTP caches can share answers, but we speak POST (which no
cache stores) by default, and the ID lets the channel reject a reply to
another query exactly as it does on every other transport.

What HTTP adds, and how it maps onto the channel's rules:

* a status other than 200, a reset stream, or a body that is not a DNS
  message fails that one query (``ExchangeFailed``: the attempt failed, the
  forwarder moves on); the connection carries on;
* GOAWAY or a connection error fails every query on the connection with
  ``UpstreamClosed``, so each is re-sent on a fresh one (a DoH server
  rolling over its connections is a reset, not an outage);
* at most the server's SETTINGS_MAX_CONCURRENT_STREAMS queries are in flight
  on one connection (then the pool opens another), and flow-control
  credit is returned as bodies arrive.
"""
from __future__ import annotations

import base64

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from .cork import Cork
from .tls import TlsConnection, TlsFailed, TlsPool
from .transport import UpstreamClosed, _Channel

MAX_BODY = 65535           # a DNS message's most (RFC 8484 §6: the same limit as TCP)
MEDIA_TYPE = b"application/dns-message"


# Our own request headers are well-formed by construction, and a reply's
# headers matter only for :status: h2's per-header validation and
# normalisation (about half its CPU per request, profiled) is skipped.
_CONFIG = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                    normalize_outbound_headers=False, validate_inbound_headers=False,
                                    normalize_inbound_headers=False)


class ExchangeFailed(OSError):
    """The server answered this query with an HTTP error or reset its stream."""


class DohConnection(TlsConnection):
    def __init__(self, loop, cork: Cork, pool: "DohPool"):
        super().__init__(loop, cork, pool)
        self.h2 = h2.connection.H2Connection(_CONFIG)
        self.streams: dict[int, list] = {}  # stream id -> [query id, status, body chunks]
        self.authority = pool.authority.encode()
        self.path = pool.path.encode()
        self.method = pool.method

    # -- the TLS connection's hooks ------------------------------------------
    def on_handshake(self) -> None:
        if self.handshake.tls.selected_alpn_protocol() != "h2":
            raise TlsFailed("alpn", "the server does not speak HTTP/2 (ALPN h2)")
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())

    def _write(self, data: bytes) -> None:
        """``data``: a DNS query under its channel ID; one request on a new stream."""
        try:
            stream = self.h2.get_next_available_stream_id()
            if self.method == "GET":
                dns = base64.urlsafe_b64encode(data).rstrip(b"=")
                self.h2.send_headers(stream, self._headers(b"GET", self.path + b"?dns=" + dns), end_stream=True)
            else:
                self.h2.send_headers(stream, self._headers(b"POST", self.path, len(data)))
                self.h2.send_data(stream, data, end_stream=True)
        except h2.exceptions.H2Error as exc:
            raise UpstreamClosed(f"HTTP/2: {exc}") from None
        self.streams[stream] = [data[0] << 8 | data[1], 0, []]
        self.write_or_hold(self.h2.data_to_send())

    def _headers(self, method: bytes, path: bytes, length: int | None = None) -> list:
        headers = [(b":method", method), (b":scheme", b"https"), (b":authority", self.authority),
                   (b":path", path), (b"accept", MEDIA_TYPE)]
        if length is not None:
            headers += [(b"content-type", MEDIA_TYPE), (b"content-length", str(length).encode())]
        return headers

    def plaintext(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.H2Error as exc:
            self._fail(UpstreamClosed(f"HTTP/2 protocol error: {exc}"))
            return
        for event in events:
            self._event(event)
            if self.closed:
                return
        out = self.h2.data_to_send()
        if out:
            self.transport.write(out)  # acknowledgements and window updates: not worth holding
        self._maybe_close()

    def _event(self, event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", None))
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            stream[1] = next((int(v) for k, v in event.headers if k == b":status"), 0)
        elif isinstance(event, h2.events.DataReceived) and stream is not None:
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream[2].append(event.data)
            if sum(map(len, stream[2])) > MAX_BODY:
                self.h2.reset_stream(event.stream_id)
                self._end_stream(event.stream_id, "a body longer than a DNS message")
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            self._end_stream(event.stream_id, None)
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            self._end_stream(event.stream_id, f"stream reset by the server (error {event.error_code})")
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._fail(UpstreamClosed(f"the server closed the HTTP/2 connection (GOAWAY {event.error_code})"))

    def _end_stream(self, stream_id: int, problem: str | None) -> None:
        qid, status, chunks = self.streams.pop(stream_id)
        if problem is None and status != 200:
            problem = f"HTTP status {status}"
        if problem is None:
            self.deliver(b"".join(chunks))  # the channel matches it by ID and question
        else:
            self.fail_one(qid, ExchangeFailed(problem))

    def usable(self, now: float, expire: float, max_pending: int) -> bool:
        limit = min(max_pending, self.h2.remote_settings.max_concurrent_streams)
        return _Channel.usable(self, now, expire, limit)


class DohPool(TlsPool):
    """HTTP/2 connections to one DoH upstream (ALPN h2)."""

    def __init__(self, host: str, port: int, expire: float, cork: Cork, context, server_name: str,
                 label: str, path: str, method: str):
        super().__init__(host, port, expire, cork, context, server_name, label)
        self.path, self.method = path, method
        host = f"[{server_name}]" if ":" in server_name else server_name  # IPv6 (RFC 3986 §3.2.2)
        self.authority = host if port == 443 else f"{host}:{port}"

    def _connection(self, loop) -> _Channel:
        return DohConnection(loop, self.cork, self)
