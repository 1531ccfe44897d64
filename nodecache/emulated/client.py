"""A minimal stub client (UDP and TCP) for the demo, the tests and probes."""
from __future__ import annotations

import asyncio
import random
import socket

from ..dns.framing import FrameReader, frame
from ..dns.wire import RD, make_query, question_bytes


def build(name: str, qtype: int, do: int = -1, qid: int | None = None, flags: int = RD) -> bytes:
    qid = random.getrandbits(16) if qid is None else qid
    return make_query(qid, question_bytes(name, qtype), flags, do)


class _Once(asyncio.DatagramProtocol):
    def __init__(self, fut):
        self.fut = fut

    def datagram_received(self, data, addr):
        if not self.fut.done():
            self.fut.set_result(data)

    def error_received(self, exc):
        if not self.fut.done():
            self.fut.set_exception(exc)


async def udp(host: str, port: int, data: bytes, timeout: float = 2.0, source: str | None = None) -> bytes:
    """One query, one socket (from ``source`` if given), the first reply."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Once(fut), remote_addr=(host, port),
                                                       local_addr=(source, 0) if source else None)
    try:
        transport.sendto(data)
        return await asyncio.wait_for(fut, timeout)
    finally:
        transport.close()


async def tcp(host: str, port: int, data: bytes, timeout: float = 2.0) -> bytes:
    return (await tcp_many(host, port, [data], timeout))[0]


async def tcp_many(host: str, port: int, queries: list[bytes], timeout: float = 5.0) -> list[bytes]:
    """Send all queries pipelined on one connection; replies in arrival order."""
    async def run():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"".join(frame(q) for q in queries))
            await writer.drain()
            frames, out = FrameReader(), []
            while len(out) < len(queries):
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {len(out)} of {len(queries)} replies")
                out.extend(frames.feed(chunk))
            return out
        finally:
            writer.close()
    return await asyncio.wait_for(run(), timeout)


async def paced(host: str, port: int, queries: list[bytes], rate: float, timeout: float = 5.0) -> dict:
    """Send ``queries`` over UDP at a fixed rate (one socket each, as a stub
    resolver does), bounded by len(queries) / rate + timeout seconds.
    Returns ``{"sent", "rcodes": {rcode: n}, "unanswered"}``."""
    loop = asyncio.get_running_loop()
    rcodes: dict[int, int] = {}
    unanswered = 0

    async def one(data: bytes) -> None:
        nonlocal unanswered
        try:
            reply = await udp(host, port, data, timeout)
        except (asyncio.TimeoutError, OSError):
            unanswered += 1
            return
        rcodes[reply[3] & 0xF] = rcodes.get(reply[3] & 0xF, 0) + 1

    start = loop.time()
    tasks = []
    for i, data in enumerate(queries):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(data)))
    await asyncio.gather(*tasks)
    return {"sent": len(queries), "rcodes": rcodes, "unanswered": unanswered}


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on host, right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError("no free port")
