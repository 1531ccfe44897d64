"""Deployment files: manifests valid against Kubernetes' schemas, with the
rollout settings the hot handoff needs; the ConfigMap's Corefile loads; the
systemd units verify where systemd-analyze exists."""
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from nodecache.config.plugins import parse_config
from nodecache.node.nodeconfig import render_corefile

ROOT = Path(__file__).resolve().parent.parent.parent
MANIFESTS = sorted((ROOT / "daemonset").glob("*.yaml"))


def docs():
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def test_manifests_validate_against_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate")
    for path, doc in docs():
        if doc["kind"] == "Kustomization":
            continue
        kv.validate(doc, "1.30.0", strict=True)  # raises on any schema violation


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((ROOT / "daemonset" / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in MANIFESTS if p.name != "kustomization.yaml")


def test_daemonset_rollout_and_node_settings():
    ds = next(doc for _, doc in docs() if doc["kind"] == "DaemonSet")
    spec = ds["spec"]
    assert spec["updateStrategy"] == {"type": "RollingUpdate",
                                      "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "Default"
    assert pod["priorityClassName"] == "system-node-critical"
    (c,) = pod["containers"]
    assert "ports" not in c  # hostPorts would block the surge pod
    sc = c["securityContext"]
    assert not sc.get("privileged") and set(sc["capabilities"]["add"]) == {"NET_ADMIN", "NET_BIND_SERVICE"}
    assert c["readinessProbe"]["exec"]["command"][-2:] == ["probe", "ready"]
    assert c["livenessProbe"]["exec"]["command"][-2:] == ["probe", "live"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/run/xtables.lock", "/run/nodecache", "/etc/coredns"} <= mounts
    hostpaths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert hostpaths == {"/run/xtables.lock", "/run/nodecache"}
    args = c["args"]
    assert args[args.index("-handoff-dir") + 1] == "/run/nodecache"
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["memory"]


def test_configmap_corefile_loads_after_templating():
    cm = next(doc for _, doc in docs() if doc["kind"] == "ConfigMap")
    text = render_corefile(cm["data"]["Corefile"], ["169.254.20.10"], "10.96.0.11", {}, ["10.0.0.2"])
    cfg = parse_config(text, "configmap.yaml")
    zones = [b.zones[0] for b in cfg.blocks]
    assert zones == ["cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."]
    assert all(b.loop and b.reload and b.prometheus == ":9253" for b in cfg.blocks)
    assert cfg.blocks[0].forward.force_tcp and cfg.blocks[0].cache.serve_stale


def test_systemd_units_verify():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    units = [str(ROOT / "systemd" / "nodecache.socket"), str(ROOT / "systemd" / "nodecache.service")]
    proc = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    # verify also complains about the ExecStart binary not being installed here
    problems = [ln for ln in proc.stderr.splitlines()
                if ln.strip() and "nodecache" in ln and "is not executable" not in ln
                and "No such file" not in ln and "Command /usr/local/bin/nodecache" not in ln]
    assert not problems, proc.stderr
