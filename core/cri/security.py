"""What the CRI's security profiles become in Docker's SecurityOpt."""

from __future__ import annotations

import os

from skiff.core.cri.runtime_v1 import api_pb2 as pb
from skiff.core.errors import InvalidParameter


def seccomp_opts(sc: pb.LinuxContainerSecurityContext | pb.LinuxSandboxSecurityContext
                 ) -> list[str]:
    """Docker's SecurityOpt of a CRI seccomp profile: none given (nil) or
    Unconfined is no filter, as the CRI defines it (kubelet asks for
    RuntimeDefault when the pod wants one); RuntimeDefault is skiff's default
    profile; Localhost the file's JSON (kubelet names a file on this host, read
    here as the docker CLI reads ``--security-opt seccomp=FILE``; a profile of
    Docker's format)."""
    if not sc.HasField("seccomp"):
        return ["seccomp=unconfined"]
    profile = sc.seccomp
    if profile.profile_type == pb.SecurityProfile.Unconfined:
        return ["seccomp=unconfined"]
    if profile.profile_type != pb.SecurityProfile.Localhost:
        return []
    path = profile.localhost_ref
    if not os.path.isabs(path):
        raise InvalidParameter(f"seccomp localhost_ref {path!r} must be an absolute path")
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20).decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidParameter(f"seccomp localhost_ref {path!r}: cannot read it: {exc}"
                               ) from None
    return [f"seccomp={text}"]
