"""k8s_schema: the schema judgement, its options, and the differential test
the issue asks for: thousands of names (valid, invalid, search walks of
every shape, mixed case) asked of an agent with and without the stage, in
front of a cluster DNS that implements the specification
(``nodecache_lab.specdns``): no answer may differ but in its TTLs. Its
negative control: a deliberately wrong schema rule is caught."""
from __future__ import annotations

import asyncio
import random

import pytest
from dnslib import QTYPE, DNSRecord

from nodecache.config.corefile import CorefileError
from nodecache.config.parse import parse_config
from nodecache.dns.wire import encode_name
from nodecache.emulated.client import build
from nodecache.plugins.k8s_schema import stage as stage_mod
from nodecache.plugins.k8s_schema.shape import IMPOSSIBLE, judge, labels_below
from nodecache_lab.harness import node
from nodecache_lab.specdns import CUSTOM, NAMESPACES, SpecClusterDNS

ZONE = "cluster.local."


def _judge(name: str, pods: str = "insecure"):
    return judge(labels_below(encode_name(name.lower()), encode_name(ZONE)), pods)


@pytest.mark.parametrize("name, verdict", [
    ("api.github.com.default.svc.cluster.local.", IMPOSSIBLE),   # four plain labels under svc
    ("api.github.com.cluster.local.", IMPOSSIBLE),               # com is neither svc nor pod
    ("a.b.c.d.e.svc.cluster.local.", IMPOSSIBLE),
    ("x.dns-version.cluster.local.", IMPOSSIBLE),
    ("dns-version.cluster.local.", ()),
    ("cluster.local.", ()), ("svc.cluster.local.", ()), ("default.svc.cluster.local.", ()),
    ("web.default.svc.cluster.local.", (2,)),                    # cut by a denied namespace
    ("api.github.com.svc.cluster.local.", (2, 3)),               # hostname.svc.ns: namespace "com"
    ("_tcp.web.default.svc.cluster.local.", (2, 3)),
    ("_http._tcp.web.default.svc.cluster.local.", (2, 3)),
    ("_http.tcp.web.default.svc.cluster.local.", IMPOSSIBLE),
    ("*.default.svc.cluster.local.", ()),                        # wildcards pass on
    ("1-2-3-4.default.pod.cluster.local.", ()),
    ("a.1-2-3-4.default.pod.cluster.local.", IMPOSSIBLE),
])
def test_the_schema_shapes(name, verdict):
    assert _judge(name) == verdict


def test_pods_disabled_denies_everything_below_pod():
    assert _judge("1-2-3-4.default.pod.cluster.local.", "disabled") is IMPOSSIBLE
    assert _judge("pod.cluster.local.", "disabled") == ()


def _cfg(text: str):
    return parse_config(text).blocks[0].option("k8s_schema")


def test_options():
    cfg = _cfg("cluster.local:53 {\n k8s_schema {\n  pods verified\n  except Custom.Alias.cluster.local\n }\n}\n")
    assert (cfg.zone, cfg.pods, cfg.excepts) == (ZONE, "verified", ("custom.alias.cluster.local.",))
    assert _cfg(".:53 {\n k8s_schema corp.example\n}\n").zone == "corp.example."
    for bad, why in ((".:53 {\n k8s_schema\n}\n", "give the cluster zone"),
                     ("cluster.local:53 {\n k8s_schema {\n  pods maybe\n }\n}\n", "unknown option"),
                     ("cluster.local:53 {\n k8s_schema {\n  except example.org\n }\n}\n", "is not under"),
                     ("a.local b.local {\n k8s_schema\n}\n", "give the cluster zone")):
        with pytest.raises(CorefileError, match=why):
            parse_config(bad)


# -- the differential test ------------------------------------------------------

COREFILE = """cluster.local:{port} {{
    bind 127.0.0.1
    cache 30
    SCHEMA
    forward . 127.0.0.1:{up0}
}}
.:{port} {{
    bind 127.0.0.1
    cache 30
    forward . 127.0.0.1:{up0}
}}
"""
SCHEMA = (f"k8s_schema {{{{\n        pods PODS\n        except {CUSTOM}.{ZONE}\n        search node.example\n"
          f"    }}}}")
