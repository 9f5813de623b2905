"""The ``overlay`` network driver package: VXLAN networks across the cluster's nodes."""

from __future__ import annotations

from skiff.core.hookspecs import hookimpl
from skiff.plugins.network.overlay.driver import NAME, OverlayDriver

#: the plugin contract this module was written for (ClusterAccess: 2.10)
SKIFF_CONTRACT = "2.10"


@hookimpl
def skiff_network_drivers() -> dict[str, object]:
    return {NAME: OverlayDriver}
