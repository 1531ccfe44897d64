"""A block without ``bind`` listens on every address: each UDP reply must
leave from the address its query was sent to (RFC 5452 §9.1), or every stub
resolver drops it. On loopback, a query to 127.0.0.5 from 127.0.0.1 would
otherwise be answered from 127.0.0.1 (routing's choice of source)."""
import asyncio
import socket

import pytest
from dnslib import QTYPE, DNSRecord

from nodecache.server import agent as agent_module
from nodecache.server import udpwild
from nodecache.emulated.client import build
from nodecache_lab.harness import CLUSTER, node

NO_BIND = CLUSTER.replace("    bind 127.0.0.1\n", "")


async def _ask_from(family, dest: str, port: int, data: bytes, timeout: float = 2.0):
    """Send to dest:port; return (reply, the address it came from)."""
    def exchange():
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(data, (dest, port))
            reply, source = sock.recvfrom(65535)
            return reply, source[0]
    return await asyncio.to_thread(exchange)


MODES = ("one at a time", "batched", "no recvmmsg")


async def _hits_and_misses_answered_from(dest: str, family=socket.AF_INET, mode: str = "one at a time",
                                         monkeypatch=None) -> list:
    if mode == "no recvmmsg":
        monkeypatch.setattr(agent_module.mmsg, "available", lambda: False)
    async with node(NO_BIND) as n:
        server = n.agent.listeners[0].udp
        want = udpwild.WildcardUdpServer if mode == "no recvmmsg" else udpwild.WildcardBatchServer
        assert isinstance(server, want)
        if mode == "batched":
            server.use_batches(True)
        sources = []
        for name in ("svc-1.default.svc.cluster.local", "www.example.com"):
            for _ in range(2):  # a miss (answered later, by the slow or direct path), then a hit
                reply, source = await _ask_from(family, dest, n.port, build(name, QTYPE.A))
                assert DNSRecord.parse(reply).rr
                sources.append(source)
        if mode == "batched":  # a burst: several datagrams in one recvmmsg, replies in one sendmmsg
            replies = await asyncio.gather(*(_ask_from(family, dest, n.port, build(f"svc-{i}.default.svc.cluster.local",
                                                                                      QTYPE.A))
                                             for i in range(40)))
            sources += [source for _, source in replies]
            assert server.batches > 0
        return sources


@pytest.mark.parametrize("mode", MODES)
async def test_replies_leave_from_the_address_asked_on_a_wildcard_socket(mode, monkeypatch):
    sources = await _hits_and_misses_answered_from("127.0.0.5", mode=mode, monkeypatch=monkeypatch)
    assert set(sources) == {"127.0.0.5"} and len(sources) >= 4


@pytest.mark.parametrize("mode", MODES)
async def test_ipv6_queries_on_the_dual_stack_socket_too(mode, monkeypatch):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no ::1 on this machine")
    sources = await _hits_and_misses_answered_from("::1", socket.AF_INET6, mode, monkeypatch)
    assert set(sources) == {"::1"}


@pytest.mark.parametrize("mode", MODES)
async def test_negative_control_a_plain_sendto_answers_from_routings_choice(mode, monkeypatch):
    """The same queries with destinations not asked for: the replies come
    from 127.0.0.1, which a resolver that asked 127.0.0.5 drops."""
    monkeypatch.setattr(udpwild, "ask_destinations", lambda sock: None)
    sources = await _hits_and_misses_answered_from("127.0.0.5", mode=mode, monkeypatch=monkeypatch)
    assert set(sources) == {"127.0.0.1"}


def test_source_for_reads_both_families():
    v4 = (socket.IPPROTO_IP, udpwild.IP_PKTINFO, b"\x05\x00\x00\x00" + bytes([127, 0, 0, 1]) + bytes([127, 0, 0, 5]))
    assert udpwild.source_for([v4]) == [(socket.IPPROTO_IP, udpwild.IP_PKTINFO, bytes(4) + bytes([127, 0, 0, 5]) + bytes(4))]
    addr6 = socket.inet_pton(socket.AF_INET6, "fd00::10")
    v6 = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, addr6 + b"\x07\x00\x00\x00")
    assert udpwild.source_for([v6]) == [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, addr6 + bytes(4))]
    assert udpwild.source_for([]) == []


def test_bound_sockets_keep_the_batched_transport():
    assert agent_module.udpwild.is_wildcard(socket.create_server(("127.0.0.1", 0))) is False
