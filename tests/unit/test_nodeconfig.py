"""node-cache compatibility without root: templating, flags, rule sets."""
import json

import pytest

from nodecache.cli import parser
from nodecache.config.corefile import CorefileError
from nodecache.config.parse import parse_config
from nodecache.config.nodeconfig import (ConfigMapError, cluster_dns_ip, read_kubedns_configmap,
                                       render_corefile, service_env)
from nodecache.node.rules import RuleError, ensure_rule, legacy_rules, rules_for
from nodecache.run.configsource import ConfigSource, dns_ports, wildcard_ports
from nodecache.run.params import RunParams, parse_local_ips

BASE = """\
cluster.local:53 {
    errors
    cache 30
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
}
.:53 {
    errors
    cache 30
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    forward . __PILLAR__UPSTREAM__SERVERS__ {
            force_tcp
    }
}
"""


def test_service_env_name():
    assert service_env("kube-dns-upstream") == "KUBE_DNS_UPSTREAM_SERVICE_HOST"
    assert cluster_dns_ip("kube-dns-upstream", {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.0.0.10"}) == "10.0.0.10"
    assert cluster_dns_ip("kube-dns-upstream", {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "junk"}) is None


def test_pillars_default_upstream_is_resolv_conf():
    text = render_corefile(BASE, ["169.254.20.10", "fd00::10"], "10.0.0.10", {}, [])
    assert "__PILLAR__" not in text
    cfg = parse_config(text.replace("/etc/resolv.conf", "127.0.0.1"))
    assert cfg.blocks[0].binds == ("169.254.20.10", "fd00::10")
    assert "forward . /etc/resolv.conf {" in text and cfg.blocks[1].option("forward")[0].force_tcp


def test_upstream_nameservers_switch_to_udp_and_stub_domains_become_blocks():
    text = render_corefile(BASE, ["169.254.20.10"], "10.0.0.10",
                           {"acme.local": ["10.150.0.1", "10.150.0.2:5353"]}, ["10.1.1.1", "10.1.1.2"])
    cfg = parse_config(text)
    dot = [b for b in cfg.blocks if b.zones == (".",)][0]
    assert [str(u) for u in dot.option("forward")[0].to] == ["10.1.1.1:53", "10.1.1.2:53"] and not dot.option("forward")[0].force_tcp
    stub = [b for b in cfg.blocks if b.zones == ("acme.local.",)][0]
    assert [str(u) for u in stub.option("forward")[0].to] == ["10.150.0.1:53", "10.150.0.2:5353"]
    assert stub.binds == ("169.254.20.10",) and stub.option("cache").success.max_ttl == 30


def test_kubedns_configmap_files(tmp_path):
    (tmp_path / "stubDomains").write_text(json.dumps({"acme.local": ["1.2.3.4"]}))
    (tmp_path / "upstreamNameservers").write_text('["8.8.8.8"]')
    assert read_kubedns_configmap(tmp_path) == ({"acme.local": ["1.2.3.4"]}, ["8.8.8.8"], [])
    assert read_kubedns_configmap(tmp_path / "absent") == ({}, [], [])
    (tmp_path / "stubDomains").write_text("{not json")
    with pytest.raises(ConfigMapError, match="invalid JSON"):
        read_kubedns_configmap(tmp_path)


def test_kubedns_configmap_bad_values_are_left_out_one_by_one(tmp_path):
    (tmp_path / "stubDomains").write_text(json.dumps({
        "acme.local": ["dns.acme.local"],            # a hostname: node-cache ignores it
        "bücher.example": ["1.2.3.4"],               # not a DNS name
        "evil.\n}\n. {\n forward . 6.6.6.6": ["1.2.3.4"],  # Corefile injection
        "a.b": [],
        "trailing.newline\n": ["1.2.3.4"],         # a YAML block scalar's newline: would split the key line
        "good.local": ["10.0.0.5:5353", "[fd00::5]:53"]}))
    (tmp_path / "upstreamNameservers").write_text('["8.8.8.8", "resolver.example", "1.1.1.1:99999"]')
    stubs, upstreams, problems = read_kubedns_configmap(tmp_path)
    assert stubs == {"good.local": ["10.0.0.5:5353", "[fd00::5]:53"]} and upstreams == ["8.8.8.8"]
    assert len(problems) == 7 and all("ignored" in p for p in problems)


def test_a_bad_configmap_value_never_stops_startup(tmp_path):
    (tmp_path / "Corefile.base").write_text(BASE)
    cm = tmp_path / "cm"
    cm.mkdir()
    (cm / "stubDomains").write_text(json.dumps({"acme.local": ["dns.acme.local"]}))
    source = ConfigSource(_params(tmp_path), {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.11"})
    config = source.load(strict=True)
    assert not any("acme.local." in b.zones for b in config.blocks)
    assert source.problems and "acme.local" in source.problems[0]


def test_non_ascii_or_control_characters_in_a_zone_are_a_clear_corefile_error():
    for zone in ("bücher.example", "a\x01b.example"):
        with pytest.raises(CorefileError, match="invalid zone"):
            parse_config(f"{zone}:53 {{\n forward . 1.1.1.1\n}}\n")


def test_deep_nesting_is_a_clear_corefile_error():
    text = ".:53 {\n" + "a {\n" * 50 + "}\n" * 51
    with pytest.raises(CorefileError, match="nested more than"):
        parse_config(text)


def _params(tmp_path, **kw):
    return RunParams(conf=str(tmp_path / "Corefile"), base_corefile=str(tmp_path / "Corefile.base"),
                     kubedns_cm=str(tmp_path / "cm"), upstream_svc="kube-dns-upstream",
                     local_ips=("169.254.20.10",), **kw)


def test_config_source_broken_configmap_degrades_at_start_and_rejects_on_reload(tmp_path):
    (tmp_path / "Corefile.base").write_text(BASE)
    (tmp_path / "cm").mkdir()
    (tmp_path / "cm" / "upstreamNameservers").write_text("[oops")
    src = ConfigSource(_params(tmp_path), {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.0.0.10"})
    cfg = src.load(strict=False)
    assert src.problems and "invalid JSON" in src.problems[0]
    assert cfg.blocks[0].option("forward")[0].to[0].host == "10.0.0.10"
    with pytest.raises(ConfigMapError):
        src.load(strict=True)


def test_config_source_fingerprint_changes_with_inputs(tmp_path):
    (tmp_path / "Corefile.base").write_text(BASE)
    src = ConfigSource(_params(tmp_path), {})
    before = src.fingerprint()
    assert src.fingerprint() == before
    (tmp_path / "cm").mkdir()
    (tmp_path / "cm" / "stubDomains").write_text('{"x.y": ["1.1.1.1"]}')
    assert src.fingerprint() != before


def test_missing_cluster_ip_is_a_clear_error(tmp_path):
    (tmp_path / "Corefile.base").write_text(BASE)
    with pytest.raises(Exception, match=r"\$KUBE_DNS_UPSTREAM_SERVICE_HOST is not set"):
        ConfigSource(_params(tmp_path), {}).load()


def test_without_base_the_conf_file_is_used(tmp_path):
    (tmp_path / "Corefile").write_text(".:53 {\n forward . 127.0.0.1\n}\n")
    assert ConfigSource(_params(tmp_path), {}).load().blocks[0].zones == (".",)


def test_node_cache_daemonset_args_parse():
    args = parser().parse_args(["run", "-localip", "169.254.20.10,10.0.0.10", "-conf", "/etc/Corefile",
                                "-upstreamsvc", "kube-dns-upstream"])
    assert args.conf == "/etc/Corefile" and args.upstreamsvc == "kube-dns-upstream"
    args = parser().parse_args(["run", "-setupiptables=false", "-setupinterface", "-syncinterval", "30s",
                                "-health-port", "8081", "-skipteardown=true", "-pidfile", "/run/x.pid",
                                "-metrics-listen-address", "0.0.0.0:9353", "-kubednscm", "/etc/kube-dns",
                                "-basecorefile", "/etc/coredns/Corefile.base", "-interfacename", "dns0",
                                "-dns.port", "53", "-corefile", "/etc/C"])
    assert (args.setupiptables, args.setupinterface, args.syncinterval, args.skipteardown) == (False, True, 30, True)
    assert args.health_port == 8081 and args.interfacename == "dns0" and args.conf == "/etc/C"


def test_invalid_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["run", "-setupiptables=maybe"])
    assert exc.value.code == 2 and "invalid boolean" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "-nosuchflag"])


def test_local_ips_mixed_families_and_bad_entries():
    ips, bad = parse_local_ips("169.254.20.10, fd00::10,,nonsense,169.254.20.300,169.254.20.10")
    assert ips == ("169.254.20.10", "fd00::10")
    assert bad == ["-localip entry 'nonsense' is not an IP address",
                   "-localip entry '169.254.20.300' is not an IP address"]
    _, bad = parse_local_ips("169.254.20.10,$(KUBE_DNS_SERVICE_HOST)")
    assert "was not expanded" in bad[0] and "'coredns'" in bad[0] and "enableServiceLinks" in bad[0]


def test_rule_set_and_ports():
    cfg = parse_config("cluster.local:53 {\n bind 169.254.20.10\n forward . 1.1.1.1\n}\n"
                       ".:5353 {\n forward . 1.1.1.1\n}\n")
    ports = dns_ports(cfg, ("169.254.20.10", "fd00::10"))
    assert ports == {"169.254.20.10": {53, 5353}, "fd00::10": {5353}}
    rules = rules_for(["169.254.20.10", "fd00::10"], ports, 8080, fail_open=False)
    assert len(rules) == 2 * 10 + 10 + 2 * 2
    assert {r.binary for r in rules} == {"iptables", "ip6tables"}
    assert all(r.binary == "ip6tables" for r in rules if "fd00::10" in r.spec)
    raw_pre = [r for r in rules if r.chain == "PREROUTING"]
    assert all(r.table == "raw" and r.spec[-1] == "NOTRACK" for r in raw_pre)


def test_fail_open_rules_notrack_only_with_a_bound_socket_and_fall_back_by_dnat():
    rules = rules_for(["169.254.20.10", "fd00::10"], 53, 8080, upstream="10.96.0.11")
    pre = [r for r in rules if r.table == "raw" and r.chain == "PREROUTING"]
    assert len(pre) == 4 and all(r.spec[-4:] == ("-m", "socket", "-j", "NOTRACK") for r in pre)
    # raw OUTPUT cannot use -m socket: host-network clients keep the unconditional rule
    assert not any("socket" in r.spec for r in rules if r.chain == "OUTPUT")
    dnat = [r for r in rules if r.table == "nat"]
    assert [(r.family, r.chain, r.append) for r in dnat] == [(4, "PREROUTING", True)] * 2  # v4 only
    assert all(r.spec[-3:] == ("DNAT", "--to-destination", "10.96.0.11:53") for r in dnat)
    legacy = legacy_rules(rules)
    assert len(legacy) == 4 and not any("socket" in r.spec for r in legacy)
    assert {r.spec[:-2] for r in legacy} == {r.spec[:-4] for r in pre}


def test_a_port_served_by_a_socket_on_every_address_gets_the_wildcard_socket_match():
    cfg = parse_config("cluster.local:53 {\n bind 0.0.0.0\n forward . 1.1.1.1\n}\n"
                       ".:5353 {\n forward . 1.1.1.1\n}\n"
                       ".:5454 {\n bind 169.254.20.10\n forward . 1.1.1.1\n}\n"
                       "example:5454 {\n forward . 1.1.1.1\n}\n")
    ips = ("169.254.20.10", "fd00::10")
    # 0.0.0.0 serves IPv4 only; no bind serves both; a socket on the address itself wins its port
    assert dns_ports(cfg, ips) == {"169.254.20.10": {53, 5353, 5454}, "fd00::10": {5353, 5454}}
    wild = wildcard_ports(cfg, ips)
    assert wild == {"169.254.20.10": {53, 5353}, "fd00::10": {5353, 5454}}
    rules = rules_for(list(ips), dns_ports(cfg, ips), None, wildcard=wild)
    pre = {(r.spec[r.spec.index("-d") + 1], r.spec[r.spec.index("--dport") + 1], "--nowildcard" in r.spec)
           for r in rules if r.chain == "PREROUTING"}
    assert pre == {("169.254.20.10", "53", True), ("169.254.20.10", "5353", True), ("169.254.20.10", "5454", False),
                   ("fd00::10", "5353", True), ("fd00::10", "5454", True)}
    assert not any("--nowildcard" in r.spec for r in legacy_rules(rules))
    assert not any("socket" in r.spec for r in rules_for(list(ips), 53, None, fail_open=False, wildcard=wild))


def test_missing_iptables_binary_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    rule = rules_for(["169.254.20.10"], 53, None)[0]
    with pytest.raises(RuleError, match="iptables not found") as exc:
        ensure_rule(rule)
    assert exc.value.kind == "iptables"


@pytest.mark.parametrize("content, why", [
    (b'{"acme.local": ["1.2.3.4"\xde]}', "not UTF-8"),  # found by the configmap fuzz target
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
])
def test_a_configmap_file_that_is_no_json_text_is_a_configmap_error(tmp_path, content, why):
    (tmp_path / "stubDomains").write_bytes(content)
    with pytest.raises(ConfigMapError, match=why):
        read_kubedns_configmap(tmp_path)
