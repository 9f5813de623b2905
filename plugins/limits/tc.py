"""The ``tc`` traffic shaper: per-endpoint bandwidth limits with the kernel's
queueing disciplines, through rtnetlink requests of its own (``tcnetlink``:
batched on one socket per daemon; no ``tc`` process, no pyroute2 on this path).

Both directions are shaped on the host side of the endpoint's link (the
host end of the veth), as the container cannot undo what is there:

* **ingress** (traffic arriving at the container) leaves the host through
  that interface: a TBF is its root qdisc (rate, burst, latency);
* **egress** (traffic leaving the container) arrives at the host through it,
  where only a policer could act on it.  Every packet is redirected instead
  (an ``ingress`` qdisc, a u32 match-all filter with a ``mirred`` action) to
  an IFB device of the endpoint's own, whose root is a TBF: the packets are
  queued and paced, not dropped, so TCP sees a steady rate.  The IFB is named
  ``skfi`` + a digest of the interface's name, so a daemon that crashed
  leaves nothing the next one cannot tell from a live IFB.

Measured (8 Mbit/s over 3 s, veth pair, TCP payload counted): both TBFs give
7.7 Mbit/s, the 4 % below the rate being the frames' headers.  A policer
(``act_police``) is not built into every kernel (this project's CI kernel
has none), and one drops what exceeds the rate, which TCP answers with a
sawtooth; it is not used.

The queues on the interface go when the interface is deleted (the network
driver's ``leave``); ``left`` has the IFB deleted (in the background: see
``TcShaper``).  Set-up cost (issue 20): both directions ~1 ms at the shaper,
ingress alone ~0.4 ms, against 6-14 ms and 2.3-2.6 ms through pyroute2 (docs/limits.md).
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from skiff.core.hookspecs import (
    NET_RATE_KEYS,
    NET_RATE_PREFIX,
    ShapedEndpoint,
    TrafficShaperContext,
    hookimpl,
)
from skiff.plugins.limits import tcnetlink as nl
from skiff.plugins.limits.tcunits import parse_rate, parse_size, parse_time

log = structlog.get_logger("skiff.limits.tc")

NAME = "tc"
IFB_PREFIX = "skfi"
#: a TBF's queue holds this much time of traffic unless a latency is given
DEFAULT_LATENCY_US = 50_000
#: a burst of 10 ms of traffic (at least 4 kb): small enough that the first
#: burst does not show in a measured rate, big enough for the kernel's timers
DEFAULT_BURST_SECONDS = 0.01
MIN_DEFAULT_BURST = 4096


@dataclass(frozen=True)
class Tbf:
    """One direction's token bucket."""

    rate: int  #: bits per second
    burst: int  #: bytes
    latency: int  #: microseconds

    def kwargs(self) -> dict[str, Any]:
        # tcnetlink.add_tbf takes the rate in bytes per second and the
        # latency in microseconds
        return {"rate": self.rate // 8, "burst": self.burst, "latency": self.latency}


def check(rates: Mapping[str, str]) -> None:
    """Every key known and every value in tc's units; ``ValueError`` naming the key."""
    for key, value in rates.items():
        if key not in NET_RATE_KEYS:
            raise ValueError(f"unknown bandwidth option {key!r}: the {NET_RATE_PREFIX}* options "
                             f"are {', '.join(NET_RATE_KEYS)}")
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, e.g. {key}=10mbit")
        kind = key.rsplit("-", 1)[1]
        if kind == "rate":
            parse_rate(key, value)
        elif kind == "burst":
            parse_size(key, value)
        else:
            parse_time(key, value)


def bucket(rates: Mapping[str, str], direction: str) -> Tbf | None:
    """The TBF of ``direction`` ("egress" or "ingress"), None without a rate."""
    key = f"{NET_RATE_PREFIX}{direction}"
    value = rates.get(f"{key}-rate")
    rate = parse_rate(f"{key}-rate", value) if value else None
    if rate is None:
        return None
    burst_text = rates.get(f"{key}-burst")
    burst = (parse_size(f"{key}-burst", burst_text) if burst_text
             else max(MIN_DEFAULT_BURST, int(rate / 8 * DEFAULT_BURST_SECONDS)))
    latency_text = rates.get(f"{key}-latency")
    latency = parse_time(f"{key}-latency", latency_text) if latency_text else DEFAULT_LATENCY_US
    return Tbf(rate, burst, latency)


def ifb_name(host_interface: str) -> str:
    """The IFB of an interface: 15 characters at most, as the kernel allows."""
    return IFB_PREFIX + hashlib.sha256(host_interface.encode()).hexdigest()[:11]


class TcShaper:
    """TBFs on the host side of each endpoint, and an IFB for what it sends.

    Deleting a network device waits for the kernel's RCU grace periods (about
    20 ms here), so an IFB is deleted by a thread of the shaper's own, after
    ``left`` returned: a container's stop does not wait for it.  ``close``
    waits for what is queued (daemon shutdown); a daemon killed before that
    leaves IFBs the next one's ``purge`` finds.
    """

    name = NAME

    def __init__(self, ctx: TrafficShaperContext) -> None:
        self.ctx = ctx
        self._doomed: queue.Queue[str | None] = queue.Queue()
        self._reaper: threading.Thread | None = None
        self._lock = threading.Lock()
        self._socket: nl.Rtnl | None = None

    def validate(self, rates: Mapping[str, str]) -> None:
        check(rates)

    def joined(self, endpoint: ShapedEndpoint) -> None:
        self._apply(endpoint, fresh=True)

    def changed(self, endpoint: ShapedEndpoint) -> None:
        self._apply(endpoint, fresh=False)

    def left(self, endpoint: ShapedEndpoint) -> None:
        if endpoint.host_interface:
            self._delete_later(ifb_name(endpoint.host_interface))

    def close(self) -> None:
        """Finish the deletions queued (the daemon is stopping)."""
        with self._lock:
            reaper, self._reaper = self._reaper, None
        if reaper is not None:
            self._doomed.put(None)
            reaper.join(timeout=30)
        with self._lock:
            sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    # -- the work -----------------------------------------------------------------

    def _rtnl(self) -> nl.Rtnl:
        """The shaper's netlink socket, opened at first use (one per daemon)."""
        with self._lock:
            if self._socket is None:
                self._socket = nl.Rtnl()
            return self._socket

    def _apply(self, endpoint: ShapedEndpoint, fresh: bool) -> None:
        """``fresh``: the interface was just made, it has no queues to look at."""
        egress = bucket(endpoint.rates, "egress")
        ingress = bucket(endpoint.rates, "ingress")
        host_if = endpoint.host_interface
        if not host_if:
            if egress or ingress:
                raise ValueError(f"network {endpoint.network_name}'s driver gives its endpoints "
                                 "no host interface: it cannot be shaped")
            return
        try:
            index = socket.if_nametoindex(host_if)
        except OSError:
            raise LookupError(f"interface {host_if} of network {endpoint.network_name} "
                              "is gone") from None
        rtnl = self._rtnl()
        if fresh:
            self._fresh(rtnl, index, host_if, egress, ingress)
        else:
            self._change(rtnl, index, host_if, egress, ingress)
        if egress or ingress:
            log.debug("tc.applied", interface=host_if, egress=egress, ingress=ingress)

    def _fresh(self, rtnl: nl.Rtnl, index: int, host_if: str, egress: Tbf | None,
               ingress: Tbf | None) -> None:
        """A new interface: no queues to look at, and two batches at most (the
        redirect needs the IFB's index, known once it exists)."""
        first: list[nl.Request] = []
        if ingress is not None:
            first.append(nl.add_tbf(index, **ingress.kwargs()))
        name = ifb_name(host_if)
        if egress is not None:
            first += [nl.add_ifb(name), nl.add_ingress(index)]
        errors = rtnl.run(first)
        if ingress is not None and errors[0]:
            raise nl.NetlinkError(errors[0], f"tbf on {host_if}: {os.strerror(errors[0])}")
        if egress is None:
            return
        ifb_err, ingress_err = errors[-2:]
        if ingress_err:
            raise nl.NetlinkError(ingress_err, f"ingress qdisc on {host_if}: "
                                  f"{os.strerror(ingress_err)}")
        if ifb_err == errno.EEXIST:  # an earlier life's (a crash): its queue may be there
            self._root_tbf(rtnl, socket.if_nametoindex(name), egress, fresh=False)
            rtnl.check([nl.add_redirect(index, socket.if_nametoindex(name))],
                       f"redirect of {host_if}")
            return
        if ifb_err:
            raise nl.NetlinkError(ifb_err, f"ifb {name}: {os.strerror(ifb_err)}")
        ifb = socket.if_nametoindex(name)
        rtnl.check([nl.add_tbf(ifb, **egress.kwargs()), nl.add_redirect(index, ifb)],
                   f"egress shaping of {host_if}")

    def _change(self, rtnl: nl.Rtnl, index: int, host_if: str, egress: Tbf | None,
                ingress: Tbf | None) -> None:
        kinds = rtnl.qdisc_kinds(index)
        self._root_tbf(rtnl, index, ingress, fresh=False, kinds=kinds)
        name = ifb_name(host_if)
        redirected = kinds.get(nl.TC_H_INGRESS) == "ingress"
        if egress is None:
            if redirected:
                rtnl.check([nl.del_ingress(index)], f"ingress qdisc of {host_if}")
            self._drop_ifb(rtnl, name)
            return
        try:
            ifb = socket.if_nametoindex(name)
        except OSError:
            rtnl.check([nl.add_ifb(name)], f"ifb {name}")
            ifb = socket.if_nametoindex(name)
            rtnl.check([nl.add_tbf(ifb, **egress.kwargs())], f"tbf on {name}")
        else:
            self._root_tbf(rtnl, ifb, egress, fresh=False)
        if not redirected:
            rtnl.check([nl.add_ingress(index), nl.add_redirect(index, ifb)],
                       f"redirect of {host_if}")

    @staticmethod
    def _root_tbf(rtnl: nl.Rtnl, index: int, tbf: Tbf | None, fresh: bool,
                  kinds: dict[int, str] | None = None) -> None:
        # A TBF changed in place keeps its queue, and a queued packet longer
        # than the new burst never gets the tokens to leave: the interface
        # stalls for good (seen going from 8 to 2 Mbit/s with a 9 kB GSO
        # packet queued).  So a change is a new TBF; the old queue is dropped
        # and TCP sends it again.
        batch: list[nl.Request] = []
        if not fresh:
            if kinds is None:
                kinds = rtnl.qdisc_kinds(index)
            if kinds.get(nl.TC_H_ROOT) == "tbf":
                batch.append(nl.del_root(index))
        if tbf is not None:
            batch.append(nl.add_tbf(index, **tbf.kwargs()))
        rtnl.check(batch, f"tbf on interface {index}")

    @staticmethod
    def _drop_ifb(rtnl: nl.Rtnl, name: str) -> None:
        # ENODEV: gone meanwhile
        err = rtnl.run([nl.del_link(name)])[0]
        if err not in (0, errno.ENODEV):
            raise nl.NetlinkError(err, f"deleting {name}: {os.strerror(err)}")

    def _delete_later(self, name: str) -> None:
        with self._lock:
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="tc-ifb-reaper",
                                                daemon=True)
                self._reaper.start()
            self._doomed.put(name)

    def _reap(self) -> None:
        # a socket of the reaper's own: a deletion waits ~20 ms for RCU, and
        # the shaper's socket must not be held meanwhile
        rtnl = nl.Rtnl()
        try:
            while True:
                name = self._doomed.get()
                if name is None:
                    return
                try:
                    self._drop_ifb(rtnl, name)
                except Exception as exc:  # the next daemon's purge finds it
                    log.warning("tc.ifb_delete_failed", ifb=name, error=str(exc))
        finally:
            rtnl.close()

    def purge(self) -> None:
        """Delete the IFBs whose interface is gone (a daemon that crashed):
        an IFB's name is a digest of its interface's, so one whose name no
        interface here gives is an orphan."""
        try:
            names = [name for _, name in socket.if_nameindex()]
            owned = {ifb_name(n) for n in names if not n.startswith(IFB_PREFIX)}
            for name in names:
                if name.startswith(IFB_PREFIX) and name not in owned:
                    log.warning("tc.leftover_ifb_removed", ifb=name)
                    self._drop_ifb(self._rtnl(), name)
        except Exception as exc:
            log.warning("tc.purge_failed", error=str(exc))


def tc_factory(ctx: TrafficShaperContext) -> TcShaper:
    shaper = TcShaper(ctx)
    shaper.purge()
    return shaper


#: the plugin contract this module was written for; the loader refuses another major
SKIFF_CONTRACT = "2.6"


@hookimpl
def skiff_traffic_shapers() -> dict[str, object]:
    return {NAME: tc_factory}
