"""The engine: the configured drivers and the services built on them.

One engine per daemon.  It picks each driver from ``daemon.json`` through the
plugin manager (refusing to start when one is missing or cannot work here),
and owns the image store, layer store and container manager.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
import trio

from skiff.core import metrics, reconcile, userns_storage
from skiff.core.builder.cache import BuildCache
from skiff.core.builder.contextstream import tmpfs_dir
from skiff.core.builder.rootfs import BUILD_LAYER_PREFIX
from skiff.core.builder.services import BuildServices
from skiff.core.builder.statindex import StatIndex
from skiff.core.cluster import settings as cluster_settings
from skiff.core.cluster.access import DriverClusterAccess
from skiff.core.cluster.globalnets import GlobalNetworks
from skiff.core.cluster.membership import ClusterMembership
from skiff.core.config import ConfigError, exec_options, storage_options
from skiff.core.containers import logdelivery
from skiff.core.containers.archive import ContainerFiles
from skiff.core.containers.cgroupprime import CgroupPrimer
from skiff.core.containers.exec import ExecManager
from skiff.core.containers.health import HealthMonitor
from skiff.core.containers.healthprobe import ExecProbe
from skiff.core.containers.manager import ContainerManager
from skiff.core.containers.netns import CONTAINER_PREFIX
from skiff.core.containers.netrates import Shaping
from skiff.core.containers.registry import ContainerRegistry
from skiff.core.containers.userns import RangeAllocator
from skiff.core.engineid import engine_id
from skiff.core.events import EventBus
from skiff.core.hookspecs import (
    CgroupContext,
    CgroupDriver,
    DriverNotSupported,
    NetworkContext,
    NetworkDriver,
    Runtime,
    RuntimeContext,
    StorageContext,
    StorageDriver,
    TrafficShaper,
    TrafficShaperContext,
)
from skiff.core.images.distribution.context import DistributionContext
from skiff.core.images.distribution.endpoints import RegistryConfig
from skiff.core.images.distribution.pull import pull
from skiff.core.images.layers import LayerStore
from skiff.core.images.migrate import (
    drivers_with_layers,
    hold_data_root,
    read_choice,
    read_marker,
    remember_choice,
)
from skiff.core.images.reference import parse as parse_reference
from skiff.core.images.store import ImageStore
from skiff.core.networks import Network, NetworkStore, NoSuchNetwork
from skiff.core.plugins import Plugins
from skiff.core.userns import Remap, RemapError
from skiff.core.userns import resolve as resolve_remap
from skiff.core.volumes.store import VolumeStore

log = structlog.get_logger("skiff.engine")

#: seconds the start waits for the cluster store's first answer
STORE_WAIT = 10.0

T = TypeVar("T")

#: the order in which storage drivers are tried when daemon.json names none
STORAGE_PREFERENCE = ("overlay2", "btrfs", "aufs", "vfs")
#: worker threads for blocking driver calls (mounts, tar, copies)
THREADS = 16
#: worker threads for transfers paced by someone else (a client's upload or
#: download, a registry): they may wait for ever, so they never take THREADS
TRANSFER_THREADS = 64


def select_storage(config: dict[str, Any], plugins: Plugins) -> tuple[str, StorageDriver]:
    """The configured storage driver, or the data-root's own, or the best that works here.

    Like Docker: with no ``storage-driver`` configured, a data-root that holds
    one driver's layers keeps that driver ("prior storage driver"), and one
    holding several drivers' layers is refused.  skiff also remembers the
    choice in ``<data-root>/storage-driver`` and refuses a configured driver
    when the data-root holds only another driver's layers, pointing to
    ``skiff storage migrate`` instead of starting with no images.
    """
    data_root = config["data-root"]
    os.makedirs(data_root, mode=0o711, exist_ok=True)
    hold_data_root(data_root)
    found = drivers_with_layers(data_root)
    remembered = read_choice(data_root)
    marker = read_marker(data_root)

    def build(name: str) -> StorageDriver:
        factory = plugins.factory("storage", name)
        home = os.path.join(data_root, name)
        return factory(StorageContext(home=home, data_root=data_root,
                                      options=storage_options(config, name)))

    def chosen(name: str, driver: StorageDriver) -> tuple[str, StorageDriver]:
        remember_choice(data_root, name)
        others = [d for d in found if d != name]
        if marker is not None:
            log.warning("storage.migration_unfinished", driver=name, migration=marker,
                        hint=f"run 'skiff storage migrate --to {marker.get('to')}' with "
                             "skiffd stopped to finish or redo it")
        elif others:
            log.warning("storage.other_driver_layers", driver=name, others=others,
                        hint="left by 'skiff storage migrate --keep-old'? delete "
                             "image/<driver> and <driver> in the data-root when unneeded")
        return name, driver

    name = config["storage-driver"]
    if name:
        if marker is not None and name == marker.get("to") and remembered != name:
            raise ConfigError(
                f"a storage migration from {marker.get('from')} to {name} on {data_root} was "
                f"interrupted; run 'skiff storage migrate --to {name}' again to finish it, or "
                f"set storage-driver to {marker.get('from')!r}"
            )
        others = [d for d in found if d != name]
        if others and name not in found:
            raise ConfigError(
                f"{config['config-file']}: storage-driver is {name!r} but the data-root "
                f"{data_root} holds layers of {', '.join(others)} and none of {name}; "
                f"move them with 'skiff storage migrate --to {name}' (skiffd stopped), or "
                f"set storage-driver to {others[0]!r}"
            )
        try:
            return chosen(name, build(name))
        except LookupError as exc:
            raise ConfigError(f"{config['config-file']}: storage-driver: {exc}") from exc
        except DriverNotSupported as exc:
            raise ConfigError(
                f"storage driver {name!r} cannot be used on this machine: {exc}"
            ) from exc
    prior: str | None = None
    if remembered and (remembered in found or not found):
        prior, why = remembered, "remembered"
    elif len(found) == 1:
        prior, why = found[0], "layers in data-root"
    elif len(found) > 1:
        raise ConfigError(
            f"the data-root {data_root} holds layers of several storage drivers "
            f"({', '.join(found)}); set storage-driver in {config['config-file']} to the "
            "one to use"
        )
    if prior is not None:
        try:
            driver = build(prior)
        except LookupError as exc:
            raise ConfigError(
                f"the data-root {data_root} uses storage driver {prior!r}, which is not "
                f"installed: {exc}"
            ) from exc
        except DriverNotSupported as exc:
            raise ConfigError(
                f"the data-root {data_root} uses storage driver {prior!r}, which cannot "
                f"be used on this machine: {exc}; migrate it elsewhere or set storage-driver"
            ) from exc
        log.info("storage.prior_driver", driver=prior, reason=why,
                 hint="set storage-driver in daemon.json to choose")
        return chosen(prior, driver)
    reasons = []
    installed = plugins.drivers.get("storage", {})
    for candidate in STORAGE_PREFERENCE:
        if candidate not in installed:
            continue
        try:
            driver = build(candidate)
        except DriverNotSupported as exc:
            reasons.append(f"{candidate}: {exc}")
            continue
        log.info("storage.auto_selected", driver=candidate, skipped=reasons or None,
                 hint="set storage-driver in daemon.json to choose")
        return chosen(candidate, driver)
    raise ConfigError(
        "no usable storage driver found; tried " + "; ".join(reasons or ["nothing installed"])
    )


class _Phases:
    """Seconds per step of the engine's start, logged at debug: where a slow
    start goes (benchmarks/daemonstart.py times the whole of it)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = round(now - self._last, 4)
        self._last = now


