"""The image, built on this machine and run on the emulated node (root).

``scripts/build-image.sh`` (what ``make image`` runs) makes the base from
Debian's packages with mmdebstrap, installs the locked wheels and
nodecache with ``buildah bud --isolation chroot`` (no registry, no
container runtime), and writes the SBOM. The test then mounts the image's
root filesystem and runs its entry point there, under ``chroot`` in the
emulated node's network namespace, exactly as the DaemonSet would: the
overlay's args for that kube-proxy mode (``$(KUBE_DNS_SERVICE_HOST)``
expanded as kubelet expands it), the ConfigMap's Corefile at
/etc/coredns/Corefile.base, the Service environment. The pod resolves
through it on both addresses, the probes the manifest declares answer
(the exec startup probe inside the image, the HTTP ones from the node),
and SIGTERM tears down what it set up."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodecache.testing.emunode import (CLUSTER_V4, LOCAL_V4, UPSTREAM_V4, EmulatedNode, http_status,
                                       missing_requirements, sh)

ROOT = Path(__file__).resolve().parent.parent.parent
TAG = "localhost/nodecache:0.1.0"
IMAGE_PATH = "/opt/nodecache/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # image/Containerfile's ENV PATH


def _missing() -> str | None:
    why = missing_requirements()
    if why:
        return f"emulated node: {why}"
    for tool in ("mmdebstrap", "buildah", "kubectl", "unshare", "chroot"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install mmdebstrap buildah; kubectl renders the overlays)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@pytest.fixture(scope="module")
def image_root():
    env = dict(os.environ, PY=sys.executable)
    build = subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh"), TAG], capture_output=True, text=True,
                           timeout=900, env=env, cwd=ROOT)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    sbom = (ROOT / "build" / "image" / "sbom.txt").read_text()
    assert "\niptables " in sbom and "\nnftables " in sbom and "\nnodecache 0.1.0" in sbom and "\nuvloop " in sbom
    ctr = subprocess.run(["buildah", "from", "--pull=false", TAG], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        root = Path(subprocess.run(["buildah", "mount", ctr], capture_output=True, text=True,
                                   check=True).stdout.strip())
        yield root
    finally:
        subprocess.run(["buildah", "umount", ctr], capture_output=True)
        subprocess.run(["buildah", "rm", ctr], capture_output=True)


def _daemonset(overlay: str) -> tuple[list[str], str]:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "daemonset" / "overlays" / overlay)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    corefile = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["Corefile"]
    return [a.replace("$(KUBE_DNS_SERVICE_HOST)", CLUSTER_V4) for a in args], corefile


# what the container runtime provides: /proc, /dev, the pod's resolv.conf
# (dnsPolicy Default: the node's), then the image's entry point
ENTRY = ('set -e; R=$0; mount -t proc proc "$R/proc"; mount --bind /dev "$R/dev"; touch "$R/etc/resolv.conf"; '
         'mount --bind /etc/resolv.conf "$R/etc/resolv.conf"; exec chroot "$R" env -i "PATH=$PATH" '
         '"KUBE_DNS_SERVICE_HOST=$KUBE_DNS_SERVICE_HOST" '
         '"KUBE_DNS_UPSTREAM_SERVICE_HOST=$KUBE_DNS_UPSTREAM_SERVICE_HOST" nodecache run "$@"')


def test_the_image_runs_the_daemonsets_args_on_the_emulated_node(image_root, mode):
    args, corefile = _daemonset(mode)
    (image_root / "etc" / "coredns").mkdir(parents=True, exist_ok=True)
    (image_root / "etc" / "coredns" / "Corefile.base").write_text(corefile)
    for d in ("etc/nodecache", "run/nodecache", "tmp"):
        (image_root / d).mkdir(parents=True, exist_ok=True)
    (image_root / "etc" / "nodecache" / "Corefile").unlink(missing_ok=True)
    with EmulatedNode(mode=mode) as n:
        env = dict(os.environ, PATH=IMAGE_PATH, KUBE_DNS_SERVICE_HOST=CLUSTER_V4,
                   KUBE_DNS_UPSTREAM_SERVICE_HOST=UPSTREAM_V4)
        n.agent_log = n.tmp / "image-agent.log"
        n.agent = subprocess.Popen(["ip", "netns", "exec", n.node, "unshare", "-m", "sh", "-c", ENTRY,
                                    str(image_root), *args], stdout=open(n.agent_log, "w"),
                                   stderr=subprocess.STDOUT, env=env)
        n.procs.append(n.agent)
        n.wait_agent(limit=30)
        log = n.agent_log.read_text()
        assert "Traceback" not in log, log
        effective = (image_root / "etc" / "nodecache" / "Corefile").read_text()
        assert f"bind {LOCAL_V4} {CLUSTER_V4}" in effective and "__PILLAR__" not in effective
        assert n.getent("svc-1.default").returncode == 0, log        # the link-local address
        n.pod_nameserver(CLUSTER_V4)
        assert n.getent("svc-2.default").returncode == 0, log        # the kube-dns ClusterIP, taken over
        assert n.rules(), log
        startup = sh("chroot", str(image_root), "/opt/nodecache/bin/nodecache", "probe", "ready", ns=n.node,
                     check=False)
        assert startup.returncode == 0, startup.stdout + startup.stderr
        assert http_status(f"http://{LOCAL_V4}:8181/ready", 5, ns=n.node) == 200      # readinessProbe (pod IP: any address)
        assert http_status(f"http://{LOCAL_V4}:8080/health", 5, ns=n.node) == 200     # livenessProbe
        assert n.stop_agent() == 0
        assert n.interface() == "" and not n.rules(), n.agent_log.read_text()
