"""The operators' kit (daemonset/components/monitoring): the alerts pass
promtool's check and fire in promtool's unit tests on the series the agent
exports; every query of the Grafana dashboard and of the alerts names a
metric the agent exports (docs/metrics.md, itself checked against the
collectors); the ServiceMonitor scrapes the ports the Service declares."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
KIT = ROOT / "daemonset" / "components" / "monitoring"
METRIC = re.compile(r"\b((?:coredns|nodecache)_[a-z0-9_]+)")


def exported() -> set[str]:
    names = set()
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        m = re.match(r"\| `([a-z0-9_]+)` \| (\w+) \|", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "histogram":
                names |= {m.group(1) + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def rule_groups() -> dict:
    return yaml.safe_load((KIT / "prometheusrule.yaml").read_text())["spec"]


def dashboard_exprs() -> list[str]:
    dash = json.loads((KIT / "nodecache-dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_every_query_names_a_metric_the_agent_exports():
    names = exported()
    assert "coredns_dns_responses_total" in names and "nodecache_ready" in names
    exprs = dashboard_exprs() + [r["expr"] for g in rule_groups()["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used and used <= names, sorted(used - names)


def test_the_dashboard_has_the_panels_an_operator_looks_for():
    dash = json.loads((KIT / "nodecache-dashboard.json").read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for want in ("lookups", "hit ratio", "latency", "upstream", "refused", "handoff", "setup errors"):
        assert want in titles, want
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "node"}


def test_the_service_monitor_scrapes_the_services_ports():
    monitor = yaml.safe_load((KIT / "servicemonitor.yaml").read_text())
    service = yaml.safe_load((ROOT / "daemonset" / "base" / "service-metrics.yaml").read_text())
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def _promtool():
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package)")
    return tool


def test_the_alerts_pass_promtool_check(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups()))
    out = subprocess.run([_promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


ALERT_TESTS = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{job="node-local-dns", node="n1"}'
        values: '0x10'
      - series: 'up{job="node-local-dns", node="n2"}'
        values: '1x10'
      - series: 'nodecache_ready{node="n1"}'
        values: '0x10'
      - series: 'nodecache_zone_degraded{node="n1", zones="cluster.local."}'
        values: '1x10'
      - series: 'coredns_nodecache_setup_errors_total{node="n1", errortype="rules"}'
        values: '0 0 0 1 1 1 1 1 1 1 1'
      - series: 'nodecache_refused_total{node="n1", reason="client_rate"}'
        values: '0+600x20'
      - series: 'coredns_dns_responses_total{node="n1", rcode="SERVFAIL"}'
        values: '0+60x20'
      - series: 'coredns_dns_responses_total{node="n1", rcode="NOERROR"}'
        values: '0+600x20'
    alert_rule_test:
      - eval_time: 6m
        alertname: NodeLocalDNSDown
        exp_alerts:
          - exp_labels: {severity: critical, job: node-local-dns, node: n1}
            exp_annotations:
              summary: node-local DNS agent on n1 is not scraped
              description: >-
                Its metrics endpoint has not answered for 5 minutes. If the agent is gone, pods on that node fall through to the cluster DNS through kube-proxy (iptables and nftables mode) or lose DNS (link-local only).
      - eval_time: 6m
        alertname: NodeLocalDNSNotReady
        exp_alerts:
          - exp_labels: {severity: warning, node: n1}
            exp_annotations:
              summary: node-local DNS agent on n1 is not ready
              description: >-
                It runs but does not serve every listener (or it handed off and waits to be stopped). See its log and /ready.
      - eval_time: 3m
        alertname: NodeLocalDNSZoneDegraded
        exp_alerts:
          - exp_labels: {severity: critical, node: n1, zones: cluster.local.}
            exp_annotations:
              summary: zone cluster.local. is degraded on n1
              description: >-
                A forwarding loop was detected for this zone: its queries are answered SERVFAIL (the other zones keep serving). Check the upstream's resolv.conf.
      - eval_time: 5m
        alertname: NodeLocalDNSSetupErrors
        exp_alerts:
          - exp_labels: {severity: warning, node: n1, errortype: rules}
            exp_annotations:
              summary: node setup errors (rules) on n1
              description: >-
                The interface, the rules or the kube-dns ConfigMap failed to be set up in the last 10 minutes; the reconcile loop retries. See the log.
      - eval_time: 16m
        alertname: NodeLocalDNSRefusing
        exp_alerts:
          - exp_labels: {severity: warning, node: n1, reason: client_rate}
            exp_annotations:
              summary: n1 refuses queries (client_rate)
              description: >-
                More than one query a second is answered REFUSED by a per-client or capacity limit (client_share, client_rate, capacity, host_share, host_rate): a client floods, or the limits are too low for this node.
      - eval_time: 16m
        alertname: NodeLocalDNSUpstreamFailing
        exp_alerts:
          - exp_labels: {severity: warning, node: n1}
            exp_annotations:
              summary: n1 answers more than 5% SERVFAIL
              description: >-
                Its upstreams (the cluster DNS, or the node's resolvers for other zones) fail queries. coredns_proxy_healthcheck_failures_total says which.
      - eval_time: 16m
        alertname: NodeLocalDNSCacheThrashing
        exp_alerts: []
"""


def test_the_alerts_fire_on_the_series_the_agent_exports(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    (tmp_path / "tests.yaml").write_text(ALERT_TESTS)
    out = subprocess.run([_promtool(), "test", "rules", "tests.yaml"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_component_lists_what_it_ships():
    kit = yaml.safe_load((KIT / "kustomization.yaml").read_text())
    assert kit["kind"] == "Component"
    files = kit["resources"] + [f for g in kit["configMapGenerator"] for f in g["files"]]
    assert all((KIT / f).is_file() for f in files) and "nodecache-dashboard.json" in files


def test_the_dashboard_shows_the_top_clients_drops_and_search_walks():
    exprs = " ".join(dashboard_exprs())
    for metric in ("nodecache_top_client_queries", "nodecache_udp_receive_drops_total",
                   "nodecache_searchpath_answered_total"):
        assert metric in exprs, metric
