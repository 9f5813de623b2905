"""The ``cgroupfs`` cgroup driver's registration: v1 or v2, as the host has.

Like Docker's ``cgroupfs`` driver, each container gets a group named after its
id under the daemon's ``cgroup-parent`` (default ``skiff``), written straight
to cgroupfs by one of two drivers behind a shared base
(``cgroupfs_base.CgroupfsBase``):

* ``cgroupfs_v1.CgroupfsV1``: one hierarchy per controller (as on this machine);
* ``cgroupfs_v2.CgroupfsV2``: the unified hierarchy
  (``/sys/fs/cgroup/cgroup.controllers`` exists).

Both register under the one name ``cgroupfs`` (``exec-opts
native.cgroupdriver=cgroupfs``); the factory picks the version.  Docker's
checks of the resource fields are core's (``skiff.core.containers.limits``).
"""

from __future__ import annotations

from skiff.core.hookspecs import CgroupContext, hookimpl
from skiff.plugins.limits.cgroupfs_base import NAME, cgroup_version
from skiff.plugins.limits.cgroupfs_v1 import CgroupfsV1
from skiff.plugins.limits.cgroupfs_v2 import CgroupfsV2


def cgroupfs_factory(ctx: CgroupContext) -> CgroupfsV1 | CgroupfsV2:
    """The driver for this host's cgroup layout (v2 if unified, else v1)."""
    parent = ctx.parent or "skiff"
    if cgroup_version() == 2:
        return CgroupfsV2(parent, parent_of=ctx.parent_of, state_dir=ctx.state_dir)
    return CgroupfsV1(parent, parent_of=ctx.parent_of, state_dir=ctx.state_dir)


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.0"


@hookimpl
def skiff_cgroup_drivers() -> dict[str, object]:
    return {NAME: cgroupfs_factory}
