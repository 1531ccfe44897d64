"""Hostile and broken clients: the RFC's error reply or a drop, never a crash
or a stuck task."""
import asyncio
import random
import socket

from dnslib import QTYPE, DNSRecord

from nodecache.emulated.client import build
from nodecache.dns.framing import frame
from nodecache.dns.wire import make_query, question_bytes
from nodecache.server.tcp import TcpLimits
from nodecache_lab.harness import CLUSTER, node


async def udp_raw(port, data, timeout=0.3):
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, d, a):
            if not fut.done():
                fut.set_result(d)
    t, _ = await loop.create_datagram_endpoint(P, remote_addr=("127.0.0.1", port))
    t.sendto(data)
    try:
        return await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        return None
    finally:
        t.close()


async def test_malformed_udp_packets():
    q = question_bytes("svc-1.default.svc.cluster.local", QTYPE.A)
    cases = {
        b"": None, b"\x01": None, b"\x00" * 11: None,             # dropped: no header
        make_query(5, q, flags=0x8100): None,                     # a response: dropped
        b"\x00\x05\x01\x00" + b"\x00" * 8: 1,                      # qdcount 0: FORMERR
        make_query(5, q)[:-3]: 1,                                 # truncated question
        make_query(5, q, flags=0x1100): 4,                        # opcode STATUS: NOTIMP
        make_query(5, question_bytes("x.example.com", QTYPE.A, 3)): 5,  # CHAOS: REFUSED
    }
    async with node(CLUSTER) as n:
        for data, rcode in cases.items():
            reply = await udp_raw(n.port, data)
            if rcode is None:
                assert reply is None, data
            else:
                rec = DNSRecord.parse(reply)
                assert rec.header.rcode == rcode and rec.header.id == 5, data
        assert n.up.seen == []
        assert DNSRecord.parse(await n.udp(build("www.example.com", QTYPE.A))).rr


async def test_random_garbage_never_breaks_the_server():
    rng = random.Random(1)
    base = build("svc-1.default.svc.cluster.local", QTYPE.A, do=1)
    async with node(CLUSTER) as n:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(2000):
            if i % 2:
                data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 80)))
            else:  # mutate a valid query: flips and cuts
                data = bytearray(base)
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] = rng.getrandbits(8)
                data = bytes(data[:rng.randint(0, len(data))])
            sock.sendto(data, ("127.0.0.1", n.port))
        sock.close()
        await asyncio.sleep(0.5)
        assert sum(b.panics for b in n.agent.blocks) == 0
        assert DNSRecord.parse(await n.udp(build("www.example.com", QTYPE.A))).rr


async def test_oversized_tcp_frame_closes_the_connection():
    async with node(CLUSTER) as n:
        reader, writer = await asyncio.open_connection("127.0.0.1", n.port)
        writer.write(b"\xff\xff" + b"\x00" * 100)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()


async def test_half_open_and_idle_connections_are_closed():
    async with node(CLUSTER, tcp_limits=TcpLimits(idle=0.3)) as n:
        reader, writer = await asyncio.open_connection("127.0.0.1", n.port)
        writer.write(b"\x00\x30\x12")  # a frame that never completes
        assert await asyncio.wait_for(reader.read(), 2) == b""
        listener = n.agent.listeners[0]
        assert listener.tcp_state.idle_closed == 1 and not listener.tcp_state.conns


async def test_client_half_close_still_gets_its_answers():
    async with node(CLUSTER, delay=0.1) as n:
        reader, writer = await asyncio.open_connection("127.0.0.1", n.port)
        writer.write(frame(build("svc-2.default.svc.cluster.local", QTYPE.A)))
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 3)
        assert DNSRecord.parse(data[2:]).rr


async def test_connection_cap():
    async with node(CLUSTER, tcp_limits=TcpLimits(max_conns=3)) as n:
        conns = [await asyncio.open_connection("127.0.0.1", n.port) for _ in range(3)]
        reader, writer = await asyncio.open_connection("127.0.0.1", n.port)
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed at once
        assert n.agent.listeners[0].tcp_state.rejected_conns == 1
        for _, w in conns:
            w.close()


async def test_inflight_cap_applies_backpressure_not_loss():
    names = [f"svc-{i}.other.svc.cluster.local" for i in range(40)]
    async with node(CLUSTER, delay=0.05, tcp_limits=TcpLimits(max_inflight=4)) as n:
        replies = await n.tcp_many([build(x, QTYPE.A, qid=i) for i, x in enumerate(names)])
        assert sorted(r[0] << 8 | r[1] for r in replies) == list(range(40))