class Engine:
    """Drivers and services of one daemon; handlers reach everything through it."""

    def __init__(self, config: dict[str, Any], plugins: Plugins) -> None:
        self.config = config
        self.plugins = plugins
        self.data_root: str = config["data-root"]
        self.exec_root: str = config["exec-root"]
        self.limiter = trio.CapacityLimiter(THREADS)
        #: threads of client- or registry-paced transfers (load, save, import,
        #: export, cp, blob up/downloads); see ``transfer_thread``
        self.transfers = trio.CapacityLimiter(TRANSFER_THREADS)
        self.nursery: trio.Nursery
        self.events = EventBus()
        #: the container records, which the volume and network stores count
        #: their users in: built first, so every store can be given it
        self.registry = ContainerRegistry(self.events.publish)
        self._networks: dict[str, NetworkDriver] = {}
        #: daemon.json ``userns-remap`` resolved (None: containers run unremapped)
        self.remap: Remap | None = None
        if config["userns-remap"]:
            try:
                self.remap = resolve_remap(config["userns-remap"])
            except RemapError as exc:
                raise ConfigError(f"{config['config-file']}: {exc}") from exc
            # As dockerd: a data-root of its own per remapped root, so the
            # images and containers of a remapped daemon and an unremapped
            # one never mix.  Everything below sees only that one.
            os.makedirs(self.data_root, mode=0o711, exist_ok=True)
            self.data_root = os.path.join(self.data_root, self.remap.root_dir_name)
            self.config = config = {**config, "data-root": self.data_root}
            log.info("userns.remap", user=self.remap.user, group=self.remap.group,
                     uids=self.remap.default.ranges_text(), data_root=self.data_root,
                     auto_blocks=len(self.remap.auto_blocks))
        try:
            plugins.hook.skiff_daemon_config_check(config=config)
        except ValueError as exc:
            raise ConfigError(f"{config.get('config-file', 'daemon.json')}: {exc}") from exc
        #: bandwidth limits: the traffic shaper (tc), or why there is none; before
        #: anything is made, so a bad default-net-rates leaves nothing behind
        self.shaping = self._build_shaping()
        for path in (self.data_root, self.exec_root, os.path.join(self.exec_root, "containers")):
            os.makedirs(path, mode=0o711, exist_ok=True)
        #: daemon.json ``cluster-store``: this node's registration (None: no store)
        self.cluster = self._build_cluster()
        #: how a remapped container sees its layers: "idmap" (idmapped mounts)
        #: or "chown" (chowned copies); decided in ``start``
        self.userns_storage = ""
        self.userns_storage_reason = ""
        self.userns_ranges: RangeAllocator | None = None
        if self.remap is not None:
            try:
                self.userns_ranges = RangeAllocator(self.data_root, self.remap.auto_blocks)
            except RuntimeError as exc:
                raise ConfigError(str(exc)) from exc

        self.storage_name, self.storage = select_storage(config, plugins)
        self.layers = LayerStore(
            self.data_root, self.storage_name, self.storage,
            pinned_copies=[self.remap.root_dir_name] if self.remap is not None else [])
        self.images = ImageStore(self.data_root, self.storage_name, self.layers)
        self.distribution = DistributionContext(
            self.images, self.layers, lambda: RegistryConfig.from_daemon_config(self.config),
            self.to_thread, self.transfer_thread)
        self.runtime_name = config["default-runtime"]
        self.runtime: Runtime = self._build(
            "isolation", self.runtime_name, "default-runtime",
            RuntimeContext(exec_root=self.exec_root, options=exec_options(config)),
        )
        self.cgroup_driver_name = exec_options(config).get("native.cgroupdriver", "cgroupfs")
        self.cgroups: CgroupDriver | None = self._build(
            "limits", self.cgroup_driver_name, "exec-opts native.cgroupdriver",
            CgroupContext(parent=config["cgroup-parent"], parent_of=self._cgroup_parent_of,
                          state_dir=os.path.join(self.exec_root, "cgroups")),
        )
        # Fail at start, not at the first container, when the log driver is absent.
        if config["log-driver"] != "none":  # none keeps nothing: no driver to find
            self._check_installed("logging", config["log-driver"], "log-driver")
        self.volumes = VolumeStore(
            self.data_root, lambda name: plugins.factory("volume", name), self.registry.by_id,
            self.events.publish,
            default_owner=((self.remap.default.root_uid, self.remap.default.root_gid)
                           if self.remap is not None else None))
        self.volumes.load()
        #: what docker cp reaches a container's files through
        self.container_files = ContainerFiles(
            self.storage, self.volumes.driver, os.path.join(self.data_root, "tmp"))
        self.networks = NetworkStore(
            self.data_root, self.config, self.network_driver_named,
            lambda driver: driver in plugins.drivers.get("network", {}), self.registry.by_id)
        #: global-scope networks shared through the cluster store (None: no store)
        self.global_networks: GlobalNetworks | None = None
        if self.cluster is not None:
            self.networks.require_store = self.cluster.require
            self.global_networks = GlobalNetworks(
                self.cluster, self.networks, self.to_thread,
                lambda action, net: self.events.publish(
                    "network", action, net.id, {"name": net.name, "type": net.driver}))
        #: the kernel's wait for a move into a group, paid ahead (contract 2.18)
        prime = CgroupPrimer(self.cgroups, self.to_thread, self.spawn)
        # last: the manager takes the stores and drivers above as its collaborators
        self.containers = ContainerManager(
            self.registry, data_root=self.data_root, config=self.config,
            exec_root=self.exec_root, plugins=plugins, images=self.images, layers=self.layers,
            storage=self.storage, storage_name=self.storage_name, runtime=self.runtime,
            cgroups=self.cgroups, volumes=self.volumes, networks=self.networks,
            network_driver=self.network_driver, resolve_network_mode=self.resolve_network_mode,
            remap=self.remap, userns_ranges=self.userns_ranges,
            userns_storage=lambda: self.userns_storage, publish=self.events.publish,
            to_thread=self.to_thread, spawn=self.spawn, shaping=self.shaping, prime=prime)
        self.execs = ExecManager(self.registry, self.runtime, self.runtime_name, self.cgroups,
                                 self.to_thread, self.spawn, prime)
        #: healthchecks: follows the containers' start and die events, probes as execs
        self.health = HealthMonitor(self.registry, ExecProbe(self.execs), self.spawn)
        builder_root = os.path.join(self.data_root, "builder")
        #: digests of the build contexts' files by their stat (the fast path)
        self.stat_index = StatIndex(os.path.join(builder_root, "statindex.json"))
        self.builds = BuildServices(
            containers=self.containers,
            subscribe_output=lambda cid: self.registry.tracks[cid].hub.subscribe(),
            images=self.images, layers=self.layers,
            cache=BuildCache(builder_root, self.images.exists),
            pull=self._pull_for_build, to_thread=self.to_thread,
            spool_dir=os.path.join(self.data_root, "tmp"),
            max_context_size=config["builder-max-context-size"],
            memory_spool=reconcile.memory_spool(tmpfs_dir(), self.data_root))
        metrics.on_scrape("engine_daemon_container_states_containers",
                          "The count of containers in various states", self._container_states,
                          labelnames=("state",))
        metrics.on_scrape("engine_daemon_events_subscribers_total",
                          "The number of current subscribers to events",
                          lambda: self.events.subscribers)
        metrics.count_dropped_log_entries(logdelivery.dropped_total)

    def _container_states(self) -> list[tuple[tuple[str], int]]:
        """dockerd's three states: created, exited and dead containers are stopped."""
        _, running, paused, stopped = self.registry.counts()
        return [(("running",), running), (("paused",), paused), (("stopped",), stopped)]

    def _build_shaping(self) -> Shaping:
        """The traffic shaper, ``tc`` when installed, else the first by name.
        Without one the daemon runs, and refuses bandwidth options saying why;
        daemon.json ``default-net-rates`` then refuses the start."""
        found = self.plugins.drivers.get("traffic", {})
        shaper: TrafficShaper | None = None
        why = "no traffic shaper plugin is installed (skiff's own is tc)"
        if found:
            name = "tc" if "tc" in found else sorted(found)[0]
            try:
                shaper = found[name](TrafficShaperContext(exec_root=self.exec_root))
                why = ""
            except DriverNotSupported as exc:
                why = f"the {name} traffic shaper cannot work on this host: {exc}"
                log.warning("traffic_shaper.unsupported", shaper=name, reason=str(exc))
        shaping = Shaping(shaper, why, self.config.get("default-net-rates") or {},
                          self.to_thread)
        try:
            shaping.check_daemon()
        except ValueError as exc:
            raise ConfigError(f"{self.config.get('config-file', 'daemon.json')}: {exc}"
                              ) from exc
        return shaping

    def _check_installed(self, kind: str, name: str, key: str) -> None:
        try:
            self.plugins.factory(kind, name)
        except LookupError as exc:
            raise ConfigError(f"{self.config['config-file']}: {key}: {exc}") from exc

    def _cgroup_parent_of(self, container_id: str) -> str:
        """A container's own cgroup parent, from its record ("" for none)."""
        c = self.registry.by_id.get(container_id)
        return str(c.host_config.get("CgroupParent") or "") if c is not None else ""

    def _build(self, kind: str, name: str, key: str, ctx: Any) -> Any:
        self._check_installed(kind, name, key)
        try:
            return self.plugins.factory(kind, name)(ctx)
        except DriverNotSupported as exc:
            raise ConfigError(f"{kind} driver {name!r} cannot be used here: {exc}") from exc

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Start ``fn(*args)`` as a task of the daemon's nursery.

        The nursery exists only once the daemon runs (``start``), after the
        services that spawn tasks are built: they are given this method.
        """
        self.nursery.start_soon(fn, *args)

    async def to_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking driver work off the event loop, bounded by the engine's limiter."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def transfer_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work whose pace a client or a registry sets, on its own threads.

        A ``docker load`` that trickles, a ``docker save`` nobody reads, a
        registry that sends a byte a minute: each holds its thread for as long
        as the other side likes.  On ``to_thread``'s limiter, sixteen of them
        would stop every create, start, stop and rm; here they only queue
        behind each other.
        """
        return await trio.to_thread.run_sync(fn, *args, limiter=self.transfers)

    def _drop_build_layers(self) -> None:
        """The bare layers of builds a crash interrupted: no build outlives its daemon."""
        for rw in self.layers.rw_layers():
            if rw.container_id.startswith(BUILD_LAYER_PREFIX):
                log.warning("builder.leftover_layer_removed", layer=rw.container_id)
                self.layers.remove_rw(rw.container_id)

    def _reconcile(self) -> None:
        """What a crash left that no record owns goes (``core/reconcile.py``):
        before the runtime starts and the API serves, so nothing is in use yet."""
        reconcile.at_start(
            data_root=self.data_root, exec_root=self.exec_root,
            storage_home=os.path.join(self.data_root, self.storage_name),
            storage=self.storage, layers=self.layers, known=set(self.containers.by_id),
            cgroups=self.cgroups, networks=list(self._networks.values()),
            network_ids=set(self.networks.by_id), spare_layer=BUILD_LAYER_PREFIX,
            memory_spool=self.builds.memory_spool,
            running={c.id for c in self.containers.by_id.values() if c.state.Running})

    async def _pull_for_build(self, ref: str, emit: Callable[[dict[str, Any]], None]) -> str:
        """A build's FROM or ``COPY --from`` image, pulled (no credentials:
        ``X-Registry-Config`` is not read yet)."""
        reference = parse_reference(ref, default_tag=False)
        if reference.tag is None and reference.digest is None:
            reference = reference.with_default_tag()
        return await pull(self.distribution, reference, None, emit)

    # -- networks ------------------------------------------------------------

    def resolve_network_mode(self, mode: str) -> str:
        """The network name of a NetworkMode; ``default`` is ``bridge`` when it exists.

        ``default`` falls back to ``none`` while no bridge driver is installed
        (or daemon.json ``bridge`` is ``none``); ``container:<ref>`` stays as is.
        """
        installed = self.plugins.drivers.get("network", {})
        if mode.startswith(CONTAINER_PREFIX):  # a namespace to join (containers.netns)
            return mode
        if mode in ("default", ""):
            if self.networks.find("bridge") is not None:
                return "bridge"
            log.info("network.default_is_none",
                     reason="no bridge network driver is installed; containers get --network none")
            return "none"
        net = self.networks.find(mode)
        if net is not None:
            return net.name
        if mode in installed:
            return mode
        raise NoSuchNetwork(f"network {mode} not found")

    def network_driver(self, mode: str) -> NetworkDriver:
        """The driver of network ``mode`` (a network's name or ID; else a driver's name)."""
        net = self.networks.find(mode)
        return self.network_driver_named(net.driver if net is not None else mode)

    def network_driver_named(self, name: str) -> NetworkDriver:
        """The network driver called ``name``, made on first use."""
        if name not in self._networks:
            factory = self.plugins.factory("network", name)
            access = (DriverClusterAccess(self.cluster, name) if self.cluster is not None
                      else None)
            self._networks[name] = factory(NetworkContext(
                data_root=self.data_root, exec_root=self.exec_root, config=self.config,
                cluster=access))
        return self._networks[name]

    def _build_cluster(self) -> ClusterMembership | None:
        settings = cluster_settings.parse(self.config)  # validated with the file
        if settings is None:
            return None
        try:
            advertise = cluster_settings.resolve_advertise(settings.advertise)
        except ValueError as exc:
            raise ConfigError(f"{self.config.get('config-file', 'daemon.json')}: {exc}") from exc
        return ClusterMembership(settings, engine_id(self.data_root), socket.gethostname(),
                                 advertise,
                                 lease_file=os.path.join(self.exec_root, "cluster-lease"))

    # -- networks of either scope ----------------------------------------------

    async def create_network(self, body: dict[str, Any]) -> tuple[Network, str]:
        """``POST /networks/create``: a global-scope network goes to the store too."""
        if self.global_networks is not None and self.networks.is_global(body):
            return await self.global_networks.create(body)
        net: Network
        net, warning = await self.to_thread(self.networks.create, body)
        return net, warning

    async def remove_network(self, ref: str) -> Network:
        """``DELETE /networks/{id}``: the removed network."""
        net = self.networks.get(ref)
        if net.scope == "global" and self.global_networks is not None:
            await self.global_networks.remove(net)
        else:
            await self.to_thread(self.networks.remove, net.id)
        return net

    async def prune_networks(self) -> list[Network]:
        """``POST /networks/prune``: unused networks; global ones only while the store
        can be reached (they are the cluster's; skipped and logged otherwise)."""
        before = {n.id: n for n in self.networks.by_id.values()}
        names = set(await self.to_thread(self.networks.prune) or [])
        gone = [n for n in before.values() if n.name in names]
        if self.global_networks is None:
            return gone
        for net in list(self.networks.by_id.values()):
            if net.scope != "global" or net.predefined or self.networks.users(net):
                continue
            try:
                await self.global_networks.remove(net)
            except Exception as exc:
                log.warning("network.prune_failed", network=net.name, error=str(exc))
                continue
            gone.append(net)
        return gone

    # -- life ------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        phases = _Phases()
        async with trio.open_nursery() as starting:
            # The runtime's helper (the fork server: its own interpreter and
            # imports) comes up on the other core while the records are read and
            # the networks plumbed; it touches none of what the reconciliation
            # sweeps (per-container bundles, groups and mounts, temp dirs), and
            # nothing is handed to it before the adoption below.
            starting.start_soon(self._start_runtime, phases)
            await self.to_thread(self.containers.restore)
            phases.mark("containers")
            self.health.restore()  # those still running (live-restore)
            await self.to_thread(self._drop_build_layers)
            phases.mark("health, build layers")
            await self.to_thread(self.networks.load)
            phases.mark("networks")
            if self.cluster is None and self.networks.pending:
                # kept, not plumbed: they come back if the store is configured again
                log.warning("network.global_without_store",
                            networks=sorted(self.networks.by_id[n].name
                                            for n in self.networks.pending),
                            reason="global-scope networks need cluster-store in daemon.json")
            await self.to_thread(self._reconcile)
            phases.mark("reconcile")
        phases.mark("waiting for the runtime")
        await self.containers.adopt_all()  # live-restore: those that ran on
        phases.mark("adoption")
        if self.remap is not None:
            await userns_storage.choose(self)
        if self.userns_ranges is not None:
            gone = await self.to_thread(self.userns_ranges.keep_only, list(self.containers.by_id))
            if gone:
                log.warning("userns.ranges_released", containers=gone,
                            reason="their containers no longer exist")
        self.plugins.hook.skiff_daemon_start(config=self.config)
        if self.cluster is not None:
            await nursery.start(self.cluster.run)
            # one try, so containers restarted below find their global networks
            # plumbed; bounded: the store may be away, and the daemon starts anyway
            with trio.move_on_after(STORE_WAIT):
                await self.cluster.first_attempt.wait()
        phases.mark("the rest")
        log.debug("daemon.start_phases", seconds=phases.seconds)
        # --rm leftovers and --restart always/unless-stopped, while the API already serves
        nursery.start_soon(self.containers.restarts.after_restore)

    async def _start_runtime(self, phases: _Phases) -> None:
        began = time.perf_counter()
        await self.runtime.start()
        phases.seconds["runtime (alongside)"] = round(time.perf_counter() - began, 4)

    async def shutdown(self) -> None:
        with trio.CancelScope(shield=True):
            await self.containers.shutdown()
            # with live-restore the containers run on, networked: the plumbing
            # of their networks stays (the next start finds it and adopts it)
            await self.to_thread(self.networks.shutdown, self.containers.running_networks())
            if self.cluster is not None:
                await self.cluster.leave()
            await self.to_thread(self.shaping.close)
            await self.runtime.stop()
            self.plugins.hook.skiff_daemon_shutdown(config=self.config)
            # removed containers' layers still queued, before the driver lets go
            await self.to_thread(self.layers.trash.drain, 30.0)
            await self.to_thread(self.containers.trash.drain, 30.0)
            await self.to_thread(self.storage.cleanup)
            reconcile.drop_memory_spool(self.builds.memory_spool)
