"""What the CRI's security profiles become in Docker's SecurityOpt."""

from __future__ import annotations

import os

from skiff.core.cri.runtime_v1 import api_pb2 as pb
from skiff.core.errors import InvalidParameter


def seccomp_opts(profile: pb.SecurityProfile) -> list[str]:
    """Docker's SecurityOpt of a CRI seccomp profile: RuntimeDefault is skiff's
    default profile, Unconfined none, Localhost the file's JSON (kubelet names
    a file on this host, read here as the docker CLI reads ``--security-opt
    seccomp=FILE``; a profile of Docker's format)."""
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
