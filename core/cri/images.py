"""runtime.v1.ImageService on the engine's image store (the Docker API's own).

Names are the CRI's: fully qualified (``docker.io/library/busybox:latest``),
as containerd reports them, where the Docker API shows familiar ones.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

import grpc

from skiff.core.cri.runtime_v1 import api_pb2 as pb
from skiff.core.cri.runtime_v1 import api_pb2_grpc as rpc
from skiff.core.cri.service import Calls, fill_unimplemented
from skiff.core.errors import InvalidParameter
from skiff.core.images.distribution.auth import AuthConfig
from skiff.core.images.distribution.pull import pull
from skiff.core.images.errors import ImageNotFound, InvalidReference
from skiff.core.images.reference import familiar_string, parse

if TYPE_CHECKING:
    from skiff.core.engine import Engine
    from skiff.core.images.records import Image

SERVICE = "runtime.v1.ImageService"


def image_user(user: str) -> tuple[int | None, str]:
    """The CRI's (uid, username) of an image's ``User``: ``1002`` and ``1002:g``
    give a uid, ``www-data`` and ``www-data:g`` a username, "" neither."""
    name = user.partition(":")[0]
    if not name:
        return None, ""
    if name.isdigit():
        return int(name), ""
    return None, name


def image_message(engine: Engine, image: Image) -> pb.Image:
    refs = engine.images.references(image.id)
    cfg = image.config.get("config")
    uid, username = image_user(str((cfg or {}).get("User") or "") if isinstance(cfg, dict)
                               else "")
    msg = pb.Image(
        id=image.id,
        repo_tags=[str(r) for r in refs if r.digest is None],
        repo_digests=[str(r) for r in refs if r.digest is not None],
        size=engine.layers.size(image.top_layer),
        username=username,
        spec=pb.ImageSpec(image=image.id),
        pinned=False,
    )
    if uid is not None:
        msg.uid.value = uid
    return msg


def _find(engine: Engine, name: str) -> Image | None:
    """The image ``name`` designates, None when there is none (the CRI's
    status and remove answer "no image", not an error)."""
    if not name:
        raise InvalidParameter("the image name is empty")
    try:
        return engine.images.get(name)
    except ImageNotFound:
        return None


def auth_of(auth: pb.AuthConfig | None) -> AuthConfig | None:
    """The registry credentials of a PullImageRequest (kubelet's from the
    pod's pull secrets); ``auth`` is base64 ``user:password``."""
    if auth is None:
        return None
    username, password = auth.username, auth.password
    if auth.auth and not username:
        try:
            username, _, password = base64.b64decode(auth.auth).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidParameter(f"auth.auth is not base64 of user:password: {exc}") from None
    config = AuthConfig(username=username, password=password,
                        identitytoken=auth.identity_token, registrytoken=auth.registry_token,
                        serveraddress=auth.server_address)
    return None if config.empty else config


def disk_usage(root: str) -> tuple[int, int]:
    """Bytes (allocated blocks, each inode once) and inodes under ``root``."""
    seen: set[tuple[int, int]] = set()
    used = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(OSError):  # removed meanwhile
                st = os.lstat(os.path.join(dirpath, name))
                key = (st.st_dev, st.st_ino)
                if key not in seen:
                    seen.add(key)
                    used += st.st_blocks * 512
    return used, len(seen)


class ImageService(rpc.ImageServiceServicer):
    """Pull and remove run on the loop; ``ImageStatus`` and ``ListImages``
    answer on gRPC's thread (``Calls.read``), without the loop and without a
    worker thread: the image and layer stores are thread-safe (each behind
    its lock, written by pulls, loads, builds and removals in worker threads
    while the loop runs), and these read only their in-memory indexes (the
    image config file too for a verbose status, blocking this thread only)."""

    def __init__(self, engine: Engine, calls: Calls) -> None:
        self.engine = engine
        self.calls = calls

    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext
                   ) -> pb.ListImagesResponse:
        engine = self.engine
        wanted = request.filter.image.image if request.HasField("filter") else ""

        # on gRPC's thread (Calls.read): see the class's docstring
        def work() -> list[pb.Image]:
            if wanted:
                found = _find(engine, wanted)
                return [image_message(engine, found)] if found is not None else []
            return [image_message(engine, image) for image in engine.images.images()]

        return pb.ListImagesResponse(images=self.calls.read(context, "ListImages", work))

    def ImageStatus(self, request: pb.ImageStatusRequest, context: grpc.ServicerContext
                    ) -> pb.ImageStatusResponse:
        engine = self.engine
        name = request.image.image

        # on gRPC's thread (Calls.read): see the class's docstring
        def work() -> pb.ImageStatusResponse:
            image = _find(engine, name)
            if image is None:
                return pb.ImageStatusResponse()
            reply = pb.ImageStatusResponse(image=image_message(engine, image))
            if request.verbose:
                # as containerd: the image config, JSON, under "info"
                reply.info["info"] = engine.images.config_bytes(image.id).decode()
            return reply

        return self.calls.read(context, "ImageStatus", work)

    def PullImage(self, request: pb.PullImageRequest, context: grpc.ServicerContext
                  ) -> pb.PullImageResponse:
        engine = self.engine
        name = request.image.image
        auth = request.auth if request.HasField("auth") else None

        async def work() -> str:
            if not name:
                raise InvalidParameter("the image name is empty")
            ref = parse(name)  # no tag: latest, as kubelet means it
            image_id = await pull(engine.distribution, ref, auth_of(auth), lambda _msg: None)
            shown = familiar_string(ref)
            engine.events.publish("image", "pull", shown, {"name": shown})
            return image_id

        return pb.PullImageResponse(image_ref=self.calls.run(context, "PullImage", work))

    def RemoveImage(self, request: pb.RemoveImageRequest, context: grpc.ServicerContext
                    ) -> pb.RemoveImageResponse:
        engine = self.engine
        name = request.image.image

        def in_use(image_id: str) -> list[tuple[str, bool]]:
            return [(c.id, bool(c.state.Running))
                    for c in engine.containers.using_image(image_id)]

        async def work() -> None:
            def remove() -> None:
                image = _find(engine, name)
                if image is None:
                    return  # the CRI's RemoveImage is idempotent
                # every name of the image goes with it (kubelet's image GC removes by ID)
                try:
                    records = engine.images.delete(image.id, True, True, in_use)
                except (ImageNotFound, InvalidReference):
                    return  # removed meanwhile
                for r in records:
                    if "Deleted" in r:
                        engine.events.publish("image", "delete", r["Deleted"],
                                              {"name": r["Deleted"]})
            await engine.to_thread(remove)

        self.calls.run(context, "RemoveImage", work)
        return pb.RemoveImageResponse()

    def ImageFsInfo(self, request: pb.ImageFsInfoRequest, context: grpc.ServicerContext
                    ) -> pb.ImageFsInfoResponse:
        engine = self.engine
        home = os.path.join(engine.data_root, engine.storage_name)

        async def work() -> pb.ImageFsInfoResponse:
            used, inodes = await engine.to_thread(disk_usage, home)
            usage: dict[str, Any] = {
                "timestamp": time.time_ns(),
                "fs_id": pb.FilesystemIdentifier(mountpoint=home),
                "used_bytes": pb.UInt64Value(value=used),
                "inodes_used": pb.UInt64Value(value=inodes),
            }
            return pb.ImageFsInfoResponse(image_filesystems=[pb.FilesystemUsage(**usage)])

        return self.calls.run(context, "ImageFsInfo", work)


IMPLEMENTED = ("ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo")
UNIMPLEMENTED = fill_unimplemented(ImageService, rpc.ImageServiceServicer, SERVICE)
