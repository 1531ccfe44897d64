"""Upstream churn: connections that close or reset under pipelined queries,
an upstream that refuses for a moment, ID hygiene. Each mechanism has its
negative control: the same scenario with ``forwarder.retry`` off (no re-send,
no retry round) must fail."""
import asyncio
import time

import pytest
from dnslib import QTYPE, DNSRecord

from nodecache.emulated.client import build, free_port
from nodecache.emulated.upstream import ClusterDNS, FakeUpstream
from nodecache.upstream import transport
from nodecache.upstream.cork import Cork
from nodecache_lab.fakes import a_record, reply_to, run
from nodecache_lab.harness import CLUSTER, node


def _names(n: int, tag: str) -> list[str]:
    return [f"svc-{i}.default.svc.cluster.local" if i < 100 else f"{tag}{i}.example.com" for i in range(n)]


def _set_retry(agent, on: bool) -> None:
    for block in agent.blocks:
        if block.forward_stage:
            block.forward_stage.forwarder.retry = on


async def _sever_scenario(how: str, retry: bool) -> tuple[list[int], float, int]:
    # each of the first 2 connections is cut when its 6th query arrives; the
    # upstream is slow enough (0.2 s) that 5 earlier ones are still in flight
    async with node(CLUSTER, delay=0.2, sever=(how, 6, 2)) as n:
        _set_retry(n.agent, retry)
        t0 = time.monotonic()
        queries = [build(f"svc-{i}.default.svc.cluster.local", QTYPE.A) for i in range(20)]
        replies = await asyncio.gather(*(n.udp(q, timeout=8) for q in queries))
        rcodes = [DNSRecord.parse(r).header.rcode for r in replies]
        fwd = n.agent.blocks[0].forward_stage.forwarder
        return rcodes, time.monotonic() - t0, (fwd.resent, n.up.severed)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_queries_in_flight_on_a_dead_connection_are_resent_at_once(how):
    rcodes, elapsed, (resent, severed) = run(_sever_scenario(how, retry=True))
    assert rcodes == [0] * 20 and severed == 2
    assert resent >= 10          # every query that was in flight on the two cut connections
    assert elapsed < 1.5         # re-sent at once, not after the 2 s attempt timeout


@pytest.mark.parametrize("how", ["close", "reset"])
def test_negative_control_dead_connection_without_retry_fails_queries(how):
    rcodes, _, _ = run(_sever_scenario(how, retry=False))
    assert rcodes.count(2) >= 5  # SERVFAIL for what was in flight


async def _refuse_then_come_back(retry: bool, down_for: float = 1.0) -> tuple[list[int], float]:
    port = free_port()
    corefile = CLUSTER.replace("{up0}", str(port))
    async with node(corefile, upstreams=0) as n:
        _set_retry(n.agent, retry)
        up = FakeUpstream(answer=ClusterDNS().answer)

        async def restart():
            await asyncio.sleep(down_for)
            await up.start("127.0.0.1", port)
        starter = asyncio.get_running_loop().create_task(restart())
        t0 = time.monotonic()
        try:
            replies = await asyncio.gather(*(n.udp(build(f"svc-{i}.default.svc.cluster.local", QTYPE.A), 8)
                                             for i in range(5)))
            return [DNSRecord.parse(r).header.rcode for r in replies], time.monotonic() - t0
        finally:
            await starter
            await up.stop()


def test_refused_upstream_is_retried_with_backoff_until_it_comes_back():
    rcodes, elapsed = run(_refuse_then_come_back(retry=True))
    assert rcodes == [0] * 5
    assert 0.9 < elapsed < 2.0   # answered shortly after the upstream is back (backoff <= 0.5 s)


def test_negative_control_refused_upstream_without_retry_fails_at_once():
    rcodes, elapsed = run(_refuse_then_come_back(retry=False))
    assert rcodes == [2] * 5 and elapsed < 0.9


async def test_upstream_refusing_past_the_deadline_gives_servfail_at_the_deadline():
    corefile = CLUSTER.replace("{up0}", "1")  # nothing listens on port 1
    async with node(corefile, upstreams=0) as n:
        t0 = time.monotonic()
        rec = DNSRecord.parse(await n.tcp(build("svc-1.default.svc.cluster.local", QTYPE.A), 8))
        fwd = n.agent.blocks[0].forward_stage.forwarder
        assert rec.header.rcode == 2 and 4.8 < time.monotonic() - t0 < 6.0
        assert fwd.backoffs >= 8  # kept trying the only upstream, spaced out


async def test_single_reset_does_not_mark_the_upstream_down():
    async with node(CLUSTER, delay=0.1, sever=("reset", 3, 1)) as n:
        replies = await asyncio.gather(*(n.udp(build(f"svc-{i}.default.svc.cluster.local", QTYPE.A))
                                         for i in range(5)))
        assert [DNSRecord.parse(r).header.rcode for r in replies] == [0] * 5
        up = n.agent.blocks[0].forward_stage.forwarder.upstreams[0]
        assert up.healthy and up.fails == 0 and up.failures == 0


