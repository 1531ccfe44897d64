"""What flows between stages on the slow path, and how a chain is built.

Stages compose like CoreDNS plugins: a server block's chain is built once,
in the fixed order of ``ORDER``, each stage holding a reference to the next.
A stage answers a ``Request`` with an ``Answer``, either itself or by
awaiting ``self.next``. An answer carries the analysed upstream reply (so
the cache can store it) or finished wire bytes, and the RCODE and the name
of the stage that produced it (for logs and metrics). The end of every chain
is ``refuse``: nobody here serves that name.

The cache-hit hot path does not go through the chain at all; see
``server.block``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from ..cache.entry import render_uncached
from ..dns.reply import Reply
from ..dns.wire import REFUSED, Query, error_reply

ORDER = ("errors", "log", "cache", "forward")


@dataclass(slots=True)
class Request:
    query: Query
    proto: str = "udp"           # udp | tcp | internal (prefetch, refresh)
    client: tuple = ("", 0)
    started: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class Answer:
    rcode: int
    wire: bytes | None = None    # finished reply for this request
    reply: Reply | None = None   # an upstream reply not yet rendered
    plugin: str = ""


Handler = Callable[[Request], Awaitable[Answer]]


async def refuse(request: Request) -> Answer:
    return Answer(REFUSED)


class Stage:
    name = "stage"
    next: Handler = staticmethod(refuse)

    async def handle(self, request: Request) -> Answer:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the stage holds (tasks, connections)."""


def chain(stages: list[Stage]) -> Handler:
    """Link stages in ORDER; returns the entry point."""
    stages = sorted(stages, key=lambda s: ORDER.index(s.name))
    handler: Handler = refuse
    for stage in reversed(stages):
        stage.next = handler
        handler = stage.handle
    return handler


def in_zone(name: bytes, zone: bytes) -> bool:
    """Is lower-cased wire name ``name`` at or below wire zone ``zone``?
    Compares on label boundaries (b'xample.org' is not under b'ample.org')."""
    if zone == b"\x00":
        return True
    i = 0
    n = len(name) - len(zone)
    while i < n:
        i += name[i] + 1
    return i == n and name[i:] == zone


def render(request: Request, answer: Answer) -> bytes:
    """The wire reply for an answer, before any UDP size fitting."""
    if answer.wire is not None:
        return answer.wire
    q = request.query
    if answer.reply is not None:
        return render_uncached(answer.reply, q.data, q.qend, q.flags, q.edns)
    return error_reply(q.data, answer.rcode, q.qend, q.edns)
