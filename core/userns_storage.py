"""How remapped containers see their image's layers, chosen when the daemon starts.

``idmap``: the layers stay as they are on disk (container ids) and the
runtime shows them through idmapped mounts with the container's user
namespace; nothing is copied, every container shares them.  ``chown``:
Docker's way, for kernels and storage drivers that cannot: each mapping gets
chowned copies of the layers it uses (``LayerStore``'s ``mapped/``).

The choice is made by trying: a throwaway layer of the storage driver is
built into a root filesystem the way a remapped container's would be
(``Runtime.probe_idmapped_rootfs``) and a file written there as the
container's root must land on disk owned by 0.  daemon.json
``exec-opts: ["skiff.userns-storage=idmap|chown"]`` forces one (idmap is then
refused at start when it cannot work); ``docker info`` shows the choice and,
for chown, the reason.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import tarfile
from typing import TYPE_CHECKING

import structlog

from skiff.core.config import ConfigError, exec_options
from skiff.core.hookspecs import IDMAP_PROBE_FILE

if TYPE_CHECKING:
    from skiff.core.engine import Engine

log = structlog.get_logger("skiff.userns")

OPTION = "skiff.userns-storage"
MODES = ("idmap", "chown")


async def choose(engine: Engine) -> None:
    """Set ``engine.userns_storage`` (and ``userns_storage_reason``)."""
    forced = exec_options(engine.config).get(OPTION, "")
    if forced and forced not in MODES:
        raise ConfigError(f"{engine.config['config-file']}: exec-opts {OPTION}={forced}: "
                          "use idmap or chown")
    if forced == "chown":
        engine.userns_storage = "chown"
        engine.userns_storage_reason = f"exec-opts {OPTION}=chown"
    else:
        reason = await probe(engine)
        if reason is None:
            engine.userns_storage, engine.userns_storage_reason = "idmap", ""
        elif forced == "idmap":
            raise ConfigError(f"{engine.config['config-file']}: exec-opts {OPTION}=idmap, but "
                              f"idmapped mounts cannot work here: {reason}")
        else:
            engine.userns_storage, engine.userns_storage_reason = "chown", reason
    log.info("userns.storage", mode=engine.userns_storage,
             reason=engine.userns_storage_reason or None, driver=engine.storage_name)


def status(engine: Engine) -> list[tuple[str, str]]:
    """Rows for ``docker info``'s DriverStatus."""
    if engine.remap is None:
        return []
    if engine.userns_storage == "idmap":
        return [("User namespaces", "idmapped mounts (layers shared, nothing copied)")]
    return [("User namespaces",
             f"chowned copies of the layers ({engine.userns_storage_reason})")]


async def probe(engine: Engine) -> str | None:
    """None when a remapped container's root filesystem can be idmapped here."""
    runtime_probe = getattr(engine.runtime, "probe_idmapped_rootfs", None)
    if runtime_probe is None:
        return f"the runtime {engine.runtime_name} cannot build idmapped root filesystems"
    assert engine.remap is not None
    storage = engine.storage
    tag = secrets.token_hex(8)
    base, rw = f"userns-probe-{tag}", f"userns-probe-{tag}-rw"
    made: list[str] = []

    def make() -> list[object]:
        storage.create(base, None)
        made.append(base)
        storage.apply_diff(base, None, io.BytesIO(_tiny_layer()))
        storage.create_rw(rw, base, {})
        made.append(rw)
        return list(storage.mounts(rw))

    def landed() -> str | None:
        root = storage.get(rw)
        try:
            st = os.lstat(os.path.join(root, IDMAP_PROBE_FILE))
        except OSError as exc:
            return f"the probe's file is missing from the layer ({exc.strerror})"
        finally:
            storage.put(rw)
        if (st.st_uid, st.st_gid) != (0, 0):
            return (f"a file the container's root wrote is owned by {st.st_uid}:{st.st_gid} "
                    "on disk, not 0:0")
        return None

    try:
        try:
            mounts = await engine.to_thread(make)
        except Exception as exc:
            return f"cannot make a test layer with {engine.storage_name}: {exc}"
        idmap = engine.remap.default
        reason = await runtime_probe(mounts, list(idmap.uids), list(idmap.gids))
        if reason is None:
            reason = await engine.to_thread(landed)
        return reason
    finally:
        for ident in reversed(made):
            with contextlib.suppress(Exception):
                await engine.to_thread(storage.remove, ident)


def _tiny_layer() -> bytes:
    """A base layer with one root-owned directory, as any image's base has."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("etc")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    return buf.getvalue()
