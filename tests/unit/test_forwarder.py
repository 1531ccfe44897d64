"""upstream.forwarder and upstream.direct over fake channels: coalescing in
the one in-flight table (slow path and direct exchanges alike), re-sends
when a channel dies, the in-flight cap, and quarantine of unanswered IDs.
The channel is a ``upstream.transport.Waiter`` completer written by hand:
no sockets, no upstream."""
import asyncio

import pytest
from dnslib import QTYPE

from nodecache.dns.key import make as make_key, question
from nodecache.dns.wire import AD, CD, RD, encode_name, make_query, question_bytes
from nodecache.upstream import direct
from nodecache.upstream.forwarder import Forwarder, Overloaded
from nodecache.upstream.options import ForwardConfig, Upstream
from nodecache.upstream.transport import UpstreamClosed
from nodecache_lab.fakes import a_record, reply_to

KEY = make_key(encode_name("svc.cluster.local."), QTYPE.A, 1, -1, 0)


class FakeChannel:
    """Hands out IDs, keeps each waiter until the test answers or fails it,
    and records which IDs were released still unanswered (quarantined)."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.sent: list[bytes] = []
        self.pending: dict[int, object] = {}
        self.quarantined: list[int] = []
        self.closed = False

    def send(self, query: bytes, waiter, question: bytes | None = None) -> int:
        if self.closed:
            raise UpstreamClosed("closed")
        qid = len(self.sent) + 1
        self.sent.append(query)
        self.pending[qid] = waiter
        return qid

    def release(self, qid: int, waiter) -> None:
        if self.pending.get(qid) is waiter:
            self.quarantined.append(qid)

    def answer(self, qid: int, query: bytes | None = None) -> None:
        """Complete ``qid`` with an answer to ``query`` (default: what was sent)."""
        query = query or self.sent[qid - 1]
        self.pending.pop(qid).set_result(reply_to(query, a_record("svc.cluster.local.")))

    def die(self) -> None:
        self.closed = True
        for waiter in list(self.pending.values()):
            if not waiter.done():
                waiter.set_exception(UpstreamClosed("reset"))
        self.pending.clear()


class FakePool:
    def __init__(self):
        self.channels = [FakeChannel()]

    def usable(self):
        live = [c for c in self.channels if not c.closed]
        if not live:
            self.channels.append(FakeChannel())
            live = self.channels[-1:]
        return live[0]

    @property
    def current(self) -> FakeChannel:
        return self.channels[-1]


def _forwarder(**cfg) -> tuple[Forwarder, FakePool]:
    fwd = Forwarder(ForwardConfig(".", (Upstream("127.0.0.1"),), **cfg))
    pool = FakePool()
    fwd.upstreams[0].udp = pool
    return fwd, pool


async def _settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def test_identical_misses_share_one_upstream_query():
    fwd, pool = _forwarder()
    asks = [asyncio.ensure_future(fwd.resolve(KEY)) for _ in range(3)]
    await _settle()
    assert len(pool.current.sent) == 1 and fwd.coalesced == 2
    pool.current.answer(1)
    replies = await asyncio.gather(*asks)
    assert all(r.rcode == 0 for r in replies) and not fwd.inflight


async def test_a_slow_path_query_follows_a_direct_exchange_in_the_one_table():
    fwd, pool = _forwarder()
    done = []
    assert direct.start(fwd, KEY, "asker", lambda key, reply, askers: done.append((reply, askers)))
    assert direct.start(fwd, KEY, "second", lambda *a: None)  # joins it
    follower = asyncio.ensure_future(fwd.resolve(KEY))
    await _settle()
    assert len(pool.current.sent) == 1  # one upstream query for all three
    pool.current.answer(1)
    reply = await follower
    assert reply.rcode == 0 and done[0][1] == ["asker", "second"] and done[0][0] is reply
    assert not fwd.inflight


async def test_a_follower_resolves_again_when_the_direct_exchange_falls_back():
    fwd, pool = _forwarder()
    fallen = []
    assert direct.start(fwd, KEY, "asker", lambda key, reply, askers: fallen.append((reply, askers)))
    follower = asyncio.ensure_future(fwd.resolve(KEY))
    await _settle()
    pool.current.die()  # the channel dies under the direct exchange
    await _settle()
    assert fallen == [(None, ["asker"])]  # its askers go to the slow path
    await _settle()
    assert len(pool.channels) == 2 and len(pool.current.sent) == 1  # the follower asked again, freshly
    pool.current.answer(1)
    assert (await follower).rcode == 0


async def test_a_direct_miss_never_starts_while_the_slow_path_has_the_key_in_flight():
    fwd, pool = _forwarder()
    slow = asyncio.ensure_future(fwd.resolve(KEY))
    await _settle()
    assert not direct.start(fwd, KEY, "asker", lambda *a: None)
    pool.current.answer(1)
    await slow


async def test_queries_on_a_dead_channel_are_resent_not_failed():
    fwd, pool = _forwarder()
    ask = asyncio.ensure_future(fwd.resolve(KEY))
    await _settle()
    pool.current.die()
    await _settle()
    assert fwd.resent == 1 and len(pool.channels) == 2
    pool.current.answer(1)
    assert (await ask).rcode == 0


async def test_the_in_flight_cap_counts_direct_exchanges_too():
    fwd, pool = _forwarder(max_concurrent=1)
    assert direct.start(fwd, KEY, "asker", lambda *a: None)
    other = make_key(encode_name("other.cluster.local."), QTYPE.A, 1, -1, 0)
    with pytest.raises(Overloaded):
        await fwd.resolve(other)
    assert not direct.start(fwd, other, "asker", lambda *a: None)  # no ready channel under the cap
    assert fwd.rejected == 1


async def test_an_unanswered_direct_exchange_leaves_its_id_quarantined():
    fwd, pool = _forwarder(attempt_timeout=0.01)
    fallen = []
    assert direct.start(fwd, KEY, "asker", lambda key, reply, askers: fallen.append(reply))
    await asyncio.sleep(0.05)
    assert fallen == [None] and pool.current.quarantined == [1] and not fwd.inflight


async def test_a_reply_to_another_question_hands_the_askers_over():
    fwd, pool = _forwarder()
    fallen = []
    assert direct.start(fwd, KEY, "asker", lambda key, reply, askers: fallen.append((reply, askers)))
    # a reply that answers another question (a channel that matched IDs
    # only): the forwarder's validation refuses it, the slow path takes over
    pool.current.answer(1, make_query(0, question_bytes("elsewhere.example.", QTYPE.A)))
    assert fallen == [(None, ["asker"])]


@pytest.mark.parametrize("do,cd", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_the_upstream_query_is_make_querys_for_every_do_and_cd(do, cd):
    """query_for builds from a table: the same bytes as make_query, with RD
    and AD, CD as the key says and an OPT with the key's DO (RFC 6840 §5.7)."""
    key = make_key(encode_name("Svc.cluster.local."), QTYPE.AAAA, 1, do, cd)
    forwarder = Forwarder(ForwardConfig(".", (Upstream("127.0.0.1"),)))
    assert forwarder.query_for(key) == make_query(0, question(key), RD | AD | (CD if cd else 0), do)
