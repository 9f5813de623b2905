#!/usr/bin/env bash
# The main job on the default configuration: install, start skiffd, make
# busybox:latest from Debian's busybox-static, run a container that greets,
# and show `skiff info`.  skiffd keeps running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh

SOCK=/run/skiff.sock
if [ -S "$SOCK" ] && skiff info >/dev/null 2>&1; then
    echo "demo: skiffd is already running"
else
    mkdir -p /var/log
    echo "demo: starting skiffd (log: /var/log/skiffd.log)"
    nohup skiffd >>/var/log/skiffd.log 2>&1 &
    for _ in $(seq 1 100); do
        [ -S "$SOCK" ] && skiff info >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
skiff image bootstrap busybox
skiff run --rm busybox echo "Ahoy from a skiff container!"
skiff info
echo
echo "demo: skiffd is running; use it with: DOCKER_HOST=unix://$SOCK docker run --rm busybox echo hi"
echo "demo: stop it with: kill \$(cat /run/skiff.pid)"
