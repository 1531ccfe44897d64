"""From query bytes to reply bytes, for any transport.

``fast`` is the synchronous cache-hit path (scan in place, route, cache
hit); ``answer`` is the slow path (full parse, RFC error replies, the
block's stage chain). Transports call ``fast`` first and schedule
``answer`` as a task only when it returns None. Background tasks are
tracked so shutdown can drain them.
"""
from __future__ import annotations

import asyncio

from ..dns.wire import REFUSED, QueryError, error_reply, parse_query, scan
from ..stages.base import Request
from .router import Router


class Dispatcher:
    def __init__(self, router: Router):
        self.router = router
        self.tasks: set[asyncio.Task] = set()
        self.dropped = 0       # queries we could not even answer with an error
        self.error_replies = 0

    def fast(self, data: bytes):
        """(reply, limit, qend, flags, edns) for a cache hit, else None."""
        s = scan(data)
        if s is None:
            return None
        key, qend, flags, limit, edns = s
        block = self.router.block_for(key)
        if block is None:
            return None
        reply = block.fast(key, data, qend, flags, edns)
        if reply is None:
            return None
        return reply, limit, qend, edns

    async def answer(self, data: bytes, proto: str, client) -> tuple[bytes | None, int, int, int]:
        """(reply or None to drop, UDP limit, qend, edns)."""
        try:
            q = parse_query(data)
        except QueryError as exc:
            if exc.rcode is None:
                self.dropped += 1
                return None, 0, 0, -1
            self.error_replies += 1
            return error_reply(data, exc.rcode, exc.qend, exc.edns), 512, exc.qend, exc.edns
        block = self.router.block_for(q.key)
        if block is None:
            return error_reply(data, REFUSED, q.qend, q.edns), q.limit, q.qend, q.edns
        reply = await block.serve(Request(q, proto, client))
        return reply, q.limit, q.qend, q.edns

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, timeout: float) -> int:
        """Wait for in-flight slow-path work; returns how many were cut off."""
        if not self.tasks:
            return 0
        done, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        return len(pending)
