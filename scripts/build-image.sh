#!/usr/bin/env bash
# `make image`: build the nodecache image here, from Debian's packages and
# PyPI wheels checked against image/requirements.lock, with no registry.
#
#   [ARCH="amd64 arm64"] scripts/build-image.sh [TAG]   (default localhost/nodecache:0.1.0)
#
# For each architecture in ARCH (default: this machine's), amd64 or arm64:
# 1. base: mmdebstrap --variant=minbase bookworm + python3, iptables,
#    nftables, iproute2 for that architecture, imported into buildah's
#    storage as localhost/nodecache-base:bookworm-ARCH (kept: later builds
#    reuse it; NODECACHE_REBUILD_BASE=1 makes it again);
# 2. wheels: the locked dependencies for that architecture (pip download,
#    hashes checked at install: the lock holds one per wheel) and
#    nodecache's own wheel, in build/image/ARCH/wheels;
# 3. buildah bud --isolation chroot (containers cannot run in every VM:
#    chroot needs no runtime) into TAG-ARCH, then its SBOM: the Debian
#    packages and the Python distributions (build/image/ARCH/sbom.txt).
# Then TAG is a manifest list of the images built (what a registry serves
# to a mixed cluster: `buildah manifest push --all TAG docker://REGISTRY/...`);
# `buildah from TAG` picks this machine's architecture from it.
# Another architecture's steps run under qemu-user (apt-get install
# qemu-user-static: binfmt_misc runs its ELF files through the emulator).
# Needs root, mmdebstrap and buildah (apt-get install mmdebstrap buildah).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-localhost/nodecache:0.1.0}
HOST_ARCH=$(dpkg --print-architecture)
ARCHS=${ARCH:-$HOST_ARCH}
PY=${PY:-.venv/bin/python}
declare -A MACHINE=([amd64]=x86_64 [arm64]=aarch64)   # Debian's name -> the wheels' and the kernel's

for tool in mmdebstrap buildah; do
    command -v "$tool" >/dev/null || { echo "build-image: needs $tool (apt-get install mmdebstrap buildah)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "build-image: needs root (mmdebstrap, buildah storage)" >&2; exit 2; }
for arch in $ARCHS; do
    [ -n "${MACHINE[$arch]:-}" ] || { echo "build-image: ARCH $arch: amd64 or arm64" >&2; exit 2; }
    if [ "$arch" != "$HOST_ARCH" ] && ! grep -qs '^enabled' "/proc/sys/fs/binfmt_misc/qemu-${MACHINE[$arch]}"; then
        echo "build-image: ARCH $arch on a $HOST_ARCH machine runs under qemu-user, and binfmt_misc has no" \
             "enabled qemu-${MACHINE[$arch]} (apt-get install qemu-user-static)" >&2
        exit 2
    fi
done

base() {  # base ARCH: Debian bookworm minbase for ARCH in buildah's storage
    local arch=$1 out=$2 image=localhost/nodecache-base:bookworm-$1 ctr
    if [ "${NODECACHE_REBUILD_BASE:-0}" = 1 ] || ! buildah inspect --type image "$image" >/dev/null 2>&1; then
        echo "build-image: base $image from Debian bookworm (mmdebstrap --arch=$arch)"
        mmdebstrap --quiet --arch="$arch" --variant=minbase --include=python3,python3-venv,iptables,nftables,iproute2 \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
            bookworm "$out/base.tar"
        ctr=$(buildah from scratch)
        buildah add --quiet "$ctr" "$out/base.tar" / >/dev/null
        buildah config --arch "$arch" --os linux --env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            --label org.opencontainers.image.base.name=debian:bookworm "$ctr"
        buildah commit --quiet "$ctr" "$image" >/dev/null
        buildah rm "$ctr" >/dev/null
        rm -f "$out/base.tar"
    fi
}

wheels() {  # wheels ARCH OUT: the locked dependencies for ARCH and nodecache's wheel
    local m=${MACHINE[$1]} dir=$2/wheels
    echo "build-image: wheels for $1 (locked dependencies and nodecache)"
    mkdir -p "$dir"
    rm -f "$dir"/*.whl
    cp image/requirements.lock "$dir/requirements.lock"
    "$PY" -m pip download --quiet --only-binary=:all: --no-deps --require-hashes --python-version 3.11 \
        --platform "manylinux2014_$m" --platform "manylinux_2_28_$m" --implementation cp \
        -r image/requirements.lock -d "$dir"
    rm -rf build/lib build/bdist.*  # setuptools' staging: a file removed from the tree must not ship
    "$PY" -m pip wheel --quiet --no-deps -w "$dir" .
}

sbom() {  # sbom IMAGE OUT: what the image holds, read inside it
    local ctr root
    ctr=$(buildah from --pull=false "$1")
    root=$(buildah mount "$ctr")
    {
        echo "# SBOM of $1: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "# Debian packages (dpkg)"
        chroot "$root" dpkg-query -W -f '${Package} ${Version} ${Architecture}\n'
        echo "# Python distributions (/opt/nodecache)"
        chroot "$root" /opt/nodecache/bin/python -c \
            'import importlib.metadata as m; [print(d.metadata["Name"], d.version) for d in sorted(m.distributions(), key=lambda d: d.metadata["Name"].lower())]'
    } > "$2/sbom.txt"
    buildah umount "$ctr" >/dev/null
    buildah rm "$ctr" >/dev/null
}

built=()
for arch in $ARCHS; do
    out=build/image/$arch
    mkdir -p "$out"
    base "$arch" "$out"
    wheels "$arch" "$out"
    echo "build-image: $TAG-$arch (buildah bud --isolation chroot)"
    buildah bud --quiet --isolation chroot --pull=false --layers=false --platform "linux/$arch" \
        --build-arg "BASE=localhost/nodecache-base:bookworm-$arch" -f image/Containerfile -t "$TAG-$arch" "$out" >/dev/null
    sbom "$TAG-$arch" "$out"
    built+=("$TAG-$arch")
    echo "build-image: $TAG-$arch, $(buildah images --format '{{.Size}}' "$TAG-$arch"); SBOM in $out/sbom.txt"
done

# TAG: the manifest list of what this run built (an image of that name goes first)
buildah manifest rm "$TAG" >/dev/null 2>&1 || buildah rmi "$TAG" >/dev/null 2>&1 || true
buildah manifest create "$TAG" >/dev/null
for image in "${built[@]}"; do
    buildah manifest add "$TAG" "containers-storage:$image" >/dev/null
done
echo "build-image: $TAG: manifest list of ${built[*]}"
