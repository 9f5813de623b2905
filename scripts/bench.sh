#!/usr/bin/env bash
# Benchmarks, as root on Debian 12: skiffd against dockerd side by side.
#   scripts/bench.sh                  python -m benchmarks engine (full, < 20 min)
#   scripts/bench.sh --quick          the quick mode (< 5 min)
#   scripts/bench.sh storage --quick  the storage drivers against each other
# Installs what only the benchmarks need (matplotlib and py-spy: the [bench]
# extra; Debian's docker.io for dockerd, its service kept from starting), then
# runs the harness.  Results go to ./bench-out unless --out DIR is given.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${SKIFF_VENV:-$REPO/.venv}

if [ "$(id -u)" != 0 ]; then
    echo "bench.sh: run as root (the engines manage mounts, namespaces and cgroups)" >&2
    exit 1
fi
[ -x "$VENV/bin/python" ] || scripts/install.sh
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[bench]"

if ! command -v dockerd >/dev/null 2>&1; then
    # The harness starts its own dockerd (temp data-root, socket, no bridge);
    # the system's must not start, now or at boot.
    echo "bench.sh: apt-get install docker.io (dockerd to compare against)"
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable docker.service docker.socket >/dev/null 2>&1 || true
    fi
fi

if [ ! -x /usr/lib/cni/bridge ]; then
    # benchmarks/cri.py: containerd's pod network (CNI's bridge and host-local);
    # containerd itself comes with docker.io
    echo "bench.sh: apt-get install containernetworking-plugins (containerd's CRI, benchmarks/cri.py)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containernetworking-plugins >/dev/null
fi

what=engine
case "${1:-}" in engine|storage) what=$1; shift ;; esac
exec "$VENV/bin/python" -m benchmarks "$what" "$@"
