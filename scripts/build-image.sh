#!/usr/bin/env bash
# `make image`: build the nodecache image here, from Debian's packages and
# PyPI wheels checked against image/requirements.lock, with no registry.
#
#   scripts/build-image.sh [TAG]        (default localhost/nodecache:0.1.0)
#
# 1. base: mmdebstrap --variant=minbase bookworm + python3, iptables,
#    nftables, iproute2, imported into buildah's storage as
#    localhost/nodecache-base:bookworm (kept: later builds reuse it;
#    NODECACHE_REBUILD_BASE=1 makes it again);
# 2. wheels: the locked dependencies (pip download, hashes checked at
#    install) and nodecache's own wheel, in build/image/wheels;
# 3. buildah bud --isolation chroot (containers cannot run in every VM:
#    chroot needs no runtime), then the SBOM: the Debian packages and the
#    Python distributions in the image (build/image/sbom.txt).
# Needs root, mmdebstrap and buildah (apt-get install mmdebstrap buildah).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-localhost/nodecache:0.1.0}
BASE=localhost/nodecache-base:bookworm
OUT=build/image
PY=${PY:-.venv/bin/python}
for tool in mmdebstrap buildah; do
    command -v "$tool" >/dev/null || { echo "build-image: needs $tool (apt-get install mmdebstrap buildah)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "build-image: needs root (mmdebstrap, buildah storage)" >&2; exit 2; }
mkdir -p "$OUT/wheels"

if [ "${NODECACHE_REBUILD_BASE:-0}" = 1 ] || ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    echo "build-image: base $BASE from Debian bookworm (mmdebstrap)"
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,iptables,nftables,iproute2 \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        bookworm "$OUT/base.tar"
    ctr=$(buildah from scratch)
    buildah add --quiet "$ctr" "$OUT/base.tar" / >/dev/null
    buildah config --env PATH=/usr/sbin:/usr/bin:/sbin:/bin --label org.opencontainers.image.base.name=debian:bookworm "$ctr"
    buildah commit --quiet "$ctr" "$BASE" >/dev/null
    buildah rm "$ctr" >/dev/null
    rm -f "$OUT/base.tar"
fi

echo "build-image: wheels (locked dependencies and nodecache)"
rm -f "$OUT"/wheels/*.whl
cp image/requirements.lock "$OUT/wheels/requirements.lock"
"$PY" -m pip download --quiet --only-binary=:all: --no-deps --require-hashes --python-version 3.11 \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --implementation cp \
    -r image/requirements.lock -d "$OUT/wheels"
"$PY" -m pip wheel --quiet --no-deps -w "$OUT/wheels" .

echo "build-image: $TAG (buildah bud --isolation chroot)"
buildah bud --quiet --isolation chroot --pull=false --layers=false -f image/Containerfile -t "$TAG" "$OUT" >/dev/null

ctr=$(buildah from --pull=false "$TAG")
root=$(buildah mount "$ctr")
{
    echo "# SBOM of $TAG: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# Debian packages (dpkg)"
    chroot "$root" dpkg-query -W -f '${Package} ${Version} ${Architecture}\n'
    echo "# Python distributions (/opt/nodecache)"
    chroot "$root" /opt/nodecache/bin/python -c \
        'import importlib.metadata as m; [print(d.metadata["Name"], d.version) for d in sorted(m.distributions(), key=lambda d: d.metadata["Name"].lower())]'
} > "$OUT/sbom.txt"
buildah umount "$ctr" >/dev/null
buildah rm "$ctr" >/dev/null
echo "build-image: $TAG, $(buildah images --format '{{.Size}}' "$TAG"); SBOM in $OUT/sbom.txt"
