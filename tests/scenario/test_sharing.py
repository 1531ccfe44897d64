"""Ports shared with another server (server.sharing), on loopback: an agent
that joined a port another process serves leaves it to that process the
moment it stops reading, lets go of its steering once it holds the port
alone, and keeps its steering when the other server closes its sockets one
by one. Each with its control: today's order, or no settling."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

from dnslib import QTYPE

from nodecache.config.parse import parse_config
from nodecache.server import sharing
from nodecache.server.agent import Agent
from nodecache.emulated import client
from nodecache.emulated.client import build
from nodecache.emulated.upstream import FakeUpstream

COREFILE = ".:{port} {{\n    bind 127.0.0.1\n    forward . 127.0.0.1:{up}\n}}\n"


class OtherServer:
    """node-cache as a reuseport group member sees it: ``count`` sockets on
    the port, each answering every query (QR set) from a thread of its own."""

    def __init__(self, port: int, count: int = 1):
        self.socks = []
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", port))
            s.settimeout(0.05)
            self.socks.append(s)
        self.answered = [0] * count
        self.running = True
        self.threads = [threading.Thread(target=self._serve, args=(k,), daemon=True) for k in range(count)]
        for t in self.threads:
            t.start()

    def _serve(self, k: int) -> None:
        sock = self.socks[k]
        while self.running and sock.fileno() >= 0:
            try:
                data, addr = sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            sock.sendto(data[:2] + bytes([data[2] | 0x80]) + data[3:], addr)
            self.answered[k] += 1

    def close(self, k: int | None = None) -> None:
        for i in ([k] if k is not None else range(len(self.socks))):
            self.socks[i].close()
        if k is None:
            self.running = False


async def _agent_on(port: int, up_port: int) -> Agent:
    agent = Agent(parse_config(COREFILE.format(port=port, up=up_port), "test"))
    await agent.start()
    return agent


async def _load(port: int, count: int, rate: float) -> int:
    """Queries at ``rate``/s from fresh sockets; how many were answered."""
    queries = [build(f"q{i}.example.com", QTYPE.A, qid=i) for i in range(count)]
    result = await client.paced("127.0.0.1", port, queries, rate, timeout=1.5)
    return result["sent"] - result["unanswered"]


def _slow(data: bytes) -> float:
    return 1.0 if b"\x04slow" in data else 0.0


async def _stop_while_draining(release: bool) -> tuple[int, int]:
    """The reviewer's scenario: our agent joined node-cache's port, stops
    with a slow query in flight (its drain lasts), while pods ask on."""
    up = FakeUpstream(delay=_slow)
    await up.start()
    port = client.free_port()
    other = OtherServer(port)
    agent = await _agent_on(port, up.port)
    try:
        assert agent.shared, "the agent did not see the port shared"
        slow = asyncio.ensure_future(client.udp("127.0.0.1", port, build("slow.example.com", QTYPE.A), 5))
        await asyncio.sleep(0.2)
        if release:
            sharing.release(sharing.shared_ports(agent.listening_sockets()))
        stopping = asyncio.ensure_future(agent.stop(3.0))
        answered = await _load(port, 400, 400)
        await stopping
        await slow
        return answered, 400
    finally:
        other.close()
        await up.stop()


async def test_stopping_beside_another_server_leaves_it_every_new_query():
    answered, sent = await _stop_while_draining(release=True)
    assert answered == sent


async def test_negative_control_without_release_the_drain_black_holes_the_address():
    answered, sent = await _stop_while_draining(release=False)
    assert answered < sent * 0.5, f"{answered} of {sent} answered without the release"


async def _alone_then_a_joiner(settle: bool) -> tuple[int, int]:
    up = FakeUpstream()
    await up.start()
    port = client.free_port()
    other = OtherServer(port)
    agent = await _agent_on(port, up.port)
    try:
        other.close()  # the migration is done: node-cache exited
        time.sleep(0.05)
        if settle:
            agent.shared = sharing.settle(agent.shared, agent.udp_answers())
            assert agent.shared == []
        joiner = OtherServer(port)  # a later joiner of the same user (a test, a rollback)
        await _load(port, 200, 1000)
        served_by_us = agent.listeners[0].udp.datagrams
        joiner.close()
        return joiner.answered[0], served_by_us
    finally:
        await agent.stop(0.5)
        await up.stop()


async def test_alone_again_the_steering_is_detached_and_a_joiner_shares_by_hash():
    theirs, ours = await _alone_then_a_joiner(settle=True)
    assert theirs > 20 and ours > 20, (theirs, ours)


async def test_negative_control_the_stale_program_gives_the_joiner_everything():
    theirs, ours = await _alone_then_a_joiner(settle=False)
    assert ours <= 2 and theirs >= 198, (theirs, ours)


async def _multisocket(settle: bool) -> tuple[int, int]:
    up = FakeUpstream()
    await up.start()
    port = client.free_port()
    other = OtherServer(port, count=3)  # CoreDNS multisocket: several sockets per address
    agent = await _agent_on(port, up.port)
    try:
        other.close(0)  # it closes its sockets one at a time
        time.sleep(0.05)
        if settle:
            agent.shared = sharing.settle(agent.shared, agent.udp_answers())
            assert agent.shared, "still shared with two of its sockets"
        before = sum(other.answered)
        answered = await _load(port, 200, 1000)
        return sum(other.answered) - before, answered
    finally:
        other.close()
        await agent.stop(0.5)
        await up.stop()


async def test_when_the_other_server_closes_a_socket_the_group_is_steered_to_us_again():
    to_them, answered = await _multisocket(settle=True)
    assert to_them == 0 and answered == 200


async def test_negative_control_unsettled_the_exiting_process_gets_a_share():
    to_them, _ = await _multisocket(settle=False)
    assert to_them > 20
