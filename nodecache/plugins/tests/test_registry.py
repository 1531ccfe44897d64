"""The registry: CoreDNS's chain order, and shortcuts that are opt-in.

The proof the structural issue asks for: a stage that declares nothing
turns the memo, the hit path and the direct miss off for its block, and
every query (hit or miss, single or batched UDP, TCP) then runs through
it; the same stage declaring every shortcut lets them skip it (control).
"""
from __future__ import annotations

import pytest

from nodecache.config.parse import parse_config
from nodecache.plugins import registry
from nodecache.plugins.chain import Shortcuts, Stage
from nodecache.plugins.grammar import Ctx, no_args, no_body
from nodecache.server.block import Block
from nodecache.emulated.client import build
from nodecache_lab.harness import CLUSTER, node

# CoreDNS's plugin.cfg (v1.11), in order: ours must keep this relative order
COREDNS_PLUGIN_CFG = ("root", "metadata", "geoip", "cancel", "tls", "timeouts", "multisocket", "reload", "nsid",
                      "bufsize", "bind", "debug", "trace", "ready", "health", "pprof", "prometheus", "errors",
                      "log", "dnstap", "local", "dns64", "acl", "any", "chaos", "loadbalance", "tsig", "cache",
                      "rewrite", "header", "dnssec", "autopath", "minimal", "template", "transfer", "hosts",
                      "route53", "azure", "clouddns", "k8s_external", "kubernetes", "file", "auto",
                      "secondary", "etcd", "loop", "forward", "grpc", "erratic", "whoami", "on", "sign",
                      "view")


# nodecache's own plugins, at the place of the CoreDNS plugin whose job is nearest
OURS = {"k8s_schema": "autopath"}


def test_the_chain_order_is_coredns_plugin_cfg_order():
    def where(name):
        return COREDNS_PLUGIN_CFG.index(OURS.get(name, name))
    assert sorted(registry.ORDER, key=where) == list(registry.ORDER)
    assert set(registry.PLUGINS) == set(registry.ORDER)
    # every plugin node-cache compiles in (cmd/node-cache/main.go)
    node_cache = {"bind", "bufsize", "cache", "debug", "dns64", "errors", "forward", "health", "hosts",
                  "loadbalance", "log", "loop", "prometheus", "pprof", "reload", "rewrite", "template",
                  "timeouts", "trace", "whoami"}
    assert node_cache <= set(registry.ORDER)


def test_every_plugin_has_a_readme_in_coredns_shape():
    from pathlib import Path
    here = Path(registry.__file__).parent
    for name in registry.ORDER:
        text = (here / name / "README.md").read_text()
        for section in ("## Name", "## Syntax", "## Examples"):
            assert section in text, f"{name}/README.md: no {section}"


class Opaque(Stage):
    """Counts every query it sees; declares ``declared``."""
    name = "opaque"
    seen = 0
    declared = Shortcuts()

    def shortcuts(self) -> Shortcuts:
        return self.declared

    async def handle(self, request):
        Opaque.seen += 1
        return await self.next(request)


def _setup(ctx: Ctx, d):
    no_args(ctx, d)
    no_body(ctx, d)
    return True


@pytest.fixture
def opaque(monkeypatch):
    """A plugin ``opaque`` registered just before ``cache``."""
    plugin = registry.Plugin("opaque", _setup, lambda cfg, b: Opaque())
    order = list(registry.ORDER)
    order.insert(order.index("cache"), "opaque")
    monkeypatch.setattr(registry, "ORDER", tuple(order))
    monkeypatch.setattr(registry, "PLUGINS", {**registry.PLUGINS, "opaque": plugin})
    Opaque.seen = 0
    yield Opaque
    Opaque.declared = Shortcuts()


def _block(text: str) -> Block:
    (cfg,) = parse_config(text).blocks
    return Block(cfg)


FORWARDING = ".:53 {{\n    errors\n    {extra}\n    cache 30\n    forward . 127.0.0.1:53\n}}\n"