async def test_timed_out_id_is_not_reused_while_a_late_reply_may_come():
    loop = asyncio.get_running_loop()
    conn = transport._TcpConnection(loop, Cork())

    class Sink:
        def write(self, data): pass
        def is_closing(self): return False
        def close(self): pass
    conn.transport = Sink()
    q = build("a.example.com", QTYPE.A)
    with pytest.raises(asyncio.TimeoutError):
        await transport.exchange_on(conn, q, 0.01)
    (late_id,) = conn.pending
    assert conn.pending[late_id] is None and conn.quarantined == 1 and conn.live == 0
    # the next 2,000 queries never draw the quarantined ID
    for _ in range(2000):
        fut = loop.create_future()
        qid = conn.send(q, fut)
        assert qid != late_id
        fut.cancel()
        conn.pending.pop(qid)
    # a reply under that ID to another question (spoofed, confused): it frees nothing
    other = reply_to(build("b.example.com", QTYPE.A), a_record("b.example.com."))
    conn.deliver(late_id.to_bytes(2, "big") + other[2:])
    assert conn.pending[late_id] is None and conn.quarantined == 1 and conn.unmatched == 1
    # the late reply arrives: dropped (not given to anyone), and the ID is free again
    conn.deliver(late_id.to_bytes(2, "big") + reply_to(q, a_record("a.example.com."))[2:])
    assert late_id not in conn.pending and conn.quarantined == 0 and conn.unmatched == 2


async def test_reply_with_other_do_or_cd_is_answered_but_never_cached():
    def flip_cd(query: bytes) -> bytes | None:
        out = bytearray(ClusterDNS().answer(query))
        out[3] ^= 0x10  # CD differs from what we asked
        return bytes(out)
    async with node(CLUSTER, answer=flip_cd) as n:
        name = "svc-1.default.svc.cluster.local"
        for _ in range(2):
            rec = DNSRecord.parse(await n.udp(build(name, QTYPE.A)))
            assert rec.header.rcode == 0 and rec.rr
        assert len(n.up.seen) == 2 and len(n.agent.blocks[0].cache) == 0
        assert n.agent.blocks[0].forward_stage.forwarder.mismatched == 2


async def test_write_to_a_closing_connection_never_raises_into_the_chain():
    loop = asyncio.get_running_loop()
    conn = transport._TcpConnection(loop, Cork())

    class Closing:
        def write(self, data): raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")
        def is_closing(self): return False
        def abort(self): pass
    conn.transport = Closing()
    with pytest.raises(transport.UpstreamClosed):
        conn.send(build("a.example.com", QTYPE.A), loop.create_future())
    assert conn.closed and not conn.pending


def test_udp_upstream_queries_share_a_few_long_lived_sockets():
    corefile = """.:{port} {{
    bind 127.0.0.1
    forward . 127.0.0.1:{up0}
}}"""
    async def go():
        async with node(corefile) as n:
            replies = await asyncio.gather(*(n.udp(build(f"u{i}.example.com", QTYPE.A)) for i in range(200)))
            assert all(DNSRecord.parse(r).header.rcode == 0 for r in replies)
            assert len({s.proto for s in n.up.seen}) == 1 and len(n.up.seen) == 200
            pool = n.agent.blocks[0].forward_stage.forwarder.upstreams[0].udp
            assert pool.opened <= transport.UDP_SOCKETS + 1   # not one socket per query
            assert len(n.up.udp_ports) <= transport.UDP_SOCKETS + 1
    run(go())


class _Sink:
    def __init__(self):
        self.sent = []

    def write(self, data): self.sent.append(data)
    def is_closing(self): return False
    def close(self): pass


async def test_a_reply_to_another_question_never_frees_or_fails_a_pending_query():
    """An off-path spoofer who knows the port and ID sends a reply with the
    pending ID but its own question (or a query, QR clear): the query keeps
    waiting and gets the real reply. Control: freeing the ID before the
    question is checked (the code before) ended the query with the forgery."""
    loop = asyncio.get_running_loop()
    conn = transport._TcpConnection(loop, Cork())
    conn.transport = _Sink()
    q = build("a.example.com", QTYPE.A)
    fut = loop.create_future()
    qid = conn.send(q, fut)
    head = qid.to_bytes(2, "big")
    conn.deliver(head + reply_to(build("evil.example.com", QTYPE.A), a_record("evil.example.com."))[2:])
    conn.deliver(head + q[2:])  # QR clear: not a reply
    conn.deliver(head + b"\x81\x80" + b"\x00" * 8)  # no question at all
    assert not fut.done() and conn.pending[qid] is fut and conn.unmatched == 3
    real = reply_to(q, a_record("a.example.com."))
    conn.deliver(head + real[2:])
    assert fut.result() == head + real[2:] and qid not in conn.pending and not conn.questions


async def test_upstream_ids_come_from_the_csprng(monkeypatch):
    # a collision with a pending ID is drawn again; IDs are read from
    # os.urandom in batches (popped from the end of the batch)
    raw = b"".join(i.to_bytes(2, "big") for i in [7] * (transport._ID_BATCH - 3) + [999, 4242, 4242])
    monkeypatch.setattr(transport.os, "urandom", lambda n: raw[:n])
    monkeypatch.setattr(transport, "_ids", [])
    conn = transport._TcpConnection(asyncio.get_running_loop(), Cork())
    conn.transport = _Sink()
    q = build("a.example.com", QTYPE.A)
    assert conn.send(q, asyncio.get_running_loop().create_future()) == 4242
    assert conn.send(q, asyncio.get_running_loop().create_future()) == 999
