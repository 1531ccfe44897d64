"""whoami as CoreDNS's tests describe it: the client's address and port,
and the transport in the SRV name, in the additional section."""
import dns.message
from dnslib import QTYPE, DNSRecord

from nodecache.config.parse import parse_config
from nodecache.config.corefile import CorefileError
from nodecache.emulated.client import build
from nodecache_lab.harness import node

import pytest

COREFILE = "whoami.local:{port} {{\n    bind 127.0.0.1\n    whoami\n}}\n"


@pytest.mark.parametrize("proto", ["udp", "tcp"])
async def test_whoami_tells_address_port_and_transport(proto):
    async with node(COREFILE, upstreams=0) as n:
        wire = await (n.udp if proto == "udp" else n.tcp)(build("Who.WhoAmI.local", QTYPE.A, qid=77, do=0))
        dns.message.from_wire(wire)  # strict parse
        rec = DNSRecord.parse(wire)
        assert rec.header.id == 77 and rec.header.aa and rec.header.rcode == 0 and not rec.rr
        assert str(rec.q.qname) == "Who.WhoAmI.local."  # the client's case, echoed
        a = [r for r in rec.ar if r.rtype == QTYPE.A]
        srv = [r for r in rec.ar if r.rtype == QTYPE.SRV]
        assert [str(r.rdata) for r in a] == ["127.0.0.1"] and a[0].ttl == 0
        assert str(srv[0].rname) == f"_{proto}.Who.WhoAmI.local." and srv[0].rdata.port > 0
        assert any(r.rtype == QTYPE.OPT for r in rec.ar)  # the query had OPT: so does the reply


def test_whoami_takes_no_arguments():
    with pytest.raises(CorefileError, match="takes no arguments"):
        parse_config(". {\n    whoami me\n}\n")
