"""The contract between skiff's microkernel and its drivers.

Two kinds of hooks live here (project name ``skiff``):

*Discovery hooks* let a plugin module contribute named drivers.  Each returns
a mapping of driver name to a factory; the daemon calls the factory of the
driver that ``daemon.json`` (or, for volumes, the request) selects.  Six kinds
exist, one entry-point group each: ``skiff.storage``, ``skiff.network``, ``skiff.logging``,
``skiff.isolation``, ``skiff.limits`` and ``skiff.volume``.  A third-party package adds a driver
by declaring an entry point in one of those groups whose value is a module
holding ``@hookimpl`` functions; the built-in drivers register the same way.

*Lifecycle broadcasts* are called on every registered plugin in turn, so any
plugin may act on daemon start-up and shutdown and on each step of a
container's life.

Drivers are plain objects that satisfy the ``typing.Protocol`` classes below.

*Threads and the event loop.*  The daemon is one trio event loop; what runs on
it must not block, or every request and container waits.  So:

- Driver methods of storage, network, logging and volume drivers are
  synchronous and may block (mounting, copying, unpacking): the daemon calls
  them from worker threads (``trio.to_thread.run_sync``), never on its event
  loop, so a driver needs no knowledge of trio.  Calls for different layers,
  containers, networks or volumes run concurrently, in different threads: a
  driver's shared state (its caches, reference counts, an address allocator)
  must be thread-safe.  Each Protocol says what more it promises.  The
  cgroup driver's methods are called from worker threads too, but for
  ``validate`` and ``procs_files``, which must be quick: they run on the
  event loop.
- Driver factories and discovery hooks are called once, at daemon start, on
  the event loop, except the log driver factory, called on the event loop at
  each container start: it should only open its files.
- The container runtime's methods are async and run on the event loop,
  because starting a process is a conversation: they must not block, and run
  blocking work with ``trio.to_thread.run_sync``.
- Lifecycle broadcasts (``skiff_daemon_*``, ``skiff_container_*``) are
  called on the event loop, synchronously, in the middle of the daemon's own
  work: they must return quickly and not block.  A plugin with slow work (a
  remote call, a large file) does it in a thread of its own, or prepares it
  in ``skiff_daemon_config_check``.
- ``skiff_security_options`` is called from a worker thread, while ``docker
  info`` is answered, possibly while a lifecycle hook runs on the loop.

*Versions.*  ``CONTRACT_VERSION`` is this contract's version; every plugin
module declares the version it was written for (``SKIFF_CONTRACT = "2.0"``)
and the loader refuses another major, and a module that declares none
(docs/plugins.md).

*Reconciliation (2.8).*  A storage, network or cgroup driver may offer
``reconcile(keep: set[str]) -> list[str]``: called once at daemon start
(from a worker thread, before the API serves and before any container runs),
it removes what the driver made for something that no longer exists (``keep``:
the container ids for storage and cgroup drivers, the network ids for network
drivers) and returns what it removed, which the daemon logs
(``reconcile.<kind>``).  Optional: a driver without it is skipped
(``skiff.core.reconcile``).

*Live-restore (2.11).*  ``Stdio.daemon_*`` and ``keep_ends`` give a runtime
the daemon's own ends of a container's stdio, to keep beside the container
so its output outlives the daemon.  Optional: ``Runtime.adopt(container_id,
bundle) -> Adoption`` hands a running container to a new daemon (raises
``StartError`` saying why it cannot); ``ContainerProcess.stdin_closed()`` is
awaited when the daemon closed its stdin end; a network driver's
``restore_endpoint(network_id, endpoint, pid) -> Endpoint`` learns back an
endpoint an earlier daemon plumbed into the namespace of ``pid`` (``endpoint``
asks for the address, MAC and host ports it had).  None of them is a
Protocol member: a plugin without them is valid (docs/live-restore.md).

*Short reads on the event loop (2.12).*  A log driver may offer
``read_rendered_nowait(config, render) -> list[RenderedLog]``: a whole short
read (a small ``--tail``) done at once on the caller's thread, the event loop,
when nothing in it waits (the page cache holds it), else ``BlockingIOError``
before anything is returned.  Optional, not a Protocol member.

*Cgroup parents (2.14).*  ``CgroupContext.parent_of`` gives a cgroup driver
each container's own ``HostConfig.CgroupParent`` and ``state_dir`` a folder
for its state; an optional ``CgroupDriver.check_parent(parent)`` says the
driver places containers under parents of their own (docs/limits.md).

*Files without a tar (2.17).*  A storage driver may offer
``apply_files(id, parent, write) -> int``: like ``apply_diff`` on a new, empty
layer, but ``write(fd)`` fills it through ``fd``, an open descriptor of the
layer's root directory, with ``*at`` calls relative to it (no whiteouts, only
new entries), and returns the bytes written.  The layer store uses it for a
container's init layer, a few fixed entries at every create, where building
and unpacking a tar cost more than the rest of the layer work; a driver
without it gets the tar through ``apply_diff``.  Optional, not a Protocol
member.

*Moves into groups paid ahead (2.18).*  A cgroup driver may offer
``prime()``: make the kernel ready for the next move of a process into a
group, blocking while it waits, without moving anything.  On cgroup v1 and
v2 the first write to a ``cgroup.procs`` after an idle spell waits for an RCU
grace period (5 to 15 ms), and writes for about a grace period after it do
not; the daemon calls ``prime`` from a worker thread, not awaited, when a
move is likely soon (a container created, an exec created or started), so
the move on the start path finds the wait over.  Never at a start: a prime
holds the kernel's ``cgroup_mutex`` while it waits, and the start's own
``mkdir`` of the groups would wait for it.  It must never move a process
out of its group, and a failure only makes it do nothing from then on.
Optional, not a Protocol member.

This module is one piece on purpose, though long: it is the one file a plugin
author reads, so every hook, Protocol and record a driver sees is here, with
the promises each side makes, and nothing else is (the daemon's own code
lives elsewhere).

Read Moby's graphdriver for the storage model and containerd's snapshotters
for the idea of describing mounts as data: a storage driver returns
``MountSpec`` records and the container init performs them inside the
container's own mount namespace, so a running container leaves nothing in the
host's mount table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal, Protocol, runtime_checkable

import pluggy

from skiff.core.errors import Unavailable

PROJECT = "skiff"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The version of this contract, ``"MAJOR.MINOR"``.  A plugin module declares
#: the version it was written for as a module attribute, next to its hookimpls:
#: ``SKIFF_CONTRACT = "2.0"``.  The major changes when a plugin written for the
#: old contract could break (a signature, a record's fields, a threading
#: promise); the minor when something is only added (an optional hook or
#: method, a field with a default).  The loader refuses another major and
#: accepts any minor of the same major (see ``skiff.core.plugins``).  Major 1
#: is the contract before versions, when network options and endpoint data
#: crossed it as dicts; 2 made them records.
CONTRACT_VERSION = "2.18"
#: the contract of a plugin that declares none: it was written before versions
UNDECLARED_CONTRACT = "1.0"
#: the module attribute holding a plugin's declared contract version
CONTRACT_ATTRIBUTE = "SKIFF_CONTRACT"

#: Entry-point group for each driver kind, in the order the daemon loads them.
ENTRY_POINT_GROUPS: dict[str, str] = {
    "storage": "skiff.storage",
    "network": "skiff.network",
    "logging": "skiff.logging",
    "isolation": "skiff.isolation",
    "limits": "skiff.limits",
    "volume": "skiff.volume",
}


class DriverNotSupported(Exception):
    """Raised by a driver factory when the driver cannot work on this host.

    The message says why (missing kernel feature, wrong filesystem under the
    data-root, missing helper binary) and what the operator can do.  When no
    storage driver is configured the daemon tries drivers in order of
    preference and skips those that raise this.
    """


# ---------------------------------------------------------------------------
# Shared records
# ---------------------------------------------------------------------------


@dataclass
class MountSpec:
    """A mount described as data, performed later by whoever owns the namespace.

    ``type`` is a filesystem type (``overlay``, ``tmpfs``, ``proc``) or ``bind``.
    ``options`` are mount(8)-style options: flags such as ``ro``, ``rbind``,
    ``nosuid`` and ``rprivate`` are turned into mount flags, anything else
    (``lowerdir=...``) is passed to the filesystem as data.

    ``destination`` is a path inside the container; for the root filesystem
    mounts a storage driver returns it is ``/``.  ``cwd``, when set, is a host
    directory to change into before mounting, so that long option strings can
    use short relative paths (overlay2's ``l/`` links keep ``lowerdir`` under
    the one-page limit of mount data this way).
    """

    type: str
    source: str
    destination: str = "/"
    options: list[str] = field(default_factory=list)
    cwd: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "source": self.source,
            "destination": self.destination,
            "options": list(self.options),
            "cwd": self.cwd,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MountSpec:
        return cls(
            type=data["type"],
            source=data["source"],
            destination=data.get("destination", "/"),
            options=list(data.get("options", [])),
            cwd=data.get("cwd"),
        )


@dataclass
class Change:
    """One entry of a filesystem diff, as ``docker diff`` shows it.

    ``kind`` is 0 for modified, 1 for added, 2 for deleted (Docker's values).
    """

    path: str
    kind: Literal[0, 1, 2]


# ---------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------


@runtime_checkable
class StorageDriver(Protocol):
    """A layer store: read-only image layers and read-write container layers.

    Every layer has a driver-chosen ``id`` (skiff passes the layer's cache-id, a
    random hex string) and an optional parent.  A driver may keep whatever it
    likes under its home directory (``<data-root>/<driver name>``); skiff keeps
    the content-addressed metadata (diffID, chainID, sizes) itself, under
    ``<data-root>/image/<driver>/layerdb``.

    All methods may block and are called from worker threads.  Methods that
    change state must either complete or leave the layer as it was: a failed
    ``create`` leaves no directory behind, a failed ``apply_diff`` leaves the
    layer empty and removable.
    """

    name: str

    def status(self) -> list[tuple[str, str]]:
        """Key/value pairs for ``docker info``'s DriverStatus (backing fs, ...)."""
        ...

    def create(self, id: str, parent: str | None) -> None:
        """Create an empty read-only layer on top of ``parent`` (None: a base layer)."""
        ...

    def create_rw(self, id: str, parent: str | None, storage_opts: Mapping[str, str]) -> None:
        """Create a container's read-write layer on top of ``parent``.

        ``storage_opts`` are the per-container ``--storage-opt`` values; a
        driver that does not understand one raises ``ValueError`` naming it.
        """
        ...

    def remove(self, id: str) -> None:
        """Remove a layer and everything the driver keeps for it.  Idempotent."""
        ...

    def exists(self, id: str) -> bool:
        """Whether the layer exists."""
        ...

    def metadata(self, id: str) -> dict[str, str]:
        """Driver data for inspect's ``GraphDriver.Data`` (e.g. LowerDir, UpperDir)."""
        ...

    def mounts(self, id: str) -> list[MountSpec]:
        """Describe how to mount layer ``id`` as a root filesystem, without mounting.

        The container init performs these mounts, in order, inside the
        container's private mount namespace with ``destination`` ``/``
        meaning the new root.  Nothing is mounted on the host.
        """
        ...

    def get(self, id: str) -> str:
        """Mount the layer on the host and return the path of its root.

        Reference counted: every ``get`` must be paired with a ``put``.  Only
        operations that need a host path use it (cp, export, commit, apply).
        """
        ...

    def put(self, id: str) -> None:
        """Release one reference taken by ``get``; unmount at zero."""
        ...

    def apply_diff(self, id: str, parent: str | None, diff: IO[bytes]) -> int:
        """Unpack an uncompressed layer tar stream into layer ``id``.

        OCI whiteouts (``.wh.<name>`` and ``.wh..wh..opq``) delete or hide what
        the parent chain holds, in whatever representation the driver uses.
        The tar must never write outside the layer (``skiff.core.archive``
        does the safe extraction).  Returns the size in bytes of the unpacked
        content.
        """
        ...

    def diff(self, id: str, parent: str | None) -> IO[bytes]:
        """An uncompressed tar stream of what layer ``id`` changes over ``parent``,
        with deletions as OCI whiteouts.  The caller closes the stream."""
        ...

    def changes(self, id: str, parent: str | None) -> list[Change]:
        """What layer ``id`` adds, modifies and deletes relative to ``parent``.

        As Docker reports it (``docker diff``): absolute paths sorted depth
        first; a deleted directory once, an added one with all its children;
        and every directory that holds a change, unless listed already, as
        modified (``C /etc`` before ``A /etc/foo``).  ``skiff.core.archive``'s
        ``changes_between`` and ``overlay_changes`` compute exactly this.
        """
        ...

    def diff_size(self, id: str, parent: str | None) -> int:
        """Size in bytes of what ``diff`` would contain, without building the tar."""
        ...

    def cleanup(self) -> None:
        """Release host resources at daemon shutdown (mounts the driver made)."""
        ...


@dataclass
class StorageContext:
    """What a storage driver factory receives."""

    home: str  #: the driver's own directory, ``<data-root>/<name>``
    data_root: str
    options: dict[str, str]  #: ``storage-opts`` from daemon.json, prefix removed


class StorageFactory(Protocol):
    def __call__(self, ctx: StorageContext) -> StorageDriver:
        """Build the driver, or raise ``DriverNotSupported`` saying why not."""
        ...


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------


@dataclass
class NetworkOptions:
    """A network as ``create_network`` receives it: the daemon's record of it."""

    name: str = ""  #: the network's name (``bridge`` for the default network)
    #: the host interface the operator chose (daemon.json ``bridge`` for the
    #: default network, ``com.docker.network.bridge.name`` otherwise); "" lets
    #: the driver name it
    bridge: str = ""
    subnet: str = ""  #: CIDR, chosen by the daemon when the user gave none
    gateway: str = ""  #: "" lets the driver take the subnet's first address
    ip_range: str = ""  #: ``--ip-range``: where container addresses come from
    icc: bool = True  #: containers of the network may talk to each other
    internal: bool = False  #: ``--internal``: no traffic to or from outside
    dns: bool = False  #: containers resolve each other's names (not on the default bridge)
    options: dict[str, str] = field(default_factory=dict)  #: ``-o`` driver options, as given
    labels: dict[str, str] = field(default_factory=dict)
    #: the network's IPv6 subnet (CIDR); "" for an IPv4-only network
    subnet6: str = ""
    gateway6: str = ""  #: "" lets the driver take the IPv6 subnet's first address
    ip_range6: str = ""  #: where containers' IPv6 addresses come from


@dataclass
class PortBinding:
    """The host side of a published port (Docker's ``{"HostIp", "HostPort"}``)."""

    host_ip: str = ""  #: "" for every address
    host_port: str = ""  #: a port, a range ``"8000-8100"``, or "" for any free port


@dataclass
class Link:
    """A container linked with ``--link``: on a network without icc, the
    endpoint's container may still reach these ports of it."""

    ip: str
    ports: list[tuple[str, int]] = field(default_factory=list)  #: (protocol, port)


@dataclass
class Endpoint:
    """A container's attachment to one network.

    The daemon fills the fields down to ``links`` (what it asks for) and
    passes the record to ``create_endpoint``; the driver returns it with the
    fields from ``ip_address`` on (what it did).  The driver may return a
    subclass carrying its own state (interface names, firewall rules): the
    daemon hands exactly that object back to ``join``, ``leave`` and
    ``delete_endpoint``.
    """

    network_id: str
    endpoint_id: str
    container_id: str
    name: str = ""  #: the container's name, for the network's DNS
    hostname: str = ""
    aliases: list[str] = field(default_factory=list)  #: ``--network-alias``
    requested_ip: str = ""  #: ``--ip``; "" lets the driver choose
    #: ``--ip6``, on a network with an IPv6 subnet; "" lets the driver choose
    requested_ip6: str = ""
    #: ``--mac-address`` (Config.MacAddress, on the first network) or the
    #: endpoint's MacAddress: lower-case and colon-separated, already checked
    #: by the daemon; the driver gives the container's interface this address.
    #: "" lets the driver choose.
    requested_mac: str = ""
    #: user-defined networks: the endpoint's links (EndpointSettings.Links,
    #: ``--link NAME:ALIAS``) as alias -> the linked container's name; the
    #: network's DNS answers ALIAS, for this container only, with NAME's address
    link_aliases: dict[str, str] = field(default_factory=dict)
    #: the container's ``--dns`` servers (HostConfig.Dns), in order: a driver
    #: that answers the container's name queries relays the names it does not
    #: know to these instead of its own upstreams; empty: its own
    dns_servers: list[str] = field(default_factory=list)
    #: on the container's primary network only: Docker's ``PortBindings``
    #: (``"80/tcp"`` -> bindings), ``ExposedPorts`` and ``PublishAllPorts``
    port_bindings: dict[str, list[PortBinding]] = field(default_factory=dict)
    exposed_ports: list[str] = field(default_factory=list)
    publish_all: bool = False
    links: list[Link] = field(default_factory=list)
    ip_address: str = ""
    ip_prefix_len: int = 0
    gateway: str = ""
    mac_address: str = ""
    #: on a network with an IPv6 subnet: the address, its prefix length and
    #: the gateway (the driver fills them)
    ip6_address: str = ""
    ip6_prefix_len: int = 0
    gateway6: str = ""
    #: the ports published, as ``docker inspect``'s ``NetworkSettings.Ports``:
    #: an exposed port that is not published maps to None
    ports: dict[str, list[PortBinding] | None] = field(default_factory=dict)
    #: the host side of the endpoint's link (the host end of a veth), set by
    #: the driver in ``create_endpoint``; "" when there is none (host, none).
    #: Traffic shapers (``TrafficShaper``) put their queues on it.
    host_interface: str = ""
    #: what the daemon asks (2.7): the endpoint's ``DriverOpts``
    #: (``--driver-opt``, EndpointSettings.DriverOpts) but for the daemon's own
    #: keys (``skiff.net.*``); a driver refuses a key it does not know with
    #: ``ValueError`` in ``create_endpoint``
    driver_options: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class NetworkDriver(Protocol):
    """Plumbing between a container's network namespace and the outside.

    ``netns`` decides where a container's network stack comes from:
    ``"new"`` gives it a fresh namespace, which ``join`` then plumbs (a veth,
    a route) between clone and exec; ``"host"`` shares the host's namespace
    and ``join`` has nothing to do.

    All methods may block and are called from worker threads; calls for
    different containers and networks run concurrently, so what the driver
    shares between them (address allocation, firewall rules) needs a lock.

    Since 2.7 a driver says what it is through class attributes, each
    optional (absent means the default); the daemon holds no driver's name
    and asks these instead (``NETWORK_DRIVER_TRAITS``):

    - ``scope``: ``"local"`` (the default; its networks exist on this host)
      or ``"global"`` (on every host of a cluster); ``docker network
      inspect`` shows it as ``Scope``.
    - ``ipam``: ``"engine"`` (the default): the daemon chooses a network's
      subnet from ``default-address-pools`` when none is given, refuses
      overlaps, and the driver hands out addresses from it; ``"driver"``:
      the driver brings its own address management, and ``NetworkOptions``
      carries only the subnet the user gave ("" when none).
    - ``ipv6``: True (the default): the driver plumbs ``NetworkOptions.subnet6``
      (there since 2.4); a driver that cannot says False, and the daemon
      refuses an IPv6 subnet for its networks rather than pass one it would
      ignore.
    - ``nameserver``: "" (the default), or the address, inside a container's
      namespace, of the name server the driver answers there on networks
      created with ``NetworkOptions.dns`` (the bridge's embedded DNS at
      127.0.0.11): the daemon names it in the container's resolv.conf and
      the driver resolves containers' names and relays the rest.
    - ``singleton``: False (the default); True for a driver with only its
      predefined network (host, none): ``network create`` refuses another,
      and a container on it joins no other network.
    - ``loopback_only`` (2.9): False (the default); True for a driver whose
      containers get no interface but their loopback (none): nothing of
      theirs can be addressed, published or shaped, and the daemon refuses
      a bandwidth limit for them at create, saying so.

    An optional method (2.9), ``check_endpoint(network_id, endpoint)``: called
    at container create, on the event loop (quick: no I/O, no waiting), with
    the container's primary
    network and an ``Endpoint`` holding only what is asked (``port_bindings``,
    ``exposed_ports``, ``publish_all``, ``requested_*``); ``ValueError``
    refuses the create with a 400 in the driver's words, so that what cannot
    work is refused then rather than failing the start.  Nothing is reserved.

    And an optional method (2.10), ``forget_network(network_id)``: the network
    is removed for good (``network rm``), not only taken down on this host as
    ``delete_network`` is at every daemon stop; a global-scope driver releases
    there what the network holds in the cluster store (its VXLAN ID).  Called
    after ``delete_network``, on the node that removes it.

    And an optional method (2.7), ``hosts(endpoint) -> list[tuple[str, str]]``:
    /etc/hosts lines, (address, names separated by spaces), the driver adds
    to the container's file after the daemon's own (its addresses, its
    links): name resolution for a driver without a name server.  Called from
    a worker thread after ``join`` and whenever the container's networks
    change; quick, no network calls.
    """

    name: str
    netns: Literal["new", "host"]

    def create_network(self, network_id: str, options: NetworkOptions) -> None:
        """Create the network's host-side resources (bridge, firewall chains).

        Called at ``network create`` and again for each network at daemon
        start.  ``ValueError`` refuses the options (an ``-o`` the driver does
        not know, a parent device that is not there): the client gets a 400
        with its message, and no network is made.
        """
        ...

    def delete_network(self, network_id: str) -> None:
        """Remove what ``create_network`` made.  Idempotent."""
        ...

    def create_endpoint(self, network_id: str, endpoint: Endpoint) -> Endpoint:
        """Reserve what the endpoint needs (address, interface) and describe it.

        ``ValueError`` refuses what was asked (``driver_options``, an
        address): at ``network connect`` the client gets a 400 with its
        message; at a container's start the start fails with it.
        """
        ...

    def join(self, endpoint: Endpoint, pid: int) -> None:
        """Plumb the endpoint into the namespace of process ``pid`` (before exec)."""
        ...

    def leave(self, endpoint: Endpoint) -> None:
        """Undo ``join`` after the container stopped.  Idempotent."""
        ...

    def delete_endpoint(self, endpoint: Endpoint) -> None:
        """Release what ``create_endpoint`` reserved.  Idempotent."""
        ...


class ClusterUnavailable(Unavailable):
    """The cluster store cannot be reached now; the message names it (a 503)."""


class ClusterAccess(Protocol):
    """The cluster store as a global-scope network driver sees it (since 2.10).

    The daemon gives one to each network driver's factory when daemon.json
    has a ``cluster-store`` (``NetworkContext.cluster``; None without).  Keys
    are the driver's own: each is relative to a prefix of that driver's
    alone, so drivers never see each other's data.  Values are bytes.

    Every method blocks and may be called from the driver's methods (worker
    threads); each raises ``ClusterUnavailable`` when the store cannot be
    reached, which the driver lets through (the client gets a 503 naming the
    store) or handles.

    *Node-bound* keys are written under this node's lease: they vanish from
    the store, for every node, when this node stops or dies (its lease runs
    out), and the daemon writes them again by itself when the node registers
    anew after the store was away.  Use them for what lives only as long as
    this node does (its endpoints, the addresses they hold).
    """

    #: this node's ID in the cluster (``docker info``'s ``ID``)
    node_id: str
    #: this node's address for the others (``cluster-advertise``'s IP, no port)
    address: str

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        """Every key starting with ``prefix``, with its value."""
        ...

    def create(self, items: Mapping[str, bytes], *, node_bound: bool = False) -> bool:
        """Write all of ``items`` at once if none of their keys exists; False (and
        nothing written) when one does.  How two nodes agree on who gets an ID."""
        ...

    def put(self, key: str, value: bytes, *, node_bound: bool = False) -> None:
        """Write ``key`` whether or not it exists."""
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` at once (absent ones are no error)."""
        ...

    def follow(self, changed: Callable[[str, bytes | None], None],
               resync: Callable[[Mapping[str, bytes]], None]) -> None:
        """Be told of every change to the driver's keys, by any node.

        ``resync(everything)`` is called first, and again each time this node
        registers anew (the store may have changed while it was away); then
        ``changed(key, value)`` for each change as it happens (``value`` None:
        deleted; the driver's own writes included).  Both are called from a
        worker thread, one call at a time, and may block briefly.  Call it once,
        from the first method that needs it (not from the factory, which may
        run on the event loop); it returns at once, the resync comes after.
        """
        ...


@dataclass
class NetworkContext:
    """What a network driver factory receives."""

    data_root: str
    exec_root: str
    config: Mapping[str, Any]  #: the whole daemon configuration (bridge, bip, iptables, ...)
    #: the cluster store (``ClusterAccess``, since 2.10); None when daemon.json
    #: has no ``cluster-store``
    cluster: ClusterAccess | None = None


class NetworkFactory(Protocol):
    def __call__(self, ctx: NetworkContext) -> NetworkDriver: ...


#: A network driver's optional class attributes (see ``NetworkDriver``) and
#: their values when the driver does not set them.
NETWORK_DRIVER_TRAITS: dict[str, Any] = {
    "scope": "local",
    "ipam": "engine",
    "ipv6": True,
    "nameserver": "",
    "singleton": False,
    "loopback_only": False,
}


@dataclass(frozen=True)
class NetworkNamespace:
    """Where a container's network stack comes from, as data.

    ``new``: a namespace of its own, which its networks' drivers plumb in
    ``join``; ``host``: the host's, nothing to plumb; ``join``: an existing
    namespace, the file at ``path`` (``/proc/PID/ns/net`` of another
    container, for ``--network container:<name>``, or a bind-mounted
    namespace): the container has no endpoint of its own and takes the
    /etc files of ``owner``, the container whose namespace it is.
    """

    kind: Literal["new", "host", "join"]
    path: str = ""  #: ``join``: the namespace file; "" until the owner runs
    owner: str = ""  #: ``join``: the container (name or ID) that owns the namespace


# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PartialMeta:
    """Where a piece of a long line belongs, as dockerd's ``PartialLogMetaData``.

    A line longer than 16 KiB reaches the driver in pieces: every piece but
    the last without its newline.  All pieces of one line share ``id`` (64
    random hex digits) and count ``ordinal`` from 1; the last one, which
    ends with the newline, has ``last``.  Drivers that can keep it (local,
    journald) do, so readers can put the line together again.
    """

    id: str
    ordinal: int
    last: bool


@dataclass
class LogMessage:
    """One line (or partial line) a container wrote."""

    stream: Literal["stdout", "stderr"]
    line: bytes  #: including the trailing newline when there was one
    time: float  #: seconds since the epoch, with sub-second precision
    #: what the driver recorded beside the line (json-file's ``attrs``: the
    #: ``labels``/``env``/``tag`` options), shown by ``docker logs --details``
    attrs: dict[str, str] | None = None
    #: set on every piece of a line cut at 16 KiB, and, as dockerd does, on the
    #: unfinished bytes a container left without a newline at exit
    partial: PartialMeta | None = None


@dataclass
class ReadConfig:
    """What ``docker logs`` asks for (which messages)."""

    tail: int | None = None  #: last N lines; None for all
    since: float | None = None
    until: float | None = None
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class LogRender:
    """How ``docker logs`` shows each message, as dockerd: ``--timestamps`` puts
    the time (RFC 3339, nine digits) and a space first, ``--details`` the
    message's attrs (``k=v,k2=v2`` sorted by key, query-escaped) and a space,
    and without a TTY each message is one frame of the multiplexed stream."""

    timestamps: bool = False
    details: bool = False
    framed: bool = True
    #: a frame may hold several consecutive messages of one stream: for a client
    #: that copies frames into two byte streams (the docker CLI), the same output
    #: for a fraction of the frames; never for one that sees frames (docker-py)
    coalesce: bool = False


@dataclass
class RenderedLog:
    """A run of messages already rendered for ``docker logs`` (``read_rendered``)."""

    data: bytes
    last_time: float  #: the time of the last message in ``data``
    last_count: int  #: how many messages at the end of ``data`` have that time


@runtime_checkable
class LogDriver(Protocol):
    """Where a container's stdout and stderr go.

    A driver that cannot read its messages back (syslog, journald) sets a
    class attribute ``readable = False`` (absent means True): the daemon then
    keeps a local cache for ``docker logs`` beside it (dual logging, as
    dockerd 20.10; ``cache-*`` options), and never calls its ``read``.
    """

    name: str

    def write(self, msg: LogMessage) -> None:
        """Record one message.  Called in order, from one worker thread at a
        time (not always the same thread), while ``read`` may run in others."""
        ...

    def read(self, config: ReadConfig) -> Iterator[LogMessage]:
        """Messages already recorded, oldest first, filtered by ``config``.

        Following (``docker logs -f``) is the daemon's job: it reads the past
        here and then streams live messages.  A driver that cannot read back
        (syslog) raises ``NotImplementedError``.

        The daemon takes the first message while no ``write`` can happen and
        the rest later, a batch at a time from worker threads, at the pace of
        the client: a driver should settle what the iteration returns when it
        starts (json-file notes each file's size then) and must not read the
        whole log into memory.  Closing the iterator early releases its files.

        A driver may also offer ``read_rendered(config, render: LogRender)
        -> Iterator[RenderedLog]``: the same messages already rendered, in
        runs, each with its last message's time (the daemon's cursor for a
        follower that falls behind).  The daemon prefers it for a fresh read:
        it spares a Python object per line (json-file's fast path).  And
        ``read_rendered_nowait(config, render) -> list[RenderedLog]``: all of
        it at once on the event loop, for a short read the page cache serves
        (json-file: a ``--tail`` of up to 1000 lines), else ``BlockingIOError``
        before any work that waits; the daemon then reads from a thread.
        """
        ...

    def close(self) -> None:
        """Flush and release; the container is gone or stopped."""
        ...


@dataclass
class LogContext:
    """What a log driver factory receives for one container."""

    container_id: str
    container_name: str
    #: ``<data-root>/containers/<id>/<id>-json.log``; file drivers may use it (dockerd's
    #: places: ``local-logs/container.log`` for local, ``container-cached.log`` for the cache)
    log_path: str
    options: dict[str, str]  #: ``log-opts`` merged with the container's ``--log-opt``
    #: what ``tag`` templates and the ``labels``/``env`` options read (dockerd's
    #: ``logger.Info``); see ``skiff.plugins.logging.common``
    image_name: str = ""  #: the image as given at create (``busybox:latest``)
    image_id: str = ""  #: ``sha256:<hex>``
    labels: dict[str, str] = field(default_factory=dict)  #: the container's labels
    env: list[str] = field(default_factory=list)  #: the container's ``KEY=value`` environment
    command: list[str] = field(default_factory=list)  #: entrypoint and arguments
    hostname: str = ""  #: the container's hostname
    daemon_name: str = "skiff"


#: ``--log-opt`` keys the daemon handles for every driver (delivery mode and
#: the dual-logging cache, as dockerd's ``logger`` package does): a driver's
#: validation must let them through, and ``LogContext.options`` never holds them.
GENERIC_LOG_OPTIONS = frozenset({
    "mode", "max-buffer-size",
    "cache-disabled", "cache-max-size", "cache-max-file", "cache-compress",
})


class LogFactory(Protocol):
    def __call__(self, ctx: LogContext) -> LogDriver: ...


# ---------------------------------------------------------------------------
# Isolation: the container runtime
# ---------------------------------------------------------------------------


@dataclass
class DeviceNode:
    """A device node to create inside the container (OCI ``linux.devices``).

    ``path`` is where the node appears in the container (``/dev/fuse``);
    ``type`` is ``c`` (character), ``b`` (block) or ``p`` (FIFO).
    """

    path: str
    type: Literal["c", "b", "p"]
    major: int
    minor: int
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeviceNode:
        return cls(**data)


@dataclass
class ContainerSpec:
    """Everything the container init needs to build the container and exec.

    Isolation plugins may amend it in ``skiff_container_spec`` before the
    runtime sees it (capabilities, masked paths, seccomp).
    """

    id: str
    bundle: str  #: a per-container host directory under exec-root; ``rootfs`` is in it
    rootfs_mounts: list[MountSpec]  #: from the storage driver, destination ``/``
    mounts: list[MountSpec]  #: everything else, destinations inside the container
    args: list[str]
    env: list[str]
    cwd: str = "/"
    user: str = ""  #: Docker's ``--user``: name, uid, uid:gid, name:group
    #: ``--group-add``: group names or numbers added to the user's groups,
    #: names resolved in the container's ``/etc/group`` with the user
    group_add: list[str] = field(default_factory=list)
    hostname: str = ""
    #: namespace kind -> None for a fresh one, or a path to join (``/proc/PID/ns/net``).
    #: A kind absent from the mapping is shared with the host.  ``user``: a
    #: user namespace (see ``uid_map``); every other namespace the container
    #: gets anew is then created *inside* it (owned by it), so the container's
    #: root has its capabilities over them (binding port 80, ping's raw
    #: socket, mounting its /proc) and over nothing of the host's.
    namespaces: dict[str, str | None] = field(default_factory=dict)
    #: With ``namespaces["user"]`` None: the new user namespace's mappings,
    #: ``(container id, host id, count)`` lines as ``/proc/<pid>/uid_map``
    #: takes them (daemon.json ``userns-remap``).  The runtime writes them
    #: (and ``setgroups`` "allow") from outside before the process does
    #: anything in the namespace; the container's uid 0 is ``uid_map``'s host
    #: id for container id 0.  Empty when the user namespace is joined.
    uid_map: list[tuple[int, int, int]] = field(default_factory=list)
    gid_map: list[tuple[int, int, int]] = field(default_factory=list)
    #: With a user namespace: whether the layers on disk hold the container's
    #: ids unshifted (0 is its root), so the runtime must show the root
    #: filesystem through idmapped mounts with the container's user namespace
    #: (``mount_setattr(MOUNT_ATTR_IDMAP)``); False when the storage already
    #: holds host ids (the chowned copies of the fallback).  Bind mounts and
    #: volumes are never idmapped: a file the container's root makes in one
    #: is owned on the host by the mapped uid.
    rootfs_idmap: bool = False
    capabilities: list[str] = field(default_factory=list)  #: names without ``CAP_``
    #: Paths the container must not see: a file is covered with an empty
    #: character device (``/dev/null``), a directory with an empty read-only
    #: tmpfs.  A runtime covers them from a node it made and verified itself,
    #: never by resolving a path the image or a volume could have planted.
    masked_paths: list[str] = field(default_factory=list)
    #: Paths remounted read-only (recursively) inside the container.
    readonly_paths: list[str] = field(default_factory=list)
    #: ``PR_SET_NO_NEW_PRIVS`` before exec.  Off by default, as in Docker:
    #: setuid programs (su, sudo, ping) must work in containers.  On with
    #: ``--security-opt no-new-privileges`` or daemon.json ``no-new-privileges``.
    no_new_privileges: bool = False
    readonly_rootfs: bool = False
    #: Bytes of the container's own /dev/shm tmpfs (``--shm-size``); 0: Docker's 64 MiB.
    shm_size: int = 0
    #: ``--oom-score-adj`` (-1000..1000) of the container's processes; the
    #: runtime sets it on the first process before it runs the user's command,
    #: so everything it starts inherits it.
    oom_score_adj: int = 0
    #: ``/sys`` is mounted read-only unless this is False (``--privileged``).
    readonly_sysfs: bool = True
    #: The seccomp filter the process runs under, in the shape of the OCI
    #: runtime spec's ``linux.seccomp``: ``defaultAction``, optional
    #: ``defaultErrnoRet``, ``architectures`` (``SCMP_ARCH_X86_64`` ...) and
    #: ``syscalls``, a list of ``{"names", "action", "errnoRet", "args"}``
    #: with ``args`` items ``{"index", "value", "valueTwo", "op"}``.  It is
    #: already resolved for this container: Docker's ``includes``/``excludes``
    #: (by capability, architecture, kernel) were applied by whoever filled it.
    #: ``None`` means no filter at all (``seccomp=unconfined``, privileged).
    #: The runtime installs it in the container's process as the last step
    #: before ``execve`` that needs privilege, and refuses to start the
    #: container if it cannot.
    seccomp: dict[str, Any] | None = None
    #: Device nodes made in the container's ``/dev`` besides the standard
    #: ones (``--device``; every host device for ``--privileged``).  Which
    #: devices the container may *open* is the cgroup driver's business (its
    #: device filter); these only make the nodes exist.
    devices: list[DeviceNode] = field(default_factory=list)
    #: Host paths of the ``cgroup.procs`` files of the container's groups
    #: (``CgroupDriver.procs_files``).  The runtime makes the process a member
    #: of them first, before it reads or mounts anything of the container, so
    #: that all its set-up work (reading an image's ``/etc/passwd``, which may
    #: be hostile) counts against the container's limits.  The daemon still
    #: calls ``CgroupDriver.add_process`` before ``go``.
    cgroup_procs: list[str] = field(default_factory=list)
    rlimits: list[tuple[str, int, int]] = field(default_factory=list)  #: (name, soft, hard)
    #: With ``tty`` the runtime allocates a pseudo-terminal *inside* the
    #: container (from the container's own ``/dev/pts`` instance, as runc
    #: does), so the process sees ``/dev/pts/0``, ``tty`` and ``ttyname``
    #: work and ``ps`` shows the terminal.  The slave becomes the process's
    #: stdin, stdout and stderr and its controlling terminal (``setsid`` and
    #: ``TIOCSCTTY``), so that job control, Ctrl-C through the line
    #: discipline and ``SIGWINCH`` on resize work.  The ``Stdio`` given to
    #: ``prepare`` is then ignored for 0-2 (the daemon passes ``/dev/null``);
    #: the master comes back as ``ContainerProcess.terminal``.
    tty: bool = False
    open_stdin: bool = False
    #: ``--init`` (HostConfig.Init, else daemon.json ``init``): a small init
    #: runs as PID 1, forwards signals to the command and reaps zombies.  The
    #: built-in plugin ``skiff.plugins.isolation.init`` acts on it in
    #: ``skiff_container_spec``: it bind-mounts its binary read-only at
    #: ``/sbin/docker-init`` and prefixes ``args`` with ``/sbin/docker-init --``
    #: (Docker's layout), so a runtime needs to do nothing for it.
    init: bool = False
    #: daemon.json ``init-path``: the init binary to use instead of the
    #: plugin's own (absolute, or a name looked up in ``PATH``); ``""`` for ours
    init_path: str = ""

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items()}
        data["rootfs_mounts"] = [m.to_json() for m in self.rootfs_mounts]
        data["mounts"] = [m.to_json() for m in self.mounts]
        data["rlimits"] = [list(r) for r in self.rlimits]
        data["devices"] = [d.to_json() for d in self.devices]
        data["uid_map"] = [list(m) for m in self.uid_map]
        data["gid_map"] = [list(m) for m in self.gid_map]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ContainerSpec:
        kw = dict(data)
        kw["rootfs_mounts"] = [MountSpec.from_json(m) for m in data["rootfs_mounts"]]
        kw["mounts"] = [MountSpec.from_json(m) for m in data["mounts"]]
        kw["uid_map"] = [tuple(m) for m in data.get("uid_map", [])]
        kw["gid_map"] = [tuple(m) for m in data.get("gid_map", [])]
        kw["rlimits"] = [tuple(r) for r in data.get("rlimits", [])]
        kw["devices"] = [DeviceNode.from_json(d) for d in data.get("devices", [])]
        return cls(**kw)


@dataclass
class ExecSpec:
    """A process to start inside a running container (``docker exec``).

    The daemon fills it from the container's configuration and the exec's own
    (``-u``, ``-w``, ``-e``, ``-t``, ``--privileged``).  The runtime starts the
    process in every namespace listed in ``namespaces`` (paths such as
    ``/proc/<pid>/ns/net`` of the container's PID 1), so it sees the
    container's root filesystem, hostname, network and processes; it resolves
    ``user`` against the container's ``/etc/passwd`` and ``/etc/group`` and
    drops privileges exactly as for the container's own process.  Joining the
    container's cgroups is the daemon's business: it moves ``pid`` into them
    between ``Runtime.exec`` and ``ContainerProcess.go``.
    """

    id: str  #: the exec's ID (64 hex digits)
    container_id: str
    #: host pid of the container's PID 1, whose namespaces the process joins
    container_pid: int
    #: namespace kind (``user``, ``pid``, ``mount``, ``uts``, ``ipc``, ``net``,
    #: ``cgroup``) -> path to join.  A kind absent from the mapping is not
    #: joined.  ``user`` (a remapped container) is joined first, so the
    #: process has the namespace's capabilities over the others it joins and
    #: none of the host's.
    namespaces: dict[str, str]
    args: list[str]
    env: list[str]  #: the container's environment with the exec's ``-e`` applied
    cwd: str = "/"  #: must exist in the container; it is not created
    user: str = ""  #: Docker's ``--user`` syntax, resolved inside the container
    group_add: list[str] = field(default_factory=list)  #: the container's ``--group-add``
    oom_score_adj: int = 0  #: the container's ``--oom-score-adj``, as runc gives execs
    capabilities: list[str] = field(default_factory=list)  #: names without ``CAP_``
    #: ``docker exec --privileged``: every capability the host has, whatever
    #: ``capabilities`` says
    privileged: bool = False
    no_new_privileges: bool = False
    rlimits: list[tuple[str, int, int]] = field(default_factory=list)  #: (name, soft, hard)
    #: the container's seccomp filter (``ContainerSpec.seccomp``); an exec runs
    #: under the same filter as the container's own process
    seccomp: dict[str, Any] | None = None
    #: as ``ContainerSpec.cgroup_procs``: the process joins the container's
    #: groups before it reads anything of the container
    cgroup_procs: list[str] = field(default_factory=list)
    #: as ``ContainerSpec.tty``: the runtime allocates a pseudo-terminal in
    #: the container's ``/dev/pts`` and makes its slave the process's stdio
    #: and controlling terminal; the ``Stdio`` given to ``exec`` is ignored
    #: for 0-2 (the daemon passes ``/dev/null``) and the master comes back as
    #: ``ContainerProcess.terminal``
    tty: bool = False

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items()}
        data["rlimits"] = [list(r) for r in self.rlimits]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExecSpec:
        kw = dict(data)
        kw["rlimits"] = [tuple(r) for r in data.get("rlimits", [])]
        return cls(**kw)


class StartError(Exception):
    """The container could not be started: its process never ran the user's command.

    ``exit_code`` follows Docker's convention for ``docker run``: 127 when the
    command was not found, 126 when it could not be executed, 125 otherwise.
    """

    def __init__(self, message: str, exit_code: int = 125) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ContainerProcess(Protocol):
    """A container's init process, between clone and exec and afterwards."""

    pid: int  #: host pid of the container's PID 1
    #: With ``tty`` (``ContainerSpec.tty``, ``ExecSpec.tty``): the master side
    #: of the pseudo-terminal the runtime allocated inside the container's own
    #: ``/dev/pts`` instance, set when ``prepare``/``exec`` returns; its slave
    #: is the process's stdin, stdout, stderr and controlling terminal.  The
    #: daemon owns this descriptor from then on: it reads the output from it,
    #: writes input to it, sets the window size on it (``TIOCSWINSZ``) and
    #: closes it; the process object never closes it.  ``-1`` without ``tty``.
    terminal: int

    async def go(self) -> None:
        """Let the prepared process exec the user's command.

        Returns once ``execve`` succeeded; raises ``StartError`` if it did
        not (the process is gone then).
        """
        ...

    async def wait(self) -> int:
        """Wait for the process to end; its exit code, 128+N for signal N."""
        ...

    def kill(self, signal: int) -> None:
        """Send ``signal`` to the container's PID 1.  No error if it already ended."""
        ...

    async def abort(self) -> None:
        """Kill a process that has not been told to ``go`` and reap it."""
        ...


@dataclass
class Stdio:
    """File descriptors the container's PID 1 gets as 0, 1 and 2.

    The runtime duplicates them; the caller closes its own copies.  With
    ``tty`` they are ignored (see ``ContainerSpec.tty``).
    """

    stdin: int
    stdout: int
    stderr: int
    #: (contract 2.11) the daemon's own ends of the same pipes, or -1: the
    #: read ends of stdout and stderr, the write end of stdin.  A runtime that
    #: can keeps copies of them beside the container (for the forkserver
    #: runtime, in skiff-monitor) so that the container's output outlives the
    #: daemon: spooled while no daemon reads, handed to the next one
    #: (live-restore).  Never closed by the runtime; ``keep_ends`` without them
    #: asks for the same with a TTY, whose one end the runtime makes.
    daemon_stdout: int = -1
    daemon_stderr: int = -1
    daemon_stdin: int = -1
    keep_ends: bool = False


@dataclass
class Adoption:
    """(contract 2.11) A running container a new daemon took back from what
    watches it (live-restore): its PID 1, the daemon's ends of its stdio as
    they were given in ``Stdio.daemon_*`` (or, with a TTY, the terminal in
    ``stdout``), the caller's to close, and what the container wrote while
    no daemon read: ``(time in ns since the epoch, "stdout"|"stderr",
    bytes)`` in order, with the bytes dropped past the runtime's bound.
    The built-in runtime leaves what it spooled in ``<bundle>/spool`` until
    the daemon, having logged it, removes that file."""

    process: ContainerProcess
    stdout: int = -1
    stderr: int = -1
    stdin: int = -1
    spooled: list[tuple[int, str, bytes]] = field(default_factory=list)
    dropped: int = 0


@runtime_checkable
class Runtime(Protocol):
    """Starts container processes.  Isolation is its business.

    Its methods run on the daemon's event loop: they must not block (wait
    with trio, run blocking work with ``trio.to_thread.run_sync``).  So do
    ``ContainerProcess``'s, whose ``kill`` is synchronous and must return at
    once.  ``isinstance(x, Runtime)`` checks for every member, the optional
    ``probe_idmapped_rootfs`` included; the daemon does not require it.

    ``prepare`` returns a process that has its namespaces, root filesystem,
    hostname and mounts in place but has not yet dropped privileges or run
    the user's command.  Between ``prepare`` and ``ContainerProcess.go`` the
    daemon runs ``skiff_container_prestart`` (cgroups, network plumbing), so
    the user's process is limited and networked from its first instruction.
    """

    name: str

    async def start(self) -> None:
        """Start helpers (the fork server).  Called once when the daemon starts."""
        ...

    async def stop(self) -> None:
        """Stop helpers.  Running containers are not affected."""
        ...

    async def prepare(self, spec: ContainerSpec, stdio: Stdio) -> ContainerProcess:
        """Create the container's process up to, not including, exec.

        Raises ``StartError`` with a clear message when the spec cannot be
        realised (missing command, bad user, failed mount); nothing is left
        running then.
        """
        ...

    async def exec(self, spec: ExecSpec, stdio: Stdio) -> ContainerProcess:
        """Create a process inside a running container, up to, not including, exec.

        Like ``prepare``: the returned process has joined the container's
        namespaces and resolved its user, working directory and command, and
        waits for ``go``; between the two the daemon moves ``pid`` into the
        container's cgroups.  ``kill`` signals the exec'd process, ``wait``
        returns its exit code.  The process dies with the container (its pid
        namespace).  Raises ``StartError`` (127 command not found, 126 not
        executable or bad working directory) with nothing left running.  A
        runtime without exec support raises ``StartError`` saying so.
        """
        ...

    async def probe_idmapped_rootfs(
        self, mounts: list[MountSpec], uid_map: list[tuple[int, int, int]],
        gid_map: list[tuple[int, int, int]],
    ) -> str | None:
        """Whether this runtime can show the root filesystem ``mounts``
        describe (a storage driver's ``mounts`` of a throwaway read-write
        layer) through idmapped mounts, as for ``ContainerSpec.rootfs_idmap``.

        Optional.  The runtime builds that root filesystem with a throwaway
        user namespace of the given mappings and creates, as the
        container's root, the empty file ``.skiff-idmap-probe`` at its top;
        the daemon then checks that it landed on disk owned by 0:0.  Returns
        None on success, else why not (the kernel, the filesystem, the
        driver), which ``docker info`` shows when the daemon falls back to
        chowned copies of the layers.  A runtime without this method is
        taken to be unable.
        """
        ...


#: the file ``Runtime.probe_idmapped_rootfs`` creates
IDMAP_PROBE_FILE = ".skiff-idmap-probe"


@dataclass
class RuntimeContext:
    exec_root: str
    options: dict[str, str]  #: ``exec-opts`` from daemon.json


class RuntimeFactory(Protocol):
    def __call__(self, ctx: RuntimeContext) -> Runtime: ...


# ---------------------------------------------------------------------------
# Limits: cgroups
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ThrottleDevice:
    """One entry of ``BlkioDeviceReadBps`` and its kind: a device, a rate per second."""

    path: str  #: the device node on the host, e.g. ``/dev/sda``
    rate: int  #: bytes or operations per second; 0: no limit


@dataclass(frozen=True)
class WeightDevice:
    """One entry of ``BlkioWeightDevice``."""

    path: str
    weight: int  #: 10..1000; 0 drops the device's rule


@dataclass(frozen=True)
class DeviceMapping:
    """One entry of ``HostConfig.Devices``, defaults filled in."""

    path_on_host: str  #: a device node or a directory of them
    path_in_container: str
    cgroup_permissions: str  #: a subset of ``rwm``


@dataclass(frozen=True)
class Resources:
    """HostConfig's fields a cgroup driver applies, typed; built and checked by
    the daemon (``skiff.core.containers.limits``), Docker's units.

    Zero (or empty) means no limit, as in Docker; ``memory_swap`` 0 means
    twice ``memory`` and -1 unlimited; ``pids_limit`` 0 or -1 means no limit;
    ``memory_swappiness`` None leaves the kernel's default.
    """

    memory: int = 0  #: bytes
    memory_swap: int = 0  #: memory plus swap, bytes
    memory_reservation: int = 0  #: bytes (soft limit)
    memory_swappiness: int | None = None  #: 0..100, -1 or None: unchanged
    oom_kill_disable: bool = False
    kernel_memory: int = 0  #: bytes (cgroup v1 only, deprecated)
    pids_limit: int = 0
    cpu_shares: int = 0  #: relative weight, 1024 the default
    nano_cpus: int = 0  #: CPUs times 10^9 (``--cpus``)
    cpu_period: int = 0  #: microseconds
    cpu_quota: int = 0  #: microseconds per period
    cpuset_cpus: str = ""  #: ``0-3,5``
    cpuset_mems: str = ""
    blkio_weight: int = 0  #: 10..1000
    blkio_weight_device: tuple[WeightDevice, ...] = ()
    blkio_device_read_bps: tuple[ThrottleDevice, ...] = ()
    blkio_device_write_bps: tuple[ThrottleDevice, ...] = ()
    blkio_device_read_iops: tuple[ThrottleDevice, ...] = ()
    blkio_device_write_iops: tuple[ThrottleDevice, ...] = ()
    devices: tuple[DeviceMapping, ...] = ()  #: ``--device``
    device_cgroup_rules: tuple[str, ...] = ()  #: ``--device-cgroup-rule`` lines
    privileged: bool = False  #: every device allowed


@runtime_checkable
class CgroupDriver(Protocol):
    """Puts containers into control groups and applies their resource limits.

    The daemon has checked ``resources`` with Docker's rules before any call
    (``skiff.core.containers.limits.validate``); a driver adds only what
    depends on the host.
    """

    name: str  #: ``cgroupfs``
    version: int  #: 1 or 2

    def create(self, container_id: str, resources: Resources) -> None:
        """Create the container's groups and write its limits.

        ``resources`` holds HostConfig's resource fields (memory, cpu_shares,
        pids_limit, ...), Docker's units.

        The driver also confines devices: which device nodes the container
        may open (and mknod) follows Docker's allow-list plus ``Devices``
        and ``DeviceCgroupRules``, or everything with ``Privileged``.  It
        must be in force before ``add_process``; if it cannot be (no devices
        controller, a device program the kernel will not attach), raise and
        leave no group: the container must not start unconfined.  ``update``
        never changes it.
        """
        ...

    def add_process(self, container_id: str, pid: int) -> None:
        """Move ``pid`` into the container's groups (before exec)."""
        ...

    def procs_files(self, container_id: str) -> list[str]:
        """Host paths of the ``cgroup.procs`` files of the container's groups
        (one per hierarchy), for ``ContainerSpec.cgroup_procs``.

        Optional: without it the daemon's ``add_process`` between prepare and
        go is the only way into the groups, and the runtime's set-up work is
        not counted against the container's limits.
        """
        ...

    def update(self, container_id: str, resources: Resources) -> None:
        """Change limits of a running container: ``resources`` is the complete
        merged set after ``docker update``."""
        ...

    def stats(self, container_id: str) -> dict[str, Any]:
        """Counters for the stats API (cpu, memory, pids, blkio)."""
        ...

    def validate(self, resources: Resources) -> None:
        """Check ``resources`` without touching the kernel's groups, beyond
        Docker's checks the daemon already ran: what this driver and host
        cannot apply (a kernel memory limit, a device path that is no block
        device).

        Raises ``ValueError`` with a message for the client (Docker's wording
        where Docker has one).  The daemon calls it at container create and
        update, so a bad value is refused with 400 before anything exists.
        """
        ...

    def mounts(self, container_id: str) -> list[MountSpec]:
        """How the container sees its own groups: mounts under ``/sys/fs/cgroup``.

        Called after ``create`` and before the runtime prepares the process;
        the container init performs them (read-only) after the container's
        ``/sys``, so the container sees its own limits, not the host's.
        """
        ...

    def oom_killed(self, container_id: str) -> bool:
        """Whether the kernel's OOM killer killed a process in the container's
        groups since ``create``.  Called after the container's process ended and
        before ``destroy``."""
        ...

    def pids(self, container_id: str) -> list[int]:
        """Host pids of every process in the container's groups (``docker top``).

        Optional: the daemon falls back to matching each process's PID
        namespace against the container's init when a driver lacks it.
        """
        ...

    def freeze(self, container_id: str) -> None:
        """Freeze every process of the container (``docker pause``).

        Returns once the kernel reports the group frozen (v1 ``freezer.state``
        reads ``FROZEN``, v2 ``cgroup.events`` shows ``frozen 1``).  Raises
        ``OSError`` when the group cannot be frozen, or
        ``DriverNotSupported`` when this host has no freezer.  A frozen
        process keeps its memory and does not run until :meth:`thaw`.
        """
        ...

    def thaw(self, container_id: str) -> None:
        """Let the processes frozen by :meth:`freeze` run again (``docker unpause``).

        Returns once the kernel reports the group thawed; thawing a group
        that is not frozen does nothing.  The daemon also thaws a paused
        container before it is stopped or killed, so the signal is acted on.
        """
        ...

    def destroy(self, container_id: str) -> None:
        """Remove the container's groups; its processes are gone.  Idempotent."""
        ...


@dataclass
class CgroupContext:
    parent: str  #: ``cgroup-parent``, default ``skiff``
    #: contract 2.14: a container's own ``HostConfig.CgroupParent`` ("" for
    #: none) by its id, read from its record, so a daemon that restarted finds
    #: the groups of the containers it adopts.  A driver that places containers
    #: under their own parent also has ``check_parent(parent)`` (``ValueError``);
    #: one without it gets such containers refused.
    parent_of: Callable[[str], str] | None = None
    #: contract 2.14: a folder of the exec-root the driver may keep state in
    #: (it survives a daemon restart, not a reboot, as cgroups do)
    state_dir: str = ""


class CgroupFactory(Protocol):
    def __call__(self, ctx: CgroupContext) -> CgroupDriver: ...


# ---------------------------------------------------------------------------
# Limits: traffic shaping
# ---------------------------------------------------------------------------

#: The prefix of the bandwidth options; the keys themselves are
#: ``NET_RATE_KEYS``.  "egress" is traffic leaving the container, "ingress"
#: traffic arriving at it, as the container sees it.
NET_RATE_PREFIX = "skiff.net."
#: Every bandwidth option a user may give, at any level (endpoint
#: ``DriverOpts``, container label, network ``-o``, daemon.json
#: ``default-net-rates``).  Values are tc's units: rates ``10mbit``,
#: ``500kbit``, ``1gbit``; bursts in bytes ``32kb``, ``1mb``; latencies
#: ``50ms``.  A rate of ``none`` lifts a limit a lower level set.
NET_RATE_KEYS = (
    "skiff.net.egress-rate", "skiff.net.egress-burst", "skiff.net.egress-latency",
    "skiff.net.ingress-rate", "skiff.net.ingress-burst", "skiff.net.ingress-latency",
)


@dataclass
class ShapedEndpoint:
    """One endpoint of a running container, as a traffic shaper sees it.

    ``rates`` holds the ``NET_RATE_KEYS`` in force for this endpoint, the
    daemon's precedence already applied (endpoint ``DriverOpts`` over the
    container's labels over the network's options over daemon.json
    ``default-net-rates``); empty means no limit.  The three sources it came
    from are given as they are, for a shaper with options of its own.
    """

    container_id: str
    network_id: str
    network_name: str
    endpoint_id: str
    #: the host side of the link (``Endpoint.host_interface``), where queues go
    host_interface: str
    rates: dict[str, str] = field(default_factory=dict)
    network_options: dict[str, str] = field(default_factory=dict)  #: ``-o`` of the network
    driver_opts: dict[str, str] = field(default_factory=dict)  #: EndpointSettings.DriverOpts


@runtime_checkable
class TrafficShaper(Protocol):
    """Limits the bandwidth of containers' endpoints (the limits kind, like
    the cgroup driver, discovered through ``skiff_traffic_shapers``).

    The daemon calls ``joined`` once the network driver joined an endpoint
    that has rates (its host interface exists; one without rates has
    nothing to undo on a fresh interface and costs no call), ``changed``
    when the rates of a running container's endpoint changed (``POST
    /containers/{id}/update`` with ``SkiffNetRates``; ``rates`` may then be
    empty: the shaper removes what it no longer says), and ``left`` after
    the network driver left an endpoint it was called for (its host
    interface, and the queues on it, are gone then).  A failure in
    ``joined`` fails the container's start (a limit asked for is never
    silently dropped); ``left`` never raises.

    Whatever a shaper makes besides queues on ``host_interface`` (which the
    interface's deletion removes), such as an IFB device, it must remove
    after ``left``, and it should remove leftovers of a crashed daemon when
    built.  A shaper may finish that work in a thread of its own, after
    ``left`` returned; it then offers ``close()``, which the daemon calls
    as it stops and which returns once that work is done.

    ``validate`` runs on the event loop and must be quick; the other methods
    may block and run on worker threads, concurrently for different
    containers.
    """

    name: str

    def validate(self, rates: Mapping[str, str]) -> None:
        """Check ``rates`` (any subset of ``NET_RATE_KEYS``, from one level or
        merged) without touching the kernel.  Raise ``ValueError`` naming the
        key and an example of a good value; the client gets a 400."""
        ...

    def joined(self, endpoint: ShapedEndpoint) -> None:
        """Apply ``endpoint.rates`` to an endpoint just joined."""
        ...

    def changed(self, endpoint: ShapedEndpoint) -> None:
        """Apply new ``endpoint.rates`` to a running container's endpoint."""
        ...

    def left(self, endpoint: ShapedEndpoint) -> None:
        """Remove what ``joined`` made beyond the interface's own queues.  Idempotent."""
        ...


@dataclass
class TrafficShaperContext:
    """What a traffic shaper factory receives."""

    exec_root: str


class TrafficShaperFactory(Protocol):
    def __call__(self, ctx: TrafficShaperContext) -> TrafficShaper:
        """Build the shaper, or raise ``DriverNotSupported`` saying why not
        (a kernel without the queueing disciplines it needs)."""
        ...


# ---------------------------------------------------------------------------
# Volumes
# ---------------------------------------------------------------------------


@dataclass
class VolumeInfo:
    """What a volume driver knows about one of its volumes (Docker's ``Get``/``List``).

    ``mountpoint`` is the host path of the volume's data when the driver can
    tell it without mounting (the ``local`` driver always can), else ``""``.
    ``status`` is free-form driver detail for ``docker volume inspect``'s
    ``Status``.  Labels, options and the creation time are kept by the daemon,
    not the driver; a driver may still report ``created_at`` (RFC 3339).
    """

    name: str
    mountpoint: str = ""
    created_at: str = ""
    status: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class VolumeDriver(Protocol):
    """Named storage that outlives containers: Docker's volume plugin API.

    The methods mirror Docker's ``/VolumeDriver.*`` calls (Create, Remove,
    Mount, Unmount, Path, Get, List, Capabilities), as synchronous Python.
    skiff keeps the volume records (name, driver, labels, options, creation
    time) and the count of containers using each volume, refuses to remove a
    volume in use and calls ``mount``/``unmount`` once per container start and
    stop, so a driver needs no reference counting of containers beyond pairing
    ``mount`` with ``unmount`` by ``ref``.

    ``mount`` returns a host directory; the container init bind-mounts it at
    the destination inside the container's own mount namespace.  A driver
    whose volumes need a real mount (a tmpfs, a device, a network share)
    mounts it on the host in ``mount`` and unmounts it when the last ``ref``
    is released, as Docker's ``local`` driver does with ``type``/``device``/``o``.

    Errors: ``ValueError`` for a bad name or option (the client gets 400, the
    message verbatim), ``KeyError`` for a volume the driver does not have
    (404), any other exception is a 500.  All methods may block; they run on
    worker threads.
    """

    name: str

    def create(self, name: str, options: Mapping[str, str]) -> None:
        """Create volume ``name`` with the driver options of ``--opt``/``DriverOpts``.

        Validate ``options`` here: an option the driver does not know is a
        ``ValueError`` naming it.  Creating a volume that already exists with
        the same options is not an error.
        """
        ...

    def remove(self, name: str) -> None:
        """Delete the volume and its data.  Not mounted by anyone when called."""
        ...

    def mount(self, name: str, ref: str) -> str:
        """Make the volume's data available for ``ref`` (a container ID) and
        return its host path.  Called at every container start."""
        ...

    def unmount(self, name: str, ref: str) -> None:
        """Release what ``mount`` did for ``ref``.  Idempotent."""
        ...

    def path(self, name: str) -> str:
        """The host path of the volume's data if available now, else ``""``."""
        ...

    def get(self, name: str) -> VolumeInfo:
        """The volume's details; ``KeyError`` when the driver has no such volume."""
        ...

    def list(self) -> list[VolumeInfo]:
        """Every volume the driver has (the daemon reconciles with its records)."""
        ...

    def capabilities(self) -> Mapping[str, Any]:
        """Docker's ``Capabilities``: ``{"Scope": "local"}`` or ``{"Scope": "global"}``."""
        ...


@dataclass
class VolumeContext:
    """What a volume driver factory receives."""

    home: str  #: ``<data-root>/volumes``: the driver's directory for its volumes' data
    data_root: str


class VolumeFactory(Protocol):
    def __call__(self, ctx: VolumeContext) -> VolumeDriver:
        """Build the driver, or raise ``DriverNotSupported`` saying why not."""
        ...


# ---------------------------------------------------------------------------
# What lifecycle hooks see
# ---------------------------------------------------------------------------


class ContainerView(Protocol):
    """The read-only face of a container that lifecycle hooks receive."""

    id: str
    name: str
    config: Mapping[str, Any]  #: Docker's container Config (Image, Cmd, Env, ...)
    host_config: Mapping[str, Any]  #: Docker's HostConfig
    root: str  #: ``<data-root>/containers/<id>``


# ---------------------------------------------------------------------------
# The hookspecs
# ---------------------------------------------------------------------------


class SkiffSpec:
    """Hook specifications.  Implement any subset with ``@hookimpl``.

    Every hook here but ``skiff_security_options`` is called on the daemon's
    event loop and must not block (see the module docstring): discovery hooks
    once at start, lifecycle broadcasts in the middle of a request or a
    container's start and stop.
    """

    # -- discovery ---------------------------------------------------------

    @hookspec
    def skiff_storage_drivers(self) -> Mapping[str, StorageFactory]:
        """Storage drivers this plugin provides, by name (``overlay2``)."""

    @hookspec
    def skiff_network_drivers(self) -> Mapping[str, NetworkFactory]:
        """Network drivers this plugin provides, by name (``bridge``, ``host``)."""

    @hookspec
    def skiff_log_drivers(self) -> Mapping[str, LogFactory]:
        """Log drivers this plugin provides, by name (``json-file``)."""

    @hookspec
    def skiff_runtimes(self) -> Mapping[str, RuntimeFactory]:
        """Container runtimes (isolation kind) this plugin provides, by name."""

    @hookspec
    def skiff_cgroup_drivers(self) -> Mapping[str, CgroupFactory]:
        """Cgroup drivers (limits kind) this plugin provides, by name (``cgroupfs``)."""

    @hookspec
    def skiff_traffic_shapers(self) -> Mapping[str, TrafficShaperFactory]:
        """Traffic shapers (limits kind) this plugin provides, by name (``tc``).

        Declare the module under the ``skiff.limits`` entry-point group.  The
        daemon builds one at start, ``tc`` when installed, else the first by
        name; it applies the ``skiff.net.*`` bandwidth options.  Added in 2.6.
        """

    @hookspec
    def skiff_volume_drivers(self) -> Mapping[str, VolumeFactory]:
        """Volume drivers this plugin provides, by name (``local``).

        Declare the module under the ``skiff.volume`` entry-point group.  The
        daemon builds each driver once, on first use, with a ``VolumeContext``;
        ``docker volume create --driver NAME`` and ``HostConfig.VolumeDriver``
        choose among them.
        """

    # -- lifecycle broadcasts ----------------------------------------------

    @hookspec
    def skiff_daemon_config_check(self, config: Mapping[str, Any]) -> None:
        """Check the daemon.json settings this plugin owns, as the daemon starts.

        Called once, before any driver is built.  Raise ``ValueError`` with
        a message naming the setting and what to do about it: the daemon
        then refuses to start with that message, rather than failing the
        first container that needs the setting.  The plugin may prepare
        what the settings call for (read a file they name, compile
        something) so that no container start pays for it.  Must not change
        ``config``.
        """

    @hookspec
    def skiff_daemon_start(self, config: Mapping[str, Any]) -> None:
        """The daemon configured itself and is about to serve the API."""

    @hookspec
    def skiff_daemon_shutdown(self, config: Mapping[str, Any]) -> None:
        """The daemon stopped serving and is about to exit."""

    @hookspec
    def skiff_security_options(self, config: Mapping[str, Any]) -> Iterable[str]:
        """What this plugin enforces, as ``docker info``'s ``SecurityOptions``
        entries (``name=seccomp,profile=default``, ``name=no-new-privileges``).

        List only what is really enforced on this host with this
        configuration: an operator reads this to know what protects them.
        Called from a worker thread (``docker info``), not the event loop.
        """

    @hookspec
    def skiff_container_validate(
        self, config: Mapping[str, Any], host_config: Mapping[str, Any],
        daemon_config: Mapping[str, Any],
    ) -> None:
        """Check, at create, the settings of a container that this plugin owns.

        ``config`` and ``host_config`` are the create request's (Docker's
        ``Config`` and ``HostConfig``, the image's defaults merged in).  Raise
        ``ValueError`` with a message for the client (what was wrong, what to
        do) to refuse the create with a 400; nothing exists yet then.  A
        setting the plugin cannot honour must be refused here, never accepted
        and ignored.  Must not change its arguments.
        """

    @hookspec
    def skiff_container_create(self, container: ContainerView) -> None:
        """A container was created (its layers and files exist)."""

    @hookspec
    def skiff_container_spec(
        self, container: ContainerView, spec: ContainerSpec, daemon_config: Mapping[str, Any]
    ) -> None:
        """Amend the spec before the runtime prepares the process.

        Isolation features hook in here: a plugin may add or drop
        capabilities, mask paths, add mounts, set the seccomp filter.  Called
        on every start.  ``daemon_config`` is the daemon's configuration
        (``no-new-privileges``, ``seccomp-profile`` ...).
        """

    @hookspec
    def skiff_container_prestart(self, container: ContainerView, pid: int) -> None:
        """The container's process exists (namespaces set up) but has not exec'd.

        Raising here aborts the start: the process is killed and the error is
        reported to the client.
        """

    @hookspec
    def skiff_container_poststop(self, container: ContainerView, exit_code: int) -> None:
        """The container's process ended and was reaped."""

    @hookspec
    def skiff_container_remove(self, container: ContainerView) -> None:
        """The container is about to be deleted; release what you keep for it."""


def merge_named(results: Iterable[Mapping[str, Any]], kind: str) -> dict[str, Any]:
    """Merge discovery-hook results; the same name from two plugins is an error."""
    merged: dict[str, Any] = {}
    for mapping in results:
        for name, factory in mapping.items():
            if name in merged and merged[name] is not factory:
                raise ValueError(f"two plugins provide a {kind} driver named {name!r}")
            merged[name] = factory
    return merged
