"""docker update's merge rules and the stats frame helpers."""

from __future__ import annotations

import os

import pytest

from skiff.core.containers.resources import merge_update, network_stats
from skiff.core.errors import Conflict, InvalidParameter

MiB = 1024 * 1024

# what the docker CLI sends for `docker update --memory 64m`: every field, zeros
CLI_BODY = {"BlkioWeight": 0, "CpuShares": 0, "NanoCpus": 0, "CpuPeriod": 0, "CpuQuota": 0,
            "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "",
            "CpusetMems": "", "Memory": 0, "MemoryReservation": 0, "MemorySwap": 0,
            "KernelMemory": 0, "RestartPolicy": {"Name": "", "MaximumRetryCount": 0}}


def test_zero_fields_leave_values_alone() -> None:
    hc = {"Memory": 32 * MiB, "CpuShares": 512, "PidsLimit": 100, "NetworkMode": "none"}
    out = merge_update(hc, dict(CLI_BODY, Memory=64 * MiB))
    assert out == dict(hc, Memory=64 * MiB)
    assert hc["Memory"] == 32 * MiB  # the input is not changed


def test_pids_limit_changes_only_when_present() -> None:
    hc = {"PidsLimit": 2048}
    assert merge_update(hc, CLI_BODY)["PidsLimit"] == 2048
    assert merge_update(hc, dict(CLI_BODY, PidsLimit=None))["PidsLimit"] == 2048
    assert merge_update(hc, dict(CLI_BODY, PidsLimit=-1))["PidsLimit"] == -1
    assert merge_update(hc, dict(CLI_BODY, PidsLimit=20))["PidsLimit"] == 20


def test_nano_cpus_conflict_with_a_set_period() -> None:
    with pytest.raises(Conflict, match="Nano CPUs cannot be updated"):
        merge_update({"CpuPeriod": 50000}, dict(CLI_BODY, NanoCpus=500_000_000))
    with pytest.raises(Conflict, match="CPU Period cannot be updated"):
        merge_update({"NanoCpus": 500_000_000}, dict(CLI_BODY, CpuQuota=20000))


def test_memory_above_explicit_swap_needs_swap() -> None:
    hc = {"Memory": 32 * MiB, "MemorySwap": 64 * MiB}
    with pytest.raises(Conflict, match="memoryswap"):
        merge_update(hc, dict(CLI_BODY, Memory=128 * MiB))
    out = merge_update(hc, dict(CLI_BODY, Memory=128 * MiB, MemorySwap=256 * MiB))
    assert (out["Memory"], out["MemorySwap"]) == (128 * MiB, 256 * MiB)
    # a default swap (0: twice the memory) follows the new memory limit
    assert merge_update({"Memory": 32 * MiB}, dict(CLI_BODY, Memory=128 * MiB)
                        )["Memory"] == 128 * MiB


def test_restart_policy_and_bad_values() -> None:
    out = merge_update({}, dict(CLI_BODY, RestartPolicy={"Name": "always"}))
    assert out["RestartPolicy"] == {"Name": "always", "MaximumRetryCount": 0}
    with pytest.raises(InvalidParameter, match="Memory"):
        merge_update({}, dict(CLI_BODY, Memory="lots"))
    with pytest.raises(InvalidParameter):
        merge_update({}, ["not", "an", "object"])  # type: ignore[arg-type]


def test_network_stats_of_this_process_skip_lo() -> None:
    stats = network_stats(os.getpid())
    assert "lo" not in stats
    for counters in stats.values():
        assert set(counters) == {"rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
                                 "tx_bytes", "tx_packets", "tx_errors", "tx_dropped"}
    assert network_stats(2**22 + 12345) == {}  # no such process
