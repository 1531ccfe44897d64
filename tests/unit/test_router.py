"""server.router: the longest zone suffix wins (CoreDNS's rule), matched on
label boundaries, case-insensitively; no block means None."""
from nodecache.config.parse import parse_config
from nodecache.dns import key as dnskey
from nodecache.dns.wire import encode_name
from nodecache.server.block import Block
from nodecache.server.router import Router

COREFILE = """cluster.local:53 {
    bind 127.0.0.1
}
svc.cluster.local:53 {
    bind 127.0.0.1
}
example.org:53 {
    bind 127.0.0.1
}
"""


def _key(name: str, qtype: int = 1) -> bytes:
    return dnskey.make(encode_name(name.lower()), qtype)


def _router(text: str = COREFILE) -> Router:
    return Router([Block(b) for b in parse_config(text, "test").blocks])


def test_the_longest_matching_zone_answers():
    r = _router()
    zone = lambda name: (found := r.block_for(_key(name))) and found[1]  # noqa: E731
    assert zone("kubernetes.default.svc.cluster.local.") == "svc.cluster.local."
    assert zone("svc.cluster.local.") == "svc.cluster.local."
    assert zone("pod.cluster.local.") == "cluster.local."
    assert zone("cluster.local.") == "cluster.local."
    assert zone("www.example.org.") == "example.org."
    assert zone("WWW.Example.ORG.") == "example.org."           # keys are lower-cased
    assert r.block_for(_key("example.com.")) is None             # no block: the caller REFUSES
    assert r.block_for(_key("notcluster.local.")) is None       # suffixes only on label boundaries
    assert r.block_for(_key("local.")) is None


def test_a_root_block_takes_everything_and_is_found_without_a_walk():
    r = _router(".:53 {\n    bind 127.0.0.1\n}\n")
    assert r.only is not None
    for name in (".", "a.b.c.example.", "cluster.local."):
        assert r.block_for(_key(name))[1] == "."


def test_blocks_lists_each_block_once():
    r = _router("a.example b.example:53 {\n    bind 127.0.0.1\n}\nc.example:53 {\n    bind 127.0.0.1\n}\n")
    assert len(r.blocks) == 2 and len(r.by_zone) == 3
