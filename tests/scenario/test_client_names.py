"""Names a client chooses, through the plugins that turn names into text:
``template`` writes them into zone text, ``rewrite`` turns them into new
names and back. Every byte a name may hold comes back as that byte, or the
query gets SERVFAIL; either way at most one log line a minute, never a
traceback per query (101 queries made 2,407 lines before)."""
from __future__ import annotations

import logging

from nodecache.dns.wire import make_query
from nodecache_lab.harness import node

TEMPLATE = """example.:{port} {{
    bind 127.0.0.1
    template IN A example {{
        answer "{{{{ .Name }}}} 60 IN A 192.0.2.1"
    }}
}}
"""
REWRITE = """corp.:{port} {{
    bind 127.0.0.1
    rewrite name suffix .corp. .example.com.
    forward . 127.0.0.1:{up0}
}}
"""


def _query(label: bytes, zone: bytes = b"\x07example\x00") -> bytes:
    return make_query(7, bytes([len(label)]) + label + zone + b"\x00\x01\x00\x01")


def _owner_and_rcode(reply: bytes, qend: int) -> tuple[bytes, int]:
    """The first answer's owner name as wire bytes (a pointer followed), and the RCODE."""
    rcode = reply[3] & 0xF
    if reply[6:8] == b"\x00\x00":
        return b"", rcode
    i = qend
    if reply[i] & 0xC0 == 0xC0:
        i = (reply[i] & 0x3F) << 8 | reply[i + 1]
    end = i
    while reply[end]:
        end += reply[end] + 1
    return reply[i:end + 1], rcode


async def test_template_writes_the_clients_name_back_as_asked(caplog):
    async with node(TEMPLATE) as n:
        for label in (b"a;b", b"a b", b"a(b", b"a)b", b"$ORIGIN", b'a"b', b"a\\b", b"x@y"):
            q = _query(label)
            owner, rcode = _owner_and_rcode(await n.udp(q), len(q))
            assert rcode == 0 and owner == q[12:len(q) - 4], (label, owner)


async def test_template_refuses_what_it_cannot_write_back_with_one_log_line(caplog):
    async with node(TEMPLATE) as n:
        with caplog.at_level(logging.WARNING):
            for k in range(101):
                label = b"a.b" if k % 2 else b"a\xffb"  # a dot inside a label; a byte of 0x80 or more
                owner, rcode = _owner_and_rcode(await n.udp(_query(label)), 0)
                assert rcode == 2 and owner == b""
        assert len(caplog.records) == 1 and not caplog.records[0].exc_info


def _echo_answer(data: bytes) -> bytes:
    """An upstream that answers any A question with one address, by hand
    (dnslib, under the fake cluster DNS, reads no name that is not UTF-8)."""
    qend = data.index(0, 12) + 5
    return (data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + data[12:qend]
            + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x07")


async def test_rewrite_keeps_every_byte_and_fails_without_a_traceback(caplog):
    async with node(REWRITE, answer=_echo_answer) as n:
        fine = _query(b"a;b", b"\x04corp\x00")
        owner, rcode = _owner_and_rcode(await n.udp(fine), len(fine))
        assert rcode == 0 and owner == fine[12:len(fine) - 4]
        with caplog.at_level(logging.WARNING):
            for _ in range(101):
                q = _query(b"a\xffb", b"\x04corp\x00")
                assert (await n.udp(q))[3] & 0xF == 2  # SERVFAIL: dnslib cannot read it back
        # the upstream was asked the rewritten name with the client's byte, not an escape's text
        assert b"\x03a\xffb\x07example\x03com\x00" in n.up.raw_questions()
        said = [r for r in caplog.records if r.name.startswith("nodecache")]
        assert len(said) == 1 and not said[0].exc_info, [r.getMessage() for r in said]
