#!/usr/bin/env bash
# Installs the system tools the end-to-end tests use (network namespaces,
# iptables, nftables, conntrack, ss, getent, and the real resolvers the
# interoperability suite asks through: dig, kdig, drill, musl, Go, Node's
# c-ares, busybox), the image build's (mmdebstrap, buildah, and qemu-user
# for the arm64 image) and the peer servers the comparison benchmark runs (unbound,
# dnsmasq, dnsdist, dnsperf), when we are root on a Debian-like
# machine and they are missing. Otherwise it only says what is missing:
# those tests then skip with the reason.
set -u
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v nft >/dev/null || need+=(nftables)
command -v getent >/dev/null || need+=(libc-bin)
# peers for `nodecache-bench compare` and its test (skipped without them)
command -v unbound >/dev/null || need+=(unbound)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v dnsdist >/dev/null || need+=(dnsdist)
command -v strace >/dev/null || need+=(strace)  # compare --hits: system calls per query
# the real-resolver suite (tests/e2e/test_resolvers.py): query tools, musl, Go, c-ares (Node), busybox
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v kdig >/dev/null || need+=(knot-dnsutils)
command -v drill >/dev/null || need+=(ldnsutils)
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v go >/dev/null || need+=(golang-go)
command -v node >/dev/null || need+=(nodejs)
command -v busybox >/dev/null || need+=(busybox)
# promtool checks and unit-tests the alerts of daemonset/components/monitoring
command -v promtool >/dev/null || need+=(prometheus)
# `make image` and its test: a Debian base without a registry, built without a container runtime
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v buildah >/dev/null || need+=(buildah)
command -v unshare >/dev/null || need+=(util-linux)
# the arm64 image on another machine: its build runs arm64 programs through binfmt_misc and qemu-user
if [ "$(dpkg --print-architecture 2>/dev/null)" != arm64 ]; then
    command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
fi

install_missing() {
    [ ${#need[@]} -eq 0 ] && return
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${need[*]} for the end-to-end tests"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
            || echo "could not install ${need[*]}: end-to-end tests will skip"
    else
        echo "missing ${need[*]} (need root and apt-get to install): end-to-end tests will skip"
    fi
}

# qemu-aarch64 registered with binfmt_misc (a package install registers it
# only where binfmt_misc is mounted, which a container or a minimal VM may
# not have done): else the arm64 image test skips, saying so
enable_arm64_emulation() {
    local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
    [ "$(id -u)" = 0 ] && command -v qemu-aarch64-static >/dev/null || return 0
    grep -qs '^enabled' "$entry" && return 0
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null
    if command -v update-binfmts >/dev/null; then
        update-binfmts --import qemu-aarch64 >/dev/null 2>&1
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1
    fi
    grep -qs '^enabled' "$entry" || echo "qemu-aarch64 is not registered with binfmt_misc: the arm64 image test will skip"
}

install_missing
enable_arm64_emulation
exit 0