def test_a_stage_that_declares_nothing_turns_every_shortcut_off(opaque):
    plain = _block(FORWARDING.format(extra=""))
    assert plain.front is not None and plain.memoizable and plain.take is not None  # the control
    assert plain.front.__self__ is plain.cache_stage is plain.memo_stage
    block = _block(FORWARDING.format(extra="opaque"))
    assert [st.name for st in block.stages] == ["errors", "opaque", "cache", "forward"]
    assert block.front is None and not block.memoizable and block.take is None
    opaque.declared = Shortcuts(hit=True, memo=True, direct=True)
    block = _block(FORWARDING.format(extra="opaque"))
    assert block.front is not None and block.memoizable and block.take is not None


@pytest.mark.parametrize("batched", [False, True])
async def test_every_query_runs_through_a_stage_that_declares_nothing(opaque, batched):
    corefile = CLUSTER.replace("    cache", "    opaque\n    cache", 1)
    assert "opaque" in corefile
    async with node(corefile) as n:
        for listener in n.agent.listeners:
            if hasattr(listener.udp, "use_batches"):
                listener.udp.use_batches(batched)
        names = [f"svc-{i}.default.svc.cluster.local" for i in range(5)]
        for _ in range(3):  # a miss, then hits that would be memoised
            for name in names:
                assert (await n.udp(build(name, 1)))[3] & 0xF == 0
        await n.tcp(build(names[0], 1))
        assert opaque.seen == 16
        assert all(len(lst.path.memo) == 0 for lst in n.agent.listeners)


async def test_a_stage_that_allows_the_shortcuts_is_skipped_by_them(opaque):
    opaque.declared = Shortcuts(hit=True, memo=True, direct=True)
    async with node(CLUSTER.replace("    cache", "    opaque\n    cache", 1)) as n:
        await n.udp(build("svc-0.default.svc.cluster.local", 1))  # opens the upstream channel
        opaque.seen = 0
        for _ in range(3):
            await n.udp(build("svc-1.default.svc.cluster.local", 1))
        assert opaque.seen == 0  # the miss went direct, the hits from the cache and the memo


def test_every_readme_example_parses():
    """As CoreDNS's test/readme_test.go: each README's example Corefiles
    (the ~~~ blocks after ## Examples) are accepted as written."""
    import re
    from pathlib import Path
    here = Path(registry.__file__).parent
    for name in registry.ORDER:
        text = (here / name / "README.md").read_text()
        examples = re.findall(r"~~~\n(.*?)~~~", text.split("## Examples", 1)[1], re.S)
        assert examples, f"{name}: no example"
        for example in examples:
            config = parse_config(example, f"{name}/README.md")
            assert any(b.has(name) for b in config.blocks), f"{name}: an example without the directive"


EVERY_PLUGIN = """cluster.local:{port} example.org:{port} {{
    timeouts {{
        idle 20s
    }}
    reload 10s
    bufsize 1232
    bind 127.0.0.1
    debug
    trace zipkin localhost:9411
    ready 127.0.0.1:0
    health 127.0.0.1:0
    pprof 127.0.0.1:0
    prometheus 127.0.0.1:0
    errors
    log . "{{remote}} {{name}} {{rcode}}" {{
        class denial
    }}
    dns64 {{
        allow_ipv4
    }}
    loadbalance
    cache 30
    rewrite name exact alias.example.org. pinned.example.org.
    k8s_schema cluster.local {{
        pods insecure
    }}
    template IN AAAA cluster.local {{
        rcode NOERROR
    }}
    hosts {hosts} example.org {{
        10.7.7.7 pinned.example.org
        fallthrough
    }}
    loop
    forward . 127.0.0.1:{up0}
}}
whoami.local:{port} {{
    bind 127.0.0.1
    whoami
}}
"""


