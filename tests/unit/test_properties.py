"""Property tests (Hypothesis) over generated input for the reply analyser
and TTL rendering, the Corefile parser, and the kube-dns ConfigMap merge:
whatever comes in, the answer is a value or the module's own error, and
what we render is valid DNS that never extends a TTL."""
import json

import dns.message
from dnslib import AAAA, QTYPE, RR, SOA, TXT, A, DNSRecord
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nodecache.ttlcache.entry import Entry, render_uncached
from nodecache.config.corefile import CorefileError
from nodecache.config.parse import parse_config
from nodecache.dns.reply import MalformedReply, analyse
from nodecache.dns.wire import RD, make_query, question_bytes, scan
from nodecache.config.nodeconfig import ConfigMapError, read_kubedns_configmap, render_corefile

NAME = "svc.default.svc.cluster.local"
Q = question_bytes(NAME, QTYPE.A)

record = st.one_of(
    st.builds(lambda ttl, ip: RR(NAME, QTYPE.A, ttl=ttl, rdata=A(ip)), st.integers(0, 2**32 - 1), st.ip_addresses(v=4).map(str)),
    st.builds(lambda ttl, ip: RR(NAME, QTYPE.AAAA, ttl=ttl, rdata=AAAA(ip)), st.integers(0, 2**32 - 1), st.ip_addresses(v=6).map(str)),
    st.builds(lambda ttl, t: RR(NAME, QTYPE.TXT, ttl=ttl, rdata=TXT(t)), st.integers(0, 2**31), st.text("abc xyz", max_size=40)),
)


@st.composite
def upstream_replies(draw):
    rep = DNSRecord.parse(make_query(0x4242, Q, RD, draw(st.sampled_from([-1, 0, 1])))).reply()
    rep.header.rcode = draw(st.sampled_from([0, 0, 0, 2, 3]))
    for rr in draw(st.lists(record, max_size=6)):
        rep.add_answer(rr)
    if draw(st.booleans()):
        rep.add_auth(RR("cluster.local", QTYPE.SOA, ttl=draw(st.integers(0, 2**32 - 1)),
                        rdata=SOA("ns.cluster.local", "h.cluster.local", (1, 2, 3, 4, draw(st.integers(0, 2**32 - 1))))))
    return bytes(rep.pack())


def _ttls(wire: bytes) -> list[int]:
    msg = dns.message.from_wire(wire)
    return [rrset.ttl for rrset in msg.answer + msg.authority]


@settings(max_examples=300, deadline=None)
@given(upstream_replies(), st.sampled_from([-1, 0, 1]), st.integers(0, 4000), st.floats(0, 5000))
def test_rendered_replies_are_valid_and_never_extend_a_ttl(raw, edns, cache_ttl, age):
    reply = analyse(raw)
    client = make_query(7, question_bytes("SVC.default.svc.cluster.local", QTYPE.A), RD, edns)
    key, qend, qflags, _, cedns = scan(client)
    upstream = [t if t < 2**31 else 0 for t in _ttls(raw)]  # RFC 2181 §8: top bit set = 0
    for wire in (render_uncached(reply, client, qend, qflags, cedns),
                 Entry(key, reply, 0, cache_ttl, 100.0).render(client, qend, qflags, cedns, 100.0 + age)):
        got = _ttls(wire)  # strict parse: counts, OPT, no trailing bytes
        assert len(got) == len(upstream)
        assert all(g <= u for g, u in zip(got, upstream))


@settings(max_examples=500, deadline=None)
@given(st.one_of(upstream_replies().flatmap(
    lambda r: st.integers(0, len(r) - 1).flatmap(
        lambda i: st.integers(1, 255).map(lambda x: r[:i] + bytes([r[i] ^ x]) + r[i + 1:]))),
    st.binary(max_size=200)))
def test_any_upstream_bytes_give_a_reply_or_malformed_reply(data):
    try:
        reply = analyse(data)
    except MalformedReply:
        return
    assert all(o + 4 <= len(reply.tail) for o in reply.ttl_offsets)


corefile_token = st.sampled_from(["{", "}", ".", ".:53", "cluster.local:53", "cache", "30", "forward",
                                  "1.1.1.1", "force_tcp", "errors", "bind", "127.0.0.1", "\n", "#", "prefetch",
                                  "success", "9984", "serve_stale", "policy", "random", "health", ":8080",
                                  "reload", "loop", "log", "\"", "import", "{$X}", "ready", "except"])


@settings(max_examples=500, deadline=None)
@given(st.lists(corefile_token, max_size=40).map(" ".join) | st.text(max_size=200))
def test_any_corefile_text_gives_a_config_or_a_corefile_error(text):
    try:
        parse_config(text, "fuzz")
    except CorefileError:
        pass


json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                          lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=30), kids, max_size=4),
                          max_leaves=12)
server = st.one_of(st.ip_addresses().map(str), st.text(max_size=20),
                   st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 70000)).map(lambda t: f"{t[0]}:{t[1]}"))


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_value, st.dictionaries(st.text(max_size=40), st.lists(server, max_size=3), max_size=4)),
       st.one_of(json_value, st.lists(server, max_size=4)))
def test_any_configmap_merges_into_a_corefile_that_parses(tmp_path_factory, stubs, upstreams):
    d = tmp_path_factory.mktemp("cm")
    (d / "stubDomains").write_text(json.dumps(stubs))
    (d / "upstreamNameservers").write_text(json.dumps(upstreams))
    try:
        good_stubs, good_upstreams, _ = read_kubedns_configmap(d)
    except ConfigMapError:
        return
    text = render_corefile(".:53 {\n    forward . __PILLAR__UPSTREAM__SERVERS__\n}\n", ["169.254.20.10"],
                           "10.96.0.10", good_stubs, good_upstreams)
    config = parse_config(text, "merged")  # never a CorefileError: every value was checked
    assume(good_stubs)
    assert {z for b in config.blocks for z in b.zones} >= {d.rstrip(".").lower() + "." for d in good_stubs}
