"""What flows between stages on the slow path, and how a chain is built.

Stages compose like CoreDNS plugins: a server block's chain is built once,
in the registry's order (``plugins.registry``), each stage holding a
reference to the next.
A stage answers a ``Request`` with an ``Answer``, either itself or by
awaiting ``self.next``. An answer carries the analysed upstream reply (so
the cache can store it) or finished wire bytes, and the RCODE and the name
of the stage that produced it (for logs and metrics). The end of every chain
is ``refuse``: nobody here serves that name.

A stage has two speeds. ``handle`` is the slow path, a coroutine. Beside
it, a synchronous ``front``: given the query's bytes and what
``dns.wire.scan`` read of them, a finished reply or None, "take the slow
path", which is the default, so a new stage is never bypassed. The cache
stage's front answers a fresh hit. A miss has a third speed, ``take``:
started from the receive callback, answered later through a callback (the
cache stage takes it and the forward stage sends it upstream; see
``upstream.direct``); False, the default, sends it down the slow path.

Which stages a fast answer may skip, each stage declares (``Shortcuts``);
``front_of`` and ``link_takes`` build a block's fast front and its
callback speed from the stages and those declarations, nothing else.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from ..ttlcache.entry import render_uncached
from ..dns.reply import Reply
from ..dns.wire import REFUSED, Query, error_reply

@dataclass(slots=True)
class Request:
    query: Query
    proto: str = "udp"           # udp | tcp | internal (prefetch, refresh, the loop probe)
    client: tuple = ("", 0)
    started: float = field(default_factory=time.monotonic)
    alone: bool = False          # forward it on an exchange of its own, never coalesced (the loop probe)
    # ask(key, client): resolve another question through the listener that
    # received this one, admitted as the same client (k8s_schema's walk);
    # None for internal requests
    ask: Callable[[bytes, tuple], bool] | None = None


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

    ``hit``: a later stage's ``front`` may answer without running this
    stage (a fresh cache hit). ``memo``: and the memo of finished replies
    may, which skips even the cache's per-hit work (``plugins.cache.memo``).
    ``direct``: a miss may be taken at the callback speed (``take``)
    without this stage's ``handle``. Only stages before the front matter
    for ``hit`` and ``memo`` (a fast answer never reaches those after it);
    ``direct`` needs every stage's consent."""
    hit: bool = False
    memo: bool = False
    direct: bool = False


NONE = Shortcuts()


async def refuse(request: Request) -> Answer:
    return Answer(REFUSED)


def _nothing() -> None:
    pass


def _decline(key: bytes, asker, on_done) -> bool:
    return False


def _slow(data: bytes, scanned: tuple, now: float) -> None:
    return None


class Stage:
    """A plugin's part of a block's chain. ``handle`` is the slow path; the
    rest is optional, and a block asks only the stages that define it."""
    name = "stage"
    next: Handler = staticmethod(refuse)
    next_front = staticmethod(_slow)    # the next stage's ``front`` (``front_of``)
    next_take = staticmethod(_decline)  # the next stage's ``take`` (``link_takes``)
    down = False               # True: the block answers SERVFAIL for everything (see ``go_down``)
    on_down = staticmethod(_nothing)  # set by the block: called once when the stage goes down
    panics = 0                 # failures contained in a callback of the stage's (coredns_panics_total)

    def shortcuts(self) -> Shortcuts:
        """What may skip this stage (see ``Shortcuts``); default: nothing."""
        return NONE

    def front(self, data: bytes, scanned: tuple, now: float) -> bytes | None:
        """The fast speed: synchronous, no task, no await. ``scanned``:
        ``dns.wire.scan``'s (key, qend, flags, limit, edns) of ``data``;
        ``now`` on the caches' clock. The reply (not yet fitted to the
        client's size: the query path does that and counts it), or None:
        take the slow path (the default). A stage that defines this passes
        what it does not answer to ``next_front``."""
        return None

    def memo_for(self, data: bytes, reply: bytes, key: bytes, qend: int, truncated: bool):
        """After the block's fast front answered ``data`` with ``reply`` (as
        sent), asked of the last front stage that makes memos: a memo for the listener's table
        (``plugins.cache.memo.Memo``, its counter series not yet set), or
        None (the default: none)."""
        return None

    def take(self, key: bytes, asker, on_done) -> bool:
        """The callback speed for a miss: start answering it without a
        task. ``asker``: the query path's (``server.querypath.Asker``);
        ``on_done(key, reply or None, askers)``: who answers when the
        exchange ends (a stage may pass its own on: the cache does). A stage
        that defines this passes what it does not stop to ``next_take``.
        False (the default): the query takes the slow path."""
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


def front_of(stages: list[Stage]) -> list[Stage]:
    """A block's fast front: the stages that define ``front``, in chain
    order, each given the next one's as ``next_front``, up to the first
    stage that neither has a front nor lets a fast answer skip it
    (``Shortcuts.hit``): what reaches that one takes the slow path. The
    first one's ``front`` is the entry; [] (no front): every query of the
    block takes the slow path."""
    fronts = []
    for stage in stages:
        if type(stage).front is not Stage.front:
            fronts.append(stage)
        elif not stage.shortcuts().hit:
            break
    following = _slow
    for stage in reversed(fronts):
        stage.next_front = following
        following = stage.front
    return fronts


def link_takes(stages: list[Stage]):
    """A block's callback speed: the stages that define ``take``, each given
    the next one's as ``next_take``; the first one's is the entry. None
    (every miss takes the slow path) unless every stage consents
    (``Shortcuts.direct``) and one at least takes."""
    if not all(stage.shortcuts().direct for stage in stages):
        return None
    entry = _decline
    for stage in reversed([st for st in stages if type(st).take is not Stage.take]):
        stage.next_take = entry
        entry = stage.take
    return None if entry is _decline else entry


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