EXTERNAL = ["api.github.com", "github.com", "example.org", "registry.k8s.io", "nothing.invalid", "a.b.c.d.e"]
SHORT = ["web", "web.default", "db.team-a", "db-0.db", "db-1.db.team-a", "ext", "kube-dns.kube-system", "nothere",
         "_http._tcp.web", "_pg._tcp.db.default", "1-2-3-4.default.pod"]
QTYPES = (QTYPE.A, QTYPE.AAAA, QTYPE.SRV, QTYPE.TXT)


def _names(seed: int = 7) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    names = []
    for x in EXTERNAL + SHORT:  # glibc's walk from pods of three namespaces, one of them gone
        for ns in ("default", "team-a", "ghost"):
            for q in (f"{x}.{ns}.svc.{ZONE}", f"{x}.svc.{ZONE}", f"{x}.{ZONE}", f"{x}."):
                names += [(q, QTYPE.A), (q, QTYPE.AAAA)]
    for ns in NAMESPACES + ("ghost", "com"):
        for svc in ("web", "db", "ext", "kube-dns", "nope"):
            base = f"{svc}.{ns}.svc.{ZONE}"
            for q in (base, f"db-0.{base}", f"db-9.{base}", f"_http._tcp.{base}", f"_pg._tcp.{base}",
                      f"_tcp.{base}", f"_udp.{base}", f"x._tcp.{base}", f"a.b.{base}"):
                names += [(q, rng.choice(QTYPES)) for _ in range(2)]
        names += [(f"{ns}.svc.{ZONE}", QTYPE.A), (f"{ns}.pod.{ZONE}", QTYPE.A),
                  (f"10-244-1-5.{ns}.pod.{ZONE}", QTYPE.A), (f"not-an-ip.{ns}.pod.{ZONE}", QTYPE.A),
                  (f"a.10-244-1-5.{ns}.pod.{ZONE}", QTYPE.A), (f"*.{ns}.svc.{ZONE}", QTYPE.A)]
    names += [(ZONE, QTYPE.SOA), (f"svc.{ZONE}", QTYPE.A), (f"pod.{ZONE}", QTYPE.A),
              (f"dns-version.{ZONE}", QTYPE.TXT), (f"dns-version.{ZONE}", QTYPE.A), (f"{CUSTOM}.{ZONE}", QTYPE.A),
              (f"x.{CUSTOM}.{ZONE}", QTYPE.A)]
    labels = ["a", "svc", "pod", "default", "team-a", "_tcp", "_http", "web", "db", "com", "1-2-3-4"]
    for _ in range(400):  # random label sequences under the zone
        n = rng.randint(1, 6)
        names.append((".".join(rng.choice(labels) for _ in range(n)) + "." + ZONE, rng.choice(QTYPES)))
    names = names * 2  # the second time around: caches and learned denials answer
    rng.shuffle(names)
    return [("".join(c.upper() if rng.random() < 0.3 else c for c in q), t) for q, t in names]


def _shape(wire: bytes) -> tuple:
    """A reply with its TTLs left out."""
    r = DNSRecord.parse(wire)
    rrs = lambda section: [(str(rr.rname), rr.rtype, rr.rclass, str(rr.rdata)) for rr in section  # noqa: E731
                           if rr.rtype != QTYPE.OPT]
    h = r.header
    return (h.rcode, h.qr, h.aa, h.tc, h.rd, h.ra, h.ad, h.cd, str(r.q.qname), r.q.qtype,
            rrs(r.rr), rrs(r.auth), rrs(r.ar))


async def _ask(names, schema: bool, pods: str = "insecure"):
    spec = SpecClusterDNS(ZONE, pods)
    async with node(COREFILE.replace("SCHEMA", SCHEMA.replace("PODS", pods) if schema else ""),
                    answer=spec.answer) as n:
        out = [_shape(await n.udp(build(q, t, qid=i % 65536, do=i % 3 - 1))) for i, (q, t) in enumerate(names)]
        stage = next((st for b in n.agent.blocks for st in b.stages if st.name == "k8s_schema"), None)
        return out, len(spec.asked), (dict(stage.answered), dict(stage.probes)) if stage else None


def _differences(names, before, after) -> list:
    return [(q, t, a, b) for (q, t), a, b in zip(names, before, after) if a != b]


