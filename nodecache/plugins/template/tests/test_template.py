"""template as CoreDNS's setup and handler tests describe it: the grammar,
the template language subset, then a behaviour table over real sockets."""
import dns.message
import pytest
from dnslib import QTYPE, DNSRecord

from nodecache.config.corefile import CorefileError
from nodecache.config.parse import parse_config
from nodecache.plugins.template.render import TemplateError, compile as tpl
from nodecache.emulated.client import build
from nodecache_lab.harness import node


@pytest.mark.parametrize("text, error", [
    ("template", "CLASS TYPE"),
    ("template IN", "CLASS TYPE"),
    ("template XX A", "unknown class"),
    ("template IN BOGUS", "unknown type"),
    ("template IN A {\n        match [\n    }", "match"),
    ('template IN A {\n        answer "{{ .Foo }}"\n    }', "can't evaluate field"),
    ('template IN A {\n        answer "{{ printf .Name }}"\n    }', "not defined"),
    ("template IN A {\n        rcode NOSUCH\n    }", "unknown rcode"),
    ("template IN A {\n        answer\n    }", "needs a template"),
    ("template IN A {\n        wrong\n    }", "unknown option"),
])
def test_setup_rejects(text, error):
    with pytest.raises(CorefileError, match=error):
        parse_config(f". {{\n    {text}\n}}\n")


def test_setup_accepts_several_templates_in_corefile_order():
    cfg = parse_config(". {\n    template IN A a.example {\n        rcode NXDOMAIN\n    }\n"
                       "    template ANY ANY {\n        upstream\n    }\n}\n").blocks[0]
    first, second = cfg.option("template")
    assert (first.qtype, first.zones, first.rcode) == (1, ("a.example.",), 3) and second.qclass == 255


@pytest.mark.parametrize("source, data, want", [
    ("{{ .Name }} 60 IN A 1.2.3.4", {"Name": "x."}, "x. 60 IN A 1.2.3.4"),
    ("{{ index .Match 1 }}", {"Match": ["ab", "a"]}, "a"),
    ("{{ .Group.b }}-{{ index .Group \"1\" }}", {"Group": {"b": "B", "1": "one"}}, "B-one"),
    ("{{ parseInt (index .Match 1) 16 64 }}", {"Match": ["x", "ff"]}, "255"),
    ("{{- .Zone -}}", {"Zone": "z."}, "z."),
])
def test_the_template_language_subset(source, data, want):
    assert tpl(source).render(data) == want


def test_parse_int_out_of_range_is_a_runtime_error():
    with pytest.raises(TemplateError):
        tpl("{{ parseInt .Name 10 8 }}").render({"Name": "300"})


COREFILE = """example.:{port} cluster.local:{port} {{
    bind 127.0.0.1
    template IN AAAA cluster.local {{
        rcode NOERROR
    }}
    template ANY ANY cluster.local {{
        match "^[^.]+\\.(svc\\.)?cluster\\.local\\.(svc\\.cluster\\.local\\.)+$"
        rcode NXDOMAIN
        fallthrough
    }}
    template IN A example {{
        match "^ip-(?P<a>[0-9]+)-(?P<b>[0-9]+)\\.example\\.$"
        answer "{{{{ .Name }}}} 60 IN A 10.0.{{{{ .Group.a }}}}.{{{{ .Group.b }}}}"
        additional "extra.example. 30 IN TXT \\"{{{{ .Remote }}}} {{{{ .Type }}}}\\""
    }}
    template IN MX example {{
        match "^bad\\.example\\.$"
        answer "{{{{ .Name }}}} 60 IN MX not-a-number"
    }}
    forward . 127.0.0.1:{up0}
}}
"""


async def _ask(n, name, qtype, do=-1):
    wire = await n.udp(build(name, qtype, do=do))
    dns.message.from_wire(wire)
    return DNSRecord.parse(wire)


async def test_behaviour_table():
    async with node(COREFILE) as n:
        aaaa = await _ask(n, "svc-1.default.svc.cluster.local", QTYPE.AAAA)
        assert aaaa.header.rcode == 0 and not aaaa.rr and aaaa.header.aa      # AAAA: NOERROR, empty
        junk = await _ask(n, "web.svc.cluster.local.svc.cluster.local", QTYPE.A)
        assert junk.header.rcode == 3                                          # search-path junk
        assert len(n.up.seen) == 0
        fine = await _ask(n, "svc-1.default.svc.cluster.local", QTYPE.A)       # regex misses: fallthrough,
        assert fine.header.rcode == 0 and len(n.up.seen) == 1                  # then down the chain
        ip = await _ask(n, "IP-10-20.example", QTYPE.A, do=1)
        assert [str(r.rdata) for r in ip.rr] == ["10.0.10.20"] and ip.rr[0].ttl == 60
        assert str(ip.q.qname) == "IP-10-20.example."
        txt = [r for r in ip.ar if r.rtype == QTYPE.TXT]
        assert txt and "127.0.0.1 A" in str(txt[0].rdata)
        assert any(r.rtype == QTYPE.OPT for r in ip.ar)
        miss = await _ask(n, "host.example", QTYPE.A)  # fits, no regex matches, no fallthrough
        assert miss.header.rcode == 3
        bad = await _ask(n, "bad.example", QTYPE.MX)   # fills into no record: SERVFAIL
        assert bad.header.rcode == 2
        other = await _ask(n, "ip-1-2.example", QTYPE.TXT)  # no template fits TXT: down the chain
        assert len(n.up.seen) == 2 and other.header.rcode in (0, 3)
