"""Where a container's mounts may not go: shared by the daemon's checks at
create and the runtime's own, made again on what a destination resolves to.

Kept free of imports: the container init (in the fork server) reads it.
"""

#: destinations no mount may replace: the runtime makes them itself, and a
#: replaced one is how masks get redirected onto the host (an image's
#: ``VOLUME /dev`` holding ``dev/null -> /proc/sys/kernel/core_pattern``,
#: CVE-2025-31133 class); the OCI runtimes refuse them too
SYSTEM_DESTINATIONS = ("/proc", "/sys", "/dev")

#: files in /proc a bind mount may cover (what LXCFS and the like provide),
#: the same few runc allows
PROC_BIND_ALLOWED = frozenset((
    "/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
    "/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
))
