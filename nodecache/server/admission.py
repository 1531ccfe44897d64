"""Admission of slow-path work: a global cap and a per-client share.

Every query that is not a cache hit becomes a task (full parse, the stage
chain, maybe an upstream exchange), which holds memory for as long as it
runs. One client flooding names that are not cached, or whose upstream is
slow, could otherwise hold them all and push the agent towards its memory
limit while every other pod waits. So at most ``total`` slow queries run
at once in the whole agent, and at most ``per_client`` for one client
address; beyond either the query is answered REFUSED at once (a policy
refusal, RFC 1035 §4.1.1), without a task. While one client is over its
share, other clients' misses are still admitted and forwarded.
"""
from __future__ import annotations

DEFAULT_TOTAL = 4096
DEFAULT_PER_CLIENT = 512


class Admission:
    __slots__ = ("total", "per_client", "running", "by_client", "refused_share", "refused_capacity")

    def __init__(self, total: int = DEFAULT_TOTAL, per_client: int = DEFAULT_PER_CLIENT):
        self.total, self.per_client = total, min(per_client, total)
        self.running = 0
        self.by_client: dict[str, int] = {}
        self.refused_share = 0     # nodecache_refused_total{reason="client_share"}
        self.refused_capacity = 0  # nodecache_refused_total{reason="capacity"}

    def admit(self, client: str) -> bool:
        held = self.by_client.get(client, 0)
        if held >= self.per_client:
            self.refused_share += 1
            return False
        if self.running >= self.total:
            self.refused_capacity += 1
            return False
        self.by_client[client] = held + 1
        self.running += 1
        return True

    def release(self, client: str, _task=None) -> None:
        self.running -= 1
        held = self.by_client[client] - 1
        if held:
            self.by_client[client] = held
        else:
            del self.by_client[client]
