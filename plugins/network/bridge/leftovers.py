"""What a crashed daemon left of its bridge networks, found and removed at start.

Several daemons may share a network namespace (tests do, and so may a host
running two data-roots), so a bridge named like skiff's is not necessarily
this daemon's: each bridge carries its data-root in its alias
(``ifalias``), and only bridges with this daemon's mark are judged.  A veth
(``skfv...``) on one of this daemon's bridges is a leftover at start: without
live-restore no endpoint outlives its daemon.  A rule tagged
``skiff:<bridge>`` for a bridge that no longer exists matches nothing and
belongs to no live network, whoever made it, since a bridge is made before its
rules and its rules go before it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import Protocol

from skiff.plugins.network.bridge import links

#: the host side of an endpoint's veth pair (driver.py names them)
VETH_PREFIX = "skfv"


class Rules(Protocol):
    def tags(self) -> set[str]: ...

    def purge(self, tag: str, drop_chains: bool = False) -> None: ...


def owner_mark(data_root: str) -> str:
    # IFLA_IFALIAS holds up to 255 bytes: a longer data-root is cut, still ours
    return ("skiff " + data_root)[:255]


class Intents:
    """Bridges this daemon is about to add, one empty file each under its
    exec-root: the alias that marks a bridge as ours is set after the bridge
    exists, so a bridge added by a daemon killed before the alias is proved
    ours by its intent instead.  On the exec-root: a reboot takes the bridges
    and the intents alike."""

    def __init__(self, exec_root: str) -> None:
        self.root = os.path.join(exec_root, "network", "bridge-intents")

    def begin(self, bridge: str) -> None:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.root, bridge), os.O_CREAT | os.O_WRONLY, 0o600)
        os.fsync(fd)  # the tmpfs makes this cheap; a disk exec-root needs it
        os.close(fd)

    def done(self, bridge: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.root, bridge))

    def pending(self) -> set[str]:
        try:
            return set(os.listdir(self.root))
        except FileNotFoundError:
            return set()


def reconcile(data_root: str, bridges: set[str], firewalls: Iterable[Rules],
              keep_paired: bool = False, intents: Intents | None = None) -> list[str]:
    """Remove this daemon's veths and bridges that no network in ``bridges`` (the
    bridges of the networks that exist) uses, and rules of bridges that are gone.
    ``keep_paired`` (live-restore): a veth whose peer is in another namespace
    is a running container's and stays.  ``intents``: bridges whose add was
    begun, ours even without the alias (a kill before it was set)."""
    mark = owner_mark(data_root)
    begun = intents.pending() if intents is not None else set()
    gone: list[str] = []
    with links.Rtnl() as rtnl:
        found = rtnl.links()
        names = {link.index: link.name for link in found}
        ours = {link.name for link in found
                if link.alias == mark or (link.name in begun and link.alias is None)}
        for link in found:
            master = names.get(link.master if link.master is not None else -1)
            if keep_paired and link.netnsid is not None:
                continue
            if link.name.startswith(VETH_PREFIX) and (master in bridges or master in ours):
                with contextlib.suppress(OSError):
                    rtnl.delete(link.index)
                    gone.append(f"veth {link.name}")
        for link in found:
            if link.name in ours and link.name not in bridges:
                with contextlib.suppress(OSError):
                    rtnl.delete(link.index)
                    gone.append(f"bridge {link.name}")
        present = {link.name for link in rtnl.links()}
    if intents is not None:
        for bridge in begun:  # judged above: gone, or a network's and marked again
            intents.done(bridge)
    for fw in firewalls:
        for tag in sorted(fw.tags() - present):
            fw.purge(tag)
            gone.append(f"rules skiff:{tag}")
    return gone
