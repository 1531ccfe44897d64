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
and SIGTERM tears down what it set up.

The arm64 image is built from the same locked inputs (``ARCH=arm64``,
under qemu-user through binfmt_misc): every ELF file it holds is for arm64
(Debian's and the compiled wheels'), and its agent runs under qemu and
checks the DaemonSet's Corefile."""
import os
import shutil
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from nodecache_lab.emunode import (CLUSTER_V4, LOCAL_V4, UPSTREAM_V4, EmulatedNode, http_status,
                                       missing_requirements, sh)

ROOT = Path(__file__).resolve().parent.parent.parent
TAG = "localhost/nodecache:0.1.0"
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
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


def _build(tag: str, arch: str) -> None:
    env = dict(os.environ, PY=sys.executable, ARCH=arch)
    build = subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh"), tag], capture_output=True, text=True,
                           timeout=1200, env=env, cwd=ROOT)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]


@contextmanager
def _mounted(image: str):
    ctr = subprocess.run(["buildah", "from", "--pull=false", image], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        yield Path(subprocess.run(["buildah", "mount", ctr], capture_output=True, text=True,
                                  check=True).stdout.strip())
    finally:
        subprocess.run(["buildah", "umount", ctr], capture_output=True)
        subprocess.run(["buildah", "rm", ctr], capture_output=True)


@pytest.fixture(scope="module")
def image_root():
    _build(TAG, HOST_ARCH)
    sbom = (ROOT / "build" / "image" / HOST_ARCH / "sbom.txt").read_text()
    assert "\niptables " in sbom and "\nnftables " in sbom and "\nnodecache 0.1.0" in sbom and "\nuvloop " in sbom
    with _mounted(TAG) as root:  # the manifest list: this machine's architecture
        yield root


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


IMPORT_ALL = """
import importlib, pkgutil, nodecache, nodecache_bench
names = [m.name for pkg in (nodecache, nodecache_bench)
         for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
         if not m.name.endswith(".__main__")]  # (a script: importing it runs it)
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_installed_module_imports_in_the_image(image_root):
    """The image carries the product and nothing that needs a test
    dependency: every module of the installed packages imports there."""
    run = subprocess.run(["chroot", str(image_root), "/opt/nodecache/bin/python", "-c", IMPORT_ALL],
                         capture_output=True, text=True, timeout=120, env={"PATH": IMAGE_PATH})
    assert run.returncode == 0, run.stdout + run.stderr
    assert int(run.stdout) > 100, run.stdout
    site = next((image_root / "opt" / "nodecache" / "lib").glob("python3*/site-packages"))
    shipped = [p.relative_to(site) for p in (site / "nodecache").rglob("*.py")]
    assert not [p for p in shipped if p.name.startswith("test_") or "testing" in p.parts], shipped
    assert not (site / "nodecache_lab").exists()


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


ELF_MACHINE = {"amd64": 62, "arm64": 183}  # e_machine: EM_X86_64, EM_AARCH64


def _elf_machine(path: Path) -> int | None:
    with open(path, "rb") as fh:
        head = fh.read(20)
    return struct.unpack_from("<H", head, 18)[0] if head[:4] == b"\x7fELF" and len(head) == 20 else None


def _emulation_missing() -> str | None:
    if HOST_ARCH == "arm64":
        return None
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        return "the arm64 image is built under qemu-user: binfmt_misc has no enabled qemu-aarch64 " \
               "(apt-get install qemu-user-static binfmt-support; scripts/system-deps.sh registers it)"
    return None


@pytest.mark.skipif(_emulation_missing() is not None, reason=str(_emulation_missing()))
def test_the_arm64_image_holds_arm64_code_only_and_its_agent_runs():
    tag = "localhost/nodecache:test-arm64-only"
    _build(tag, "arm64")
    sbom = (ROOT / "build" / "image" / "arm64" / "sbom.txt").read_text()
    debs = [ln.split() for ln in sbom.splitlines() if ln and not ln.startswith("#") and len(ln.split()) == 3]
    assert debs and {arch for *_, arch in debs} <= {"arm64", "all"}, sbom
    with _mounted(f"{tag}-arm64") as root:
        elves = {}
        for d in ("usr/bin", "usr/sbin", "usr/lib/aarch64-linux-gnu", "opt/nodecache/lib"):
            for path in (root / d).rglob("*"):
                if path.is_file() and not path.is_symlink():
                    machine = _elf_machine(path)
                    if machine is not None:
                        elves[str(path.relative_to(root))] = machine
        compiled = [p for p in elves if p.startswith("opt/nodecache/lib") and p.endswith(".so")]
        # uvloop and google-re2 (with the libraries their wheels bundle) are compiled: arm64 wheels were installed
        assert any("uvloop" in p for p in compiled) and any("re2" in p for p in compiled), compiled
        assert "usr/bin/python3.11" in elves and "usr/sbin/xtables-nft-multi" in elves, sorted(elves)[:20]
        wrong = {p: m for p, m in elves.items() if m != ELF_MACHINE["arm64"]}
        assert not wrong, wrong
        (root / "tmp" / "Corefile").write_text(_daemonset("iptables")[1])
        run = subprocess.run(["chroot", str(root), "/opt/nodecache/bin/nodecache", "check", "-conf", "/tmp/Corefile",
                              "-localip", "169.254.20.10", "-clusterdns", "10.96.0.11"],
                             capture_output=True, text=True, timeout=300, env={"PATH": IMAGE_PATH})
        assert run.returncode == 0, run.stdout + run.stderr
        version = subprocess.run(["chroot", str(root), "/opt/nodecache/bin/python", "-c",
                                  "import platform, uvloop, re2; print(platform.machine())"],
                                 capture_output=True, text=True, timeout=300, env={"PATH": IMAGE_PATH})
        assert version.stdout.strip() == "aarch64", version.stdout + version.stderr
    for image in (tag, f"{tag}-arm64"):
        subprocess.run(["buildah", "manifest", "rm", image], capture_output=True)
        subprocess.run(["buildah", "rmi", image], capture_output=True)
