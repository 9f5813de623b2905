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
from collections.abc import Iterable
from typing import Protocol

#: the host side of an endpoint's veth pair (driver.py names them)
VETH_PREFIX = "skfv"


class Rules(Protocol):
    def tags(self) -> set[str]: ...

    def purge(self, tag: str, drop_chains: bool = False) -> None: ...


def owner_mark(data_root: str) -> str:
    # IFLA_IFALIAS holds up to 255 bytes: a longer data-root is cut, still ours
    return ("skiff " + data_root)[:255]


def reconcile(data_root: str, bridges: set[str], firewalls: Iterable[Rules],
              keep_paired: bool = False) -> list[str]:
    """Remove this daemon's veths and bridges that no network in ``bridges`` (the
    bridges of the networks that exist) uses, and rules of bridges that are gone.
    ``keep_paired`` (live-restore): a veth whose peer is in another namespace
    is a running container's and stays."""
    from pyroute2 import IPRoute

    mark = owner_mark(data_root)
    gone: list[str] = []
    with IPRoute() as ipr:
        links = ipr.get_links()
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
        ours = {names[link["index"]] for link in links
                if link.get_attr("IFLA_IFALIAS") == mark}
        for link in links:
            name = names[link["index"]]
            master = names.get(link.get_attr("IFLA_MASTER") or -1)
            if keep_paired and link.get_attr("IFLA_LINK_NETNSID") is not None:
                continue
            if name.startswith(VETH_PREFIX) and (master in bridges or master in ours):
                with contextlib.suppress(Exception):
                    ipr.link("del", index=link["index"])
                    gone.append(f"veth {name}")
        for link in links:
            name = names[link["index"]]
            if name in ours and name not in bridges:
                with contextlib.suppress(Exception):
                    ipr.link("del", index=link["index"])
                    gone.append(f"bridge {name}")
        present = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    for fw in firewalls:
        for tag in sorted(fw.tags() - present):
            fw.purge(tag)
            gone.append(f"rules skiff:{tag}")
    return gone
