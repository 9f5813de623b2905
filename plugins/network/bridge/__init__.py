"""The ``bridge`` network driver package: driver, IPAM, firewall and embedded DNS."""

from __future__ import annotations

from skiff.core.hookspecs import hookimpl
from skiff.plugins.network.bridge.driver import NAME, BridgeNetworkDriver

#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.11"


@hookimpl
def skiff_network_drivers() -> dict[str, object]:
    return {NAME: BridgeNetworkDriver}
