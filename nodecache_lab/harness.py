"""Scenario harness: real listeners on 127.0.0.1 ports, recording fake upstreams."""
from __future__ import annotations

import contextlib

from nodecache.emulated import client
from nodecache.config.parse import parse_config
from nodecache.demo import COREFILE
from nodecache.emulated.upstream import ClusterDNS, FakeUpstream
from nodecache.server.agent import Agent
from nodecache.server.tcp import TcpLimits


@contextlib.asynccontextmanager
async def node(corefile: str, upstreams: int = 1, clock=None, tcp_limits: TcpLimits | None = None,
               admission=None, udp_coalesce: float = 0.0, **upstream_kw):
    """Start ``upstreams`` fake upstreams and an agent. The Corefile may use
    {port} (the agent's) and {up0}, {up1}... (the upstreams' ports)."""
    ups = []
    for _ in range(upstreams):
        kw = dict(upstream_kw)
        kw.setdefault("answer", ClusterDNS().answer)
        up = FakeUpstream(**kw)
        await up.start("127.0.0.1", 0)
        ups.append(up)
    port = client.free_port()
    text = corefile.format(port=port, **{f"up{i}": u.port for i, u in enumerate(ups)})
    agent = Agent(parse_config(text, "test Corefile"), **({"clock": clock} if clock else {}),
                  tcp_limits=tcp_limits, admission=admission, udp_coalesce=udp_coalesce)
    await agent.start()
    try:
        yield Node(agent, ups, port)
    finally:
        await agent.stop(1.0)
        for up in ups:
            await up.stop()


class Node:
    def __init__(self, agent, upstreams, port):
        self.agent, self.upstreams, self.port = agent, upstreams, port
        self.up = upstreams[0] if upstreams else None

    async def udp(self, data: bytes, timeout: float = 8.0) -> bytes:
        return await client.udp("127.0.0.1", self.port, data, timeout)

    async def tcp(self, data: bytes, timeout: float = 8.0) -> bytes:
        return await client.tcp("127.0.0.1", self.port, data, timeout)

    async def tcp_many(self, queries, timeout: float = 8.0):
        return await client.tcp_many("127.0.0.1", self.port, queries, timeout)


# node-cache's shape on loopback: the demo's own Corefile ({up0}: the fake upstream)
CLUSTER = COREFILE.replace("{upstream}", "{up0}")
