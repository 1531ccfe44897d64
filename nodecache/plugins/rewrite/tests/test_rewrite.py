"""rewrite as CoreDNS's tests describe it: the grammar, then name rules of
every match type with the reply turned back, type and ttl rules, and
continue/stop."""
import dns.message
import pytest
from dnslib import QTYPE, DNSRecord

from nodecache.config.corefile import CorefileError
from nodecache.config.parse import parse_config
from nodecache.plugins.regex import compile_regex
from nodecache.plugins.rewrite.setup import Rule
from nodecache.plugins.rewrite.stage import rename
from nodecache.emulated.client import build
from nodecache_lab.harness import node


@pytest.mark.parametrize("text, error", [
    ("rewrite", "needs a rule"),
    ("rewrite name a.", "FROM TO"),
    ("rewrite name regex ( b.", "regex"),
    ("rewrite name regex a b answer auto", "answer auto needs"),
    ("rewrite name a. b. answer bogus", "answer auto"),
    ("rewrite type A", "type FROM TO"),
    ("rewrite type A BOGUS", "unknown type"),
    ("rewrite ttl a. x", "SECONDS or MIN-MAX"),
    ("rewrite ttl a. 30-10", "SECONDS or MIN-MAX"),
    ("rewrite edns0 local set 0xffee 0x61", "not supported"),
    ("rewrite bogus a b", "unknown field"),
])
def test_setup_rejects(text, error):
    with pytest.raises(CorefileError, match=error):
        parse_config(f". {{\n    {text}\n}}\n")


@pytest.mark.parametrize("rule, name, want", [
    (Rule("name", match="exact", source="a.example.", target="b.example."), "a.example.", "b.example."),
    (Rule("name", match="exact", source="a.example.", target="b.example."), "x.a.example.", None),
    (Rule("name", match="prefix", source="old-", target="new-"), "old-api.example.", "new-api.example."),
    (Rule("name", match="suffix", source=".corp.", target=".svc.cluster.local."), "db.corp.",
     "db.svc.cluster.local."),
    (Rule("name", match="substring", source="staging", target="prod"), "api.staging.example.",
     "api.prod.example."),
    (Rule("name", match="regex", source=r"^(.*)\.corp\.$", target="{1}.internal.",
          pattern=compile_regex(r"^(.*)\.corp\.$")), "db.corp.", "db.internal."),
])
def test_rename(rule, name, want):
    assert rename(rule, name) == want


COREFILE = """.:{port} {{
    bind 127.0.0.1
    cache 30
    rewrite continue name exact old-1.example. svc-1.default.svc.cluster.local.
    rewrite ttl exact svc-1.default.svc.cluster.local. 5
    rewrite name suffix .corp. .default.svc.cluster.local.
    rewrite name regex ^r-(svc-[0-9]+)\\.example\\.$ {{1}}.default.svc.cluster.local. answer name ^(svc-[0-9]+)\\.default\\.svc\\.cluster\\.local\\.$ r-{{1}}.example.
    rewrite type ANY A
    forward . 127.0.0.1:{up0}
}}
"""


async def _ask(n, name, qtype=QTYPE.A):
    wire = await n.udp(build(name, qtype, do=0))
    dns.message.from_wire(wire)
    return DNSRecord.parse(wire)


async def test_behaviour_table():
    async with node(COREFILE) as n:
        for _ in range(2):  # the second from the cache, under the client's own name
            rec = await _ask(n, "Old-1.example")
            assert str(rec.q.qname) == "Old-1.example." and rec.rr
            assert {str(r.rname) for r in rec.rr} == {"old-1.example."} and rec.rr[0].ttl <= 5  # continue: the ttl rule (on the new name) too
        assert n.up.names().count("svc-1.default.svc.cluster.local.") == 1
        rec = await _ask(n, "svc-2.corp")
        assert {str(r.rname) for r in rec.rr} == {"svc-2.corp."}
        rec = await _ask(n, "r-svc-3.example")
        assert {str(r.rname) for r in rec.rr} == {"r-svc-3.example."}
        rec = await _ask(n, "svc-4.default.svc.cluster.local", 255)  # type ANY asked as A, answered as ANY
        assert rec.q.qtype == 255 and rec.rr and all(r.rtype == QTYPE.A for r in rec.rr)
