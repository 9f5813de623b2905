#!/usr/bin/env bash
# Tests that need kernel features this machine lacks (device-mapper, XFS
# project quota, a pure cgroup v2 hierarchy) run in ../shared/rigs/vmrig.sh,
# a throw-away qemu VM.  Each entry is a pytest selection run inside the VM.
# Where the rig cannot run, say so and skip: the in-VM tests are extra proof,
# the host suite does not depend on them.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
RIG="${VMRIG:-$REPO/../shared/rigs/vmrig.sh}"
SELECTIONS=(
    "tests/integration/test_storage_devicemapper.py"  # devicemapper: thin pool on loop files
    # overlay2's XFS and ext4 project quota (prjquota mounts on loop files); ~2 min
    "tests/integration/test_storage_prjquota.py"
    # cgroup v2: the cgroupfs driver, and real containers limited by it (OOM,
    # pids, visible limits); ~3 min.  The docker-CLI e2e (tests/e2e/test_limits.py)
    # passes there too (11/11) but takes 10-18 min under TCG, so CI leaves it out.
    "tests/integration/test_cgroupfs.py tests/integration/test_limits_runtime.py"
    # cgroup v2 io.max / io.weight: per-device I/O limits on a loop device; ~1 min
    "tests/integration/test_blkio.py tests/unit/test_blkio_plan.py"
    # cgroup v2 device filter (eBPF): the kernel's verdicts, and the mknod+open
    # attack on a host disk under the v2 driver; ~2 min
    "tests/integration/test_device_filter.py tests/security/test_devices.py -k 'runtime or device_filter'"
    # user namespaces on pure cgroup v2 and the 6.1 kernel (idmapped overlay
    # layers since 5.19): the runtime, ~2 min; then remapped containers
    # through a real skiffd and the docker CLI (shared in below), ~6 min
    "tests/integration/test_runtime_userns.py"
    "tests/security/test_userns.py -k 'first_subordinate or bind_mount or host_file or auto_ranges'"
    # seccomp on Debian's own 6.1 kernel: compile, install order, cost; ~2.5 min
    "tests/unit/test_seccomp.py tests/integration/test_seccomp_runtime.py"
)
if [ ${#SELECTIONS[@]} -eq 0 ]; then
    echo "vmrig-tests: nothing to run"
    exit 0
fi
if [ ! -x "$RIG" ] && [ ! -f "$RIG" ]; then
    echo "vmrig-tests: SKIPPED: no rig at $RIG"
    exit 0
fi
bash "$RIG" build >/dev/null || { echo "vmrig-tests: SKIPPED: the rig could not be built"; exit 0; }
# The end-to-end selections drive skiffd with the stock docker CLI, which the
# guest lacks: a copy of the host's is shared in (never the host's own dir).
CLI_DIR=$(mktemp -d /tmp/vmrig-docker-cli.XXXXXX)
trap 'rm -rf "$CLI_DIR"' EXIT
DOCKER_CLI=$(command -v docker || echo /usr/local/bin/docker)
[ -x "$DOCKER_CLI" ] && cp "$DOCKER_CLI" "$CLI_DIR/docker"
rc=0
for sel in "${SELECTIONS[@]}"; do
    echo "vmrig-tests: $sel"
    VMRIG_SHARES="$REPO/.venv $CLI_DIR" bash "$RIG" run "$REPO" -- \
        "cd $REPO && export PATH=$CLI_DIR:\$PATH SKIFF_TEST_DAEMON_TIMEOUT=240 && .venv/bin/python -m pytest -p no:cacheprovider -q $sel" || rc=1
done
exit $rc
