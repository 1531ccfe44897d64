"""Every reply shape x every client variant, rendered from the cache and
uncached, checked byte for byte against tests/data/render_golden.txt and by
a strict third-party parser (dnspython rejects trailing junk, miscounted
sections and a second OPT).

Regenerate the golden file (after a deliberate change of the wire format)
with ``NODECACHE_REGEN_GOLDEN=1 pytest tests/unit/test_render_golden.py``
and review the diff.
"""
import os
from pathlib import Path

import dns.flags
import dns.message
import pytest
from dnslib import QTYPE

from nodecache_lab.fakes import a_record, reply_to, soa
from nodecache.ttlcache.entry import Entry, render_uncached
from nodecache.dns.reply import analyse
from nodecache.dns.wire import AD, CD, RD, make_query, question_bytes, scan

GOLDEN = Path(__file__).parent.parent / "data" / "render_golden.txt"
NAME = "svc.default.svc.cluster.local"
Q = question_bytes(NAME, QTYPE.A)


def _upstream(shape: str) -> bytes:
    query = make_query(0x4242, Q, RD, 0)
    if shape == "answer":
        return reply_to(query, a_record(NAME, ttl=30), edns=True)
    if shape == "nodata_soa":
        return reply_to(query, auth=(soa(),), edns=True)
    if shape == "nodata_bare":
        return reply_to(query, edns=True)
    if shape == "nxdomain":
        return reply_to(query, auth=(soa(),), rcode=3, edns=True)
    if shape == "servfail":
        return reply_to(query, rcode=2, edns=True)
    if shape == "refused":
        return reply_to(query, rcode=5, edns=False)
    if shape == "truncated":
        raw = bytearray(reply_to(query, edns=True))
        raw[2] |= 0x02  # TC
        return bytes(raw)
    raise ValueError(shape)


SHAPES = ("answer", "nodata_soa", "nodata_bare", "nxdomain", "servfail", "refused", "truncated")
# (label, client edns: -1 none / 0 OPT / 1 OPT+DO, client flag bits)
CLIENTS = [(f"{e}-{name}", edns, flags)
           for e, edns in (("plain", -1), ("opt", 0), ("do", 1))
           for name, flags in (("rd", RD), ("none", 0), ("rd+cd", RD | CD), ("rd+ad", RD | AD),
                               ("cd+ad", CD | AD))]


def _render(shape: str, edns: int, flags: int, cached: bool) -> bytes:
    client = make_query(0x0A0B, question_bytes("Svc.Default.svc.cluster.local", QTYPE.A), flags, edns)
    key, qend, qflags, _, cedns = scan(client)
    reply = analyse(_upstream(shape))
    if not cached:
        return render_uncached(reply, client, qend, qflags, cedns)
    entry = Entry(key, reply, 0, 30, now=100.0)
    # render every other variant first: a memoised body of one must not leak into another
    for _, e2, f2 in CLIENTS:
        other = make_query(1, Q, f2, e2)
        k2, q2, fl2, _, ed2 = scan(other)
        entry.render(other, q2, fl2, ed2, 100.2)
    return entry.render(client, qend, qflags, cedns, 100.5)


CASES = [(f"{shape}/{label}/{'cached' if cached else 'uncached'}", shape, edns, flags, cached)
         for shape in SHAPES for label, edns, flags in CLIENTS for cached in (True, False)]


def _golden() -> dict[str, str]:
    if os.environ.get("NODECACHE_REGEN_GOLDEN"):
        GOLDEN.write_text("".join(f"{case[0]} {_render(*case[1:]).hex()}\n" for case in CASES))
    return dict(line.split(" ", 1) for line in GOLDEN.read_text().splitlines())


GOLDEN_BYTES = _golden()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rendered_reply_matches_golden_and_parses_strictly(case):
    name, shape, edns, flags, cached = case
    wire = _render(shape, edns, flags, cached)
    assert wire.hex() == GOLDEN_BYTES[name].strip()
    msg = dns.message.from_wire(wire)  # raises on trailing junk / bad counts / two OPTs
    assert msg.id == 0x0A0B
    assert msg.question[0].name.to_text() == "Svc.Default.svc.cluster.local."
    # EDNS: an OPT exactly when the client sent one, DO echoed (RFC 6891 §7, RFC 3225 §3)
    assert msg.edns == (-1 if edns < 0 else 0)
    if edns >= 0:
        assert bool(msg.ednsflags & dns.flags.DO) == (edns == 1)
    # RD and CD echoed from the client; AD only to clients that asked with AD or DO (RFC 6840 §5.8)
    assert bool(msg.flags & dns.flags.RD) == bool(flags & RD)
    assert bool(msg.flags & dns.flags.CD) == bool(flags & CD)
    assert msg.flags & dns.flags.QR and msg.flags & dns.flags.RA and not msg.flags & dns.flags.AA
    assert msg.rcode() == {"nxdomain": 3, "servfail": 2, "refused": 5}.get(shape, 0)
    assert bool(msg.flags & dns.flags.TC) == (shape == "truncated")


def test_negative_ttl_from_upstream_is_sent_as_zero_cached_or_not():
    # RFC 2181 §8: a TTL with the top bit set is treated as zero; clients never see it raw
    raw = bytearray(reply_to(make_query(0x4242, Q, RD, 0), a_record(NAME, ttl=30), edns=True))
    at = raw.index(bytes.fromhex("0000001e"))
    raw[at:at + 4] = b"\xff\xff\xff\xff"
    reply = analyse(bytes(raw))
    client = make_query(7, Q, RD, -1)
    key, qend, qflags, _, edns = scan(client)
    for wire in (render_uncached(reply, client, qend, qflags, edns),
                 Entry(key, reply, 0, 30, now=100.0).render(client, qend, qflags, edns, 100.1)):
        assert dns.message.from_wire(wire).answer[0].ttl == 0
