"""``docker system df [-v]`` and ``docker info`` against a real skiffd: the counts and
sizes must be those of the images, layers and containers present.

The yardstick is computed independently of GET /system/df: layer sizes from
each image's history (API, bytes), layers identified by their chain IDs
(computed here from RootFS.Layers), and the bytes a container writes.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator

import docker
import pytest

from tests.daemon import Daemon

MB = 1024 * 1024


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def api(skiffd: Daemon) -> Iterator[docker.APIClient]:
    client = docker.APIClient(base_url=skiffd.host, version="1.41", timeout=120)
    yield client
    client.close()


@pytest.fixture
def made(skiffd: Daemon) -> Iterator[dict[str, list[str]]]:
    """Containers and images the test makes; removed afterwards."""
    things: dict[str, list[str]] = {"containers": [], "images": []}
    yield things
    if things["containers"]:
        skiffd.docker("rm", "-f", *things["containers"])
    for ref in reversed(things["images"]):
        skiffd.docker("rmi", "-f", ref)


def chain_ids(diff_ids: list[str]) -> list[str]:
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def layerdb_size(d: Daemon, chain_id: str) -> int:
    """A layer's size as the layer store records it (Docker's layerdb ``size`` file)."""
    driver = d.config["storage-driver"]
    path = d.data_root / "image" / driver / "layerdb" / "sha256" / chain_id[7:] / "size"
    return int(path.read_text())


def test_df_counts_and_sizes_are_truthful(skiffd: Daemon, api: docker.APIClient,
                                          made: dict[str, list[str]]) -> None:
    # two images on busybox: each adds its own layer over the shared base
    refs = []
    for n, size_mb in ((1, 1), (2, 2)):
        name = uniq(f"df-src{n}")
        made["containers"].append(name)
        skiffd.docker("run", "--name", name, "busybox", "dd", "if=/dev/zero",
                      f"of=/data{n}", "bs=1M", f"count={size_mb}", check=True)
        ref = f"{uniq('df-img')}:v{n}"
        skiffd.docker("commit", name, ref, check=True)
        made["images"].append(ref)
        refs.append(ref)
    # a container that wrote 5 MB
    big = uniq("df-big")
    made["containers"].append(big)
    skiffd.docker("run", "--name", big, refs[0], "dd", "if=/dev/zero", "of=/five",
                  "bs=1M", "count=5", check=True)

    df = api.df()
    assert df["BuildCache"] == [] and isinstance(df["Volumes"], list)
    images = {i["Id"]: i for i in df["Images"]}
    listed = {i["Id"] for i in api.images()}
    assert set(images) == listed
    ids = {ref: api.inspect_image(ref)["Id"] for ref in [*refs, "busybox:latest"]}
    # the yardstick: every image's layers by chain ID, with the layer store's sizes
    per_image: dict[str, dict[str, int]] = {}
    for image_id in images:
        chains = chain_ids(api.inspect_image(image_id)["RootFS"].get("Layers") or [])
        per_image[image_id] = {c: layerdb_size(skiffd, c) for c in chains}
    users: dict[str, int] = {}
    unique: dict[str, int] = {}
    for chains in per_image.values():
        for chain, size in chains.items():
            users[chain] = users.get(chain, 0) + 1
            unique[chain] = size
    assert df["LayersSize"] == sum(unique.values())
    for image_id, summary in images.items():
        chains = per_image[image_id]
        assert summary["Size"] == sum(chains.values())
        assert summary["SharedSize"] == sum(s for c, s in chains.items() if users[c] > 1)
    base = ids["busybox:latest"]
    for ref in refs:
        summary = images[ids[ref]]
        # the base layer is shared with busybox and the other image
        assert summary["SharedSize"] == images[base]["Size"] > 0
        assert summary["Size"] - summary["SharedSize"] >= MB  # its own layer
    assert images[ids[refs[1]]]["Size"] - images[ids[refs[1]]]["SharedSize"] >= 2 * MB
    # containers per image
    assert images[ids[refs[0]]]["Containers"] == 1
    assert images[base]["Containers"] == 2
    assert images[ids[refs[1]]]["Containers"] == 0
    # containers: what they wrote, and their whole root filesystem
    containers = {c["Names"][0].lstrip("/"): c for c in df["Containers"]}
    assert set(containers) == {c["Names"][0].lstrip("/") for c in api.containers(all=True)}
    c = containers[big]
    assert 5 * MB <= c["SizeRw"] < 6 * MB
    assert c["SizeRootFs"] == c["SizeRw"] + images[ids[refs[0]]]["Size"]
    assert c["ImageID"] == ids[refs[0]]
    for n, name in enumerate(made["containers"][:2], start=1):
        assert n * MB <= containers[name]["SizeRw"] < (n + 1) * MB

    # the stock CLI renders both views
    summary = skiffd.docker("system", "df", "--format", "{{json .}}", check=True)
    rows = {r["Type"]: r for r in map(json.loads, summary.stdout.decode().splitlines())}
    assert rows["Images"]["TotalCount"] == str(len(images))
    assert rows["Images"]["Active"] == "2"
    assert rows["Containers"]["TotalCount"] == str(len(containers))
    verbose = skiffd.docker("system", "df", "-v", check=True).stdout.decode()
    assert big in verbose and refs[1].split(":")[0] in verbose
    assert "Images space usage" in verbose and "Containers space usage" in verbose

    # docker info counts the same things
    info = api.info()
    assert info["Images"] == len(api.images(all=True))
    assert info["Containers"] == len(containers)
    assert info["ContainersStopped"] == len(containers)
    assert info["ContainersRunning"] == 0


def test_df_with_a_running_container_and_after_removal(
        skiffd: Daemon, api: docker.APIClient, made: dict[str, list[str]]) -> None:
    name = uniq("df-run")
    made["containers"].append(name)
    skiffd.docker("run", "-d", "--name", name, "busybox", "sh", "-c",
                  "head -c 3145728 /dev/zero > /three && sleep 600", check=True)
    deadline = time.monotonic() + 30
    while True:
        rows = {c["Names"][0].lstrip("/"): c for c in api.df()["Containers"]}
        if rows[name]["SizeRw"] >= 3 * MB or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rows[name]["SizeRw"] == 3 * MB
    assert rows[name]["State"] == "running"
    info = api.info()
    assert info["ContainersRunning"] >= 1
    skiffd.docker("rm", "-f", name, check=True)
    made["containers"].remove(name)
    assert name not in {c["Names"][0].lstrip("/") for c in api.df()["Containers"]}


def test_df_reports_volumes_with_their_usage(skiffd: Daemon, api: docker.APIClient,
                                             made: dict[str, list[str]]) -> None:
    vol = uniq("df-vol")
    skiffd.docker("volume", "create", vol, check=True)
    try:
        name = uniq("df-volc")
        made["containers"].append(name)
        skiffd.docker("run", "--name", name, "-v", f"{vol}:/data", "busybox", "dd",
                      "if=/dev/zero", "of=/data/blob", "bs=1M", "count=1", check=True)
        volumes = {v["Name"]: v for v in api.df()["Volumes"]}
        assert volumes[vol]["UsageData"] == {"Size": MB, "RefCount": 1}
        # the container's own layer did not get the volume's bytes
        rows = {c["Names"][0].lstrip("/"): c for c in api.df()["Containers"]}
        assert rows[name]["SizeRw"] < MB
        verbose = skiffd.docker("system", "df", "-v", check=True).stdout.decode()
        assert vol in verbose
    finally:
        skiffd.docker("rm", "-f", *made["containers"])
        made["containers"].clear()
        skiffd.docker("volume", "rm", vol)
