"""Test helpers: an injectable clock, a runner, reply builders."""
from __future__ import annotations

import asyncio

import uvloop
from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, A, DNSRecord


class FakeClock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(coro, timeout: float = 30.0):
    """Run a coroutine on uvloop (the product's loop), bounded in time. An
    exception nobody caught (the loop's handler: a callback or a task that
    failed) fails the test: in the agent it would be a panic."""
    uncaught = []

    async def bounded():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: uncaught.append(ctx))
        return await asyncio.wait_for(coro, timeout)
    result = uvloop.run(bounded())
    if uncaught:
        ctx = uncaught[0]
        raise AssertionError(f"{len(uncaught)} uncaught in the event loop: {ctx.get('message')}: "
                             f"{ctx.get('exception')!r}") from ctx.get("exception")
    return result


def reply_to(query: bytes, *answers: RR, auth: tuple = (), rcode: int = 0, edns: bool = False) -> bytes:
    req = DNSRecord.parse(query)
    rep = req.reply()
    rep.header.rcode = rcode
    for rr in answers:
        rep.add_answer(rr)
    for rr in auth:
        rep.add_auth(rr)
    if edns:
        rep.add_ar(EDNS0(udp_len=1232))
    return rep.pack()


def a_record(name: str, ip: str = "10.0.0.1", ttl: int = 30) -> RR:
    return RR(name, QTYPE.A, ttl=ttl, rdata=A(ip))


def soa(zone: str = "cluster.local.", ttl: int = 60, minimum: int = 30) -> RR:
    return RR(zone, QTYPE.SOA, ttl=ttl, rdata=SOA("ns." + zone, "host." + zone,
                                                  (1, 7200, 1800, 86400, minimum)))


def parsed(wire: bytes) -> DNSRecord:
    return DNSRecord.parse(wire)


NOERROR, NXDOMAIN, SERVFAIL = RCODE.NOERROR, RCODE.NXDOMAIN, RCODE.SERVFAIL


async def eventually(condition, timeout: float = 5.0, what: str = "") -> None:
    """Wait until ``condition()`` is true (polled every 10 ms); fail after
    ``timeout`` seconds. For effects that happen in the background (a reload,
    a drain, a refresh): waiting on the effect, not for a fixed time, keeps
    the test both fast and immune to a slow machine."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what or condition}")
        await asyncio.sleep(0.01)