@pytest.mark.parametrize("pods", ["insecure", "verified", "disabled"])
def test_answers_with_and_without_the_stage_differ_in_nothing_but_ttls(capsys, pods):
    names = _names()
    before, asked_before, _ = asyncio.run(_ask(names, False, pods))
    after, asked_after, (answered, probes) = asyncio.run(_ask(names, True, pods))
    diff = _differences(names, before, after)
    assert diff == [], diff[:5]
    assert answered["schema"] > 100 and answered["rfc8020"] > 50, answered
    assert asked_after < asked_before
    with capsys.disabled():
        print(f"\n  pods {pods}: {len(names)} queries, 0 differ; upstreams asked {asked_before} times without the stage, "
              f"{asked_after} with it; answered here {answered}, ancestors asked {probes}")


def test_control_a_wrong_schema_rule_is_caught(monkeypatch):
    """Control: a rule that calls a headless Service's endpoint names
    (<hostname>.<svc>.<ns>.svc) impossible must make answers differ."""
    real = stage_mod.judge

    def wrong(labels, pods):
        if len(labels) == 4 and labels[-1] == b"svc" and labels[0][:1] != b"_":
            return IMPOSSIBLE
        return real(labels, pods)
    monkeypatch.setattr(stage_mod, "judge", wrong)
    names = _names()
    before, _, _ = asyncio.run(_ask(names, False))
    after, _, _ = asyncio.run(_ask(names, True))
    assert _differences(names, before, after)


def test_check_prints_what_the_stage_does_with_a_sample_walk():
    from nodecache.describe import describe
    out = describe(parse_config("cluster.local:53 {\n cache 30\n k8s_schema\n forward . 10.96.0.10\n}\n"))
    walk = [line.split(None, 1) for line in out.splitlines() if line.startswith("    api.github.com.")]
    assert [w[0] for w in walk] == ["api.github.com.default.svc.cluster.local.", "api.github.com.svc.cluster.local.",
                                    "api.github.com.cluster.local.", "api.github.com."]
    said = [w[1] for w in walk]
    assert "(schema)" in said[0] and "(RFC 8020)" in said[1] and "(schema)" in said[2] and "another" in said[3]


WALK = COREFILE.replace("SCHEMA", "k8s_schema {{\n        search node.example corp.example\n    }}")


async def _walk(corefile: str):
    spec = SpecClusterDNS(ZONE, "disabled")
    async with node(corefile, answer=spec.answer) as n:
        await n.udp(build("warm.example.org.default.svc.cluster.local", QTYPE.A))  # the zone's SOA learned
        first = DNSRecord.parse(await n.udp(build("api.github.com.default.svc.cluster.local", QTYPE.A)))
        for _ in range(50):
            if "api.github.com." in spec.asked:
                break
            await asyncio.sleep(0.01)
        ahead = [q for q in spec.asked if q.startswith("api.github.com.") and "cluster.local" not in q]
        before = len(spec.asked)
        rest = [DNSRecord.parse(await n.udp(build(f"api.github.com.{d}", QTYPE.A)))
                for d in ("node.example.", "corp.example.", "")]
        stage = next(st for b in n.agent.blocks for st in b.stages if st.name == "k8s_schema")
        return first, ahead, len(spec.asked) - before, rest, dict(stage.prefetch)


def test_the_rest_of_a_walk_is_asked_when_its_first_step_arrives():
    first, ahead, asked_later, rest, prefetch = asyncio.run(_walk(WALK))
    assert first.header.rcode == 3
    assert ahead == ["api.github.com.node.example.", "api.github.com.corp.example.", "api.github.com."]
    assert asked_later == 0  # every later step of the walk was a cache hit
    assert [r.header.rcode for r in rest] == [3, 3, 0] and str(rest[2].rr[0].rdata) == "192.0.2.10"
    assert prefetch == {"started": 6, "refused": 0}  # (three for the warm-up's walk)


def test_control_without_search_domains_nothing_is_asked_ahead_but_the_name_itself():
    first, ahead, asked_later, rest, prefetch = asyncio.run(_walk(WALK.replace("node.example corp.example", "none")))
    assert ahead == ["api.github.com."] and asked_later == 2 and prefetch["started"] == 2


def test_the_node_search_domains_come_from_resolv_conf(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 10.0.0.2\nsearch old.example\nsearch ec2.internal Corp.Example.\noptions ndots:2\n")
    assert stage_mod.node_search_domains(str(conf)) == ("ec2.internal.", "corp.example.")
    assert stage_mod.node_search_domains(str(tmp_path / "absent")) == ()