@pytest.mark.parametrize("batched", [False, True])
async def test_a_corefile_with_every_plugin_serves(tmp_path, batched):
    from dnslib import DNSRecord
    hosts = tmp_path / "hosts"
    hosts.write_text("10.8.8.8 file.example.org\n")
    corefile = EVERY_PLUGIN.replace("{hosts}", str(hosts))
    assert {line.split()[0] for line in corefile.splitlines() if line.startswith("    ")} >= set(registry.ORDER)
    async with node(corefile) as n:
        for listener in n.agent.listeners:
            if hasattr(listener.udp, "use_batches"):
                listener.udp.use_batches(batched)
        for _ in range(2):  # a miss then a hit for the forwarded name
            rec = DNSRecord.parse(await n.udp(build("svc-1.default.svc.cluster.local", 1)))
            assert rec.header.rcode == 0 and rec.rr
        # AAAA: the template answers NOERROR without records, which dns64 (before it) translates
        aaaa = DNSRecord.parse(await n.udp(build("svc-1.default.svc.cluster.local", 28)))
        assert [str(r.rdata).startswith("64:ff9b::") for r in aaaa.rr] == [True]
        assert str(DNSRecord.parse(await n.udp(build("pinned.example.org", 1))).rr[0].rdata) == "10.7.7.7"
        assert str(DNSRecord.parse(await n.udp(build("file.example.org", 1))).rr[0].rdata) == "10.8.8.8"
        alias = DNSRecord.parse(await n.udp(build("alias.example.org", 1)))  # rewritten, then hosts
        assert [(str(r.rname), str(r.rdata)) for r in alias.rr] == [("alias.example.org.", "10.7.7.7")]
        assert DNSRecord.parse(await n.udp(build("me.whoami.local", 1))).ar
        assert DNSRecord.parse(await n.tcp(build("svc-2.default.svc.cluster.local", 1))).rr
        assert n.up.names().count("svc-1.default.svc.cluster.local.") == 1  # cached


def test_check_reports_each_directives_support():
    """``nodecache check``'s report: every directive of a block with its
    support from the registry (supported / differs / ignored)."""
    from nodecache.describe import describe
    out = describe(parse_config(".:53 {\n    pprof\n    whoami\n    cache 30\n    forward . 127.0.0.1\n}\n"))
    rows = {line.split()[0]: line for line in out.splitlines()
            if line.startswith("  ") and not line.split()[0].endswith(":") and line.split()[1] != "."}
    assert "ignored (warning)" in rows["pprof"] and "py-spy" in rows["pprof"]
    assert rows["whoami"].split()[1] == "supported" and "differs" in rows["forward"]
    assert all(name in rows for name in ("pprof", "whoami", "cache", "forward"))


class Answering(Stage):
    """A front of its own before the cache: answers one name at the fast
    speed, passes every other one on (as a schema check would)."""
    name = "answering"
    KEY = b""

    def shortcuts(self) -> Shortcuts:
        return Shortcuts(hit=True, memo=True, direct=True)

    def front(self, data, scanned, now):
        if scanned[0] == self.KEY:
            return b"canned"
        return self.next_front(data, scanned, now)

    async def handle(self, request):
        return await self.next(request)


def _register(monkeypatch, name, make, before="cache"):
    plugin = registry.Plugin(name, _setup, lambda cfg, b: make())
    order = list(registry.ORDER)
    order.insert(order.index(before), name)
    monkeypatch.setattr(registry, "ORDER", tuple(order))
    monkeypatch.setattr(registry, "PLUGINS", {**registry.PLUGINS, name: plugin})


def test_fronts_chain_in_stage_order_up_to_a_stage_that_must_see_every_query(monkeypatch):
    """A stage's front answers what it owns and passes the rest to the
    cache's front; a stage between them that declares nothing ends the fast
    front there (control: a cached name then takes the slow path)."""
    from nodecache.dns.wire import scan
    from nodecache.dns.reply import analyse
    from nodecache.emulated.upstream import ClusterDNS
    _register(monkeypatch, "answering", Answering, before="errors")
    owned, cached, unknown = (build(n, 1) for n in ("owned.example.", "svc-1.default.svc.cluster.local",
                                                   "nothing.example."))
    Answering.KEY = scan(owned)[0]

    def fronts(block):
        block.cache.insert(scan(cached)[0], analyse(ClusterDNS().answer(cached)))
        return [block.front(q, scan(q), block.cache.clock()) if block.front else None
                for q in (owned, cached, unknown)]

    block = _block(FORWARDING.format(extra="answering"))
    assert [st.name for st in block.stages] == ["answering", "errors", "cache", "forward"]
    got = fronts(block)
    assert got[0] == b"canned" and got[1] is not None and got[1][:2] == cached[:2] and got[2] is None
    assert block.memo_stage is block.cache_stage and block.memoizable
    _register(monkeypatch, "opaque", Opaque)
    block = _block(FORWARDING.format(extra="answering\n    opaque"))
    assert [st.name for st in block.stages] == ["answering", "errors", "opaque", "cache", "forward"]
    assert fronts(block) == [b"canned", None, None]  # the cache's front is never reached
