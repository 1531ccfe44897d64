"""What flows between stages on the slow path, and how a chain is built.

Stages compose like CoreDNS plugins: a server block's chain is built once,
in the registry's order (``plugins.registry``), each stage holding a
reference to the next.
A stage answers a ``Request`` with an ``Answer``, either itself or by
awaiting ``self.next``. An answer carries the analysed upstream reply (so
the cache can store it) or finished wire bytes, and the RCODE and the name
of the stage that produced it (for logs and metrics). The end of every chain
is ``refuse``: nobody here serves that name.

The cache-hit hot path does not go through the chain at all, nor does a
direct miss: each stage declares which of those shortcuts may skip it
(``Shortcuts``), and ``server.block`` derives a block's from them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from ..cache.entry import render_uncached
from ..dns.reply import Reply
from ..dns.wire import REFUSED, Query, error_reply

@dataclass(slots=True)
class Request:
    query: Query
    proto: str = "udp"           # udp | tcp | internal (prefetch, refresh, the loop probe)
    client: tuple = ("", 0)
    started: float = field(default_factory=time.monotonic)
    alone: bool = False          # forward it on an exchange of its own, never coalesced (the loop probe)


@dataclass(slots=True)
class Answer:
    rcode: int
    wire: bytes | None = None    # finished reply for this request
    reply: Reply | None = None   # an upstream reply not yet rendered
    plugin: str = ""


Handler = Callable[[Request], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Shortcuts:
    """Which shortcuts may skip a stage; each stage declares its own, and
    the default is none (a new stage is never bypassed by accident).

    ``hit``: a fresh cache hit may be answered without running the stage
    (``server.querypath``'s hit path). ``memo``: and from the memo of
    finished replies, which skips even the cache's per-hit work
    (``server.memo``). ``direct``: a plain miss may be forwarded from the
    receive callback without the chain (``forward.direct``). Only stages
    before the cache matter for ``hit`` and ``memo`` (a fresh hit never
    reaches those after it); ``direct`` needs every stage's consent."""
    hit: bool = False
    memo: bool = False
    direct: bool = False


NONE = Shortcuts()


async def refuse(request: Request) -> Answer:
    return Answer(REFUSED)


def _nothing() -> None:
    pass


class Stage:
    """A plugin's part of a block's chain. ``handle`` is the slow path; the
    rest is optional, and a block asks only the stages that define it."""
    name = "stage"
    next: Handler = staticmethod(refuse)
    down = False               # True: the block answers SERVFAIL for everything (see ``go_down``)
    on_down = staticmethod(_nothing)  # set by the block: called once when the stage goes down

    def shortcuts(self) -> Shortcuts:
        """What may skip this stage (see ``Shortcuts``); default: nothing."""
        return NONE

    def refuses_direct(self, key: bytes) -> bool:
        """With ``Shortcuts.direct``: whether this one query must take the
        chain after all (asked per direct miss, of the stages that define it)."""
        return False

    async def handle(self, request: Request) -> Answer:
        raise NotImplementedError

    async def start(self) -> None:
        """Work of the stage's own at start and after a reload (the loop probe)."""

    def trouble(self, now: float) -> str | None:
        """Why this stage cannot do its part now (for /ready), or None."""
        return None

    def close(self) -> None:
        """Release what the stage holds (tasks, connections)."""


def chain(stages: list[Stage]) -> Handler:
    """Link stages, already in chain order; returns the entry point."""
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
