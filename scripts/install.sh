#!/usr/bin/env bash
# Install skiff and what it needs on Debian 12, as root.
#   scripts/install.sh          runtime only: system packages, .venv, skiff
#   scripts/install.sh --test   also the test tools (pytest, hypothesis, docker-py, ruff)
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV="$REPO/.venv"
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (skiff manages mounts, namespaces and cgroups)" >&2
    exit 1
fi

PKGS=(python3 python3-venv python3-dev gcc libffi-dev busybox-static iptables iproute2
      util-linux procps kmod)
PKGS+=(libc6-dev)  # libc.a: setup.py links skiff-init (--init) and skiff-monitor statically
PKGS+=(libseccomp-dev)  # seccomp.h: setup.py builds the libseccomp binding that compiles filters
# Only the test suite needs these (real registries, other filesystems, dockerd
# for side-by-side checks).  Append here; keep one package per purpose.
TEST_PKGS=(btrfs-progs fuse-overlayfs e2fsprogs)  # storage drivers: btrfs, aufs, loop quota
TEST_PKGS+=(docker-registry skopeo apache2-utils)  # registry tests: registry, OCI copies, htpasswd
TEST_PKGS+=(docker.io)  # dockerd: images saved by one engine load into the other
TEST_PKGS+=(docker-compose)  # compose 1.29 (Python, docker-py): `build:` posts to POST /build
TEST_PKGS+=(xfsprogs)  # project-quota tests: mkfs.xfs (they run in the VM rig)
TEST_PKGS+=(etcd-server)  # the cluster store's tests start their own etcd (never the service)
[ "$WITH_TEST" = 1 ] && PKGS+=("${TEST_PKGS[@]}")
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install.sh: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # docker.io's postinst would start the system's dockerd: forbid service starts
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || { rm -f /usr/sbin/policy-rc.d; exit 1; }
    rm -f /usr/sbin/policy-rc.d
fi

if [ "$WITH_TEST" = 1 ] && ! command -v docker >/dev/null 2>&1; then
    # The stock docker CLI drives skiffd in the end-to-end tests.  Debian's
    # docker.io carries one; keep its own daemon from starting.
    echo "install.sh: apt-get install docker.io (for the docker CLI)"
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi

# Debian's interpreter, not a pyenv one: the VM rig shares this venv over 9p.
if [ ! -x "$VENV/bin/python" ]; then
    /usr/bin/python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip setuptools wheel cffi
if [ "$WITH_TEST" = 1 ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[test,cri]"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO/tests/thirdparty/skiff-testfs"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO/tests/thirdparty/skiff-testlog"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO/tests/thirdparty/skiff-testnet"
else
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[cri]"
fi
ln -sf "$VENV/bin/skiffd" /usr/local/sbin/skiffd
ln -sf "$VENV/bin/skiff" /usr/local/bin/skiff
echo "install.sh: skiff installed in $VENV (skiffd and skiff linked into /usr/local)"
