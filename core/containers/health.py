"""Healthchecks: Docker's probes of a running container and the state they lead to.

A container has a check when its Config.Healthcheck (its own, or the image's
merged in at create) has a Test other than ``["NONE"]``.  While it runs, one
trio task per container sleeps an Interval, runs the probe as an exec (the
same path as ``docker exec``, see ``healthprobe.py``) and records the result
in ``State.Health``: ``starting`` until the first success, then ``healthy``,
or ``unhealthy`` after Retries failures in a row; failures within the
StartPeriod of a container that never succeeded do not count.  A change of
status is a ``health_status: <status>`` event.

The tasks follow the container's own events (the registry's observers):
"start" begins one, "die" ends it.  Nothing here knows the manager.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import trio

from skiff.core import metrics
from skiff.core.timefmt import format_go_duration, parse_rfc3339, rfc3339_nano_trimmed

if TYPE_CHECKING:
    from skiff.core.containers.exec import Spawn
    from skiff.core.containers.model import Container
    from skiff.core.containers.registry import ContainerRegistry

log = structlog.get_logger("skiff.health")

SECOND_NS = 1_000_000_000
#: Docker's defaults for a field left 0 (nanoseconds; retries a count)
DEFAULT_INTERVAL_NS = 30 * SECOND_NS
DEFAULT_TIMEOUT_NS = 30 * SECOND_NS
DEFAULT_START_PERIOD_NS = 0
DEFAULT_RETRIES = 3
#: the shortest non-zero duration dockerd accepts (its MinimumDuration)
MIN_DURATION_NS = 1_000_000
#: results kept in State.Health.Log, and the bytes of output kept per result
MAX_LOG_ENTRIES = 5
MAX_OUTPUT = 4096
#: how a CMD-SHELL test runs when the image names no SHELL
DEFAULT_SHELL = ("/bin/sh", "-c")

STARTING, HEALTHY, UNHEALTHY, NONE = "starting", "healthy", "unhealthy", "none"
#: the values of the ``health`` filter of ``docker ps``
FILTER_VALUES = (STARTING, HEALTHY, UNHEALTHY, NONE)


# -- the config ------------------------------------------------------------------

class InvalidHealthcheck(ValueError):
    """A create request's Healthcheck dockerd would refuse; the message is dockerd's."""


#: the fields of Docker's HealthConfig at API 1.41, in its order
FIELDS = ("Test", "Interval", "Timeout", "StartPeriod", "Retries")


def merged(mine: Any, image: Any) -> dict[str, Any] | None:
    """Config.Healthcheck of a new container: the request's, each field it leaves
    unset (an empty Test, a 0) taken from the image's, as dockerd merges them.

    Only the known fields are kept, and only when set: dockerd's JSON omits
    empty ones (and a later API's StartInterval is not this version's).
    """
    if not isinstance(mine, Mapping) and not isinstance(image, Mapping):
        return None
    ours = mine if isinstance(mine, Mapping) else {}
    theirs = image if isinstance(image, Mapping) else {}
    return {key: ours.get(key) or theirs.get(key) for key in FIELDS
            if ours.get(key) or theirs.get(key)}


def check_config(hc: Any) -> None:
    """Refuse a create request's Healthcheck as dockerd does (400, its messages)."""
    if hc is None:
        return
    if not isinstance(hc, Mapping):
        raise InvalidHealthcheck("Healthcheck must be an object")
    test = hc.get("Test")
    if test is not None and (not isinstance(test, list)
                             or not all(isinstance(t, str) for t in test)):
        raise InvalidHealthcheck("Healthcheck.Test must be a list of strings")
    for key in ("Interval", "Timeout", "StartPeriod", "Retries"):
        value = hc.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidHealthcheck(f"Healthcheck.{key} must be an integer")
    minimum = format_go_duration(MIN_DURATION_NS)
    for key in ("Interval", "Timeout", "StartPeriod"):
        value = hc.get(key) or 0
        if value != 0 and value < MIN_DURATION_NS:
            raise InvalidHealthcheck(f"{key} in Healthcheck cannot be less than {minimum}")
    if (hc.get("Retries") or 0) < 0:
        raise InvalidHealthcheck("Retries in Healthcheck cannot be negative")


@dataclass(frozen=True)
class Check:
    """A container's probe and its timing, defaults applied (seconds)."""

    argv: tuple[str, ...]
    interval: float
    timeout: float
    start_period: float
    retries: int
    timeout_ns: int

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Check | None:
        """The check of a container's Config; None when it has none (or NONE)."""
        hc = config.get("Healthcheck")
        if not isinstance(hc, Mapping):
            return None
        test = list(hc.get("Test") or [])
        if not test or test[0] == "NONE":
            return None
        if test[0] == "CMD":
            argv = test[1:]
        elif test[0] == "CMD-SHELL":
            argv = [*(config.get("Shell") or DEFAULT_SHELL), *test[1:]]
        else:
            return None  # dockerd ignores a check of a kind it does not know
        if not argv:
            return None
        timeout_ns = int(hc.get("Timeout") or DEFAULT_TIMEOUT_NS)
        return cls(argv=tuple(argv),
                   interval=int(hc.get("Interval") or DEFAULT_INTERVAL_NS) / SECOND_NS,
                   timeout=timeout_ns / SECOND_NS,
                   start_period=int(hc.get("StartPeriod") or DEFAULT_START_PERIOD_NS)
                   / SECOND_NS,
                   retries=int(hc.get("Retries") or DEFAULT_RETRIES),
                   timeout_ns=timeout_ns)

    def timeout_message(self) -> str:
        return f"Health check exceeded timeout ({format_go_duration(self.timeout_ns)})"


# -- the state machine -----------------------------------------------------------

@dataclass(frozen=True)
class ProbeResult:
    """One probe: when it ran (Unix times), its exit code (-1: it did not run to
    an end) and its output, already capped."""

    start: float
    end: float
    exit_code: int
    output: str

    def log_entry(self) -> dict[str, Any]:
        return {"Start": rfc3339_nano_trimmed(int(self.start * SECOND_NS)),
                "End": rfc3339_nano_trimmed(int(self.end * SECOND_NS)),
                "ExitCode": self.exit_code, "Output": self.output}


def initial(previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """State.Health as a run begins: starting, the previous runs' log kept."""
    log_entries = list((previous or {}).get("Log") or [])
    return {"Status": STARTING, "FailingStreak": 0, "Log": log_entries}


def record(health: dict[str, Any], result: ProbeResult, *, started_at: float,
           check: Check) -> bool:
    """Apply one probe's result to ``health`` (State.Health, changed in place).

    Returns whether the status changed.  Only exit code 0 is a success.  A
    failure while still ``starting`` and within the start period (measured
    from the run's start to the probe's) is logged but not counted.
    """
    before = health.get("Status")
    entries = list(health.get("Log") or [])
    entries.append(result.log_entry())
    health["Log"] = entries[-MAX_LOG_ENTRIES:]
    if result.exit_code == 0:
        health["FailingStreak"] = 0
        health["Status"] = HEALTHY
    elif not (before == STARTING and result.start - started_at < check.start_period):
        health["FailingStreak"] = int(health.get("FailingStreak") or 0) + 1
        if health["FailingStreak"] >= check.retries:
            health["Status"] = UNHEALTHY
    return health.get("Status") != before


def status_of(health: Mapping[str, Any] | None) -> str:
    """What the ``health`` filter compares: the status, or ``none`` without a check."""
    return str(health.get("Status") or NONE) if health else NONE


def ps_suffix(health: Mapping[str, Any] | None) -> str:
    """The part of ``docker ps``'s "Up 3 seconds (healthy)" after the duration."""
    if not health:
        return ""
    status = health.get("Status") or STARTING
    return " (health: starting)" if status == STARTING else f" ({status})"


# -- the tasks -------------------------------------------------------------------

#: runs one probe (its argv) in a container within the check's timeout (``healthprobe``)
RunProbe = Callable[["Container", list[str], "Check"], Awaitable[ProbeResult]]


class HealthMonitor:
    """The probe tasks of one daemon's running containers.

    ``registry`` holds the containers and publishes their events; the monitor
    registers itself as an observer of them.  ``run_probe`` runs one probe,
    ``spawn`` starts a task in the daemon's nursery.
    """

    def __init__(self, registry: ContainerRegistry, run_probe: RunProbe,
                 spawn: Spawn) -> None:
        self.registry = registry
        self.run_probe = run_probe
        self.spawn = spawn
        self._scopes: dict[str, trio.CancelScope] = {}
        registry.observers.append(self.on_event)

    def on_event(self, c: Container, action: str) -> None:
        try:
            if action == "start":
                self.watch(c)
            elif action in ("die", "destroy"):
                self.unwatch(c)
        except Exception as exc:  # a check must never fail the start it follows
            log.error("container.health_failed", id=c.id, action=action, error=str(exc))

    def restore(self) -> None:
        """After the daemon started: a task for each container still running."""
        for c in list(self.registry.by_id.values()):
            if c.state.Running:
                self.watch(c)

    def watch(self, c: Container) -> None:
        """Begin probing ``c`` (its run just started): status starting."""
        self.unwatch(c)
        check = Check.of(c.config)
        if check is None:
            return
        c.state.Health = initial(c.state.Health)
        c.save()
        scope = trio.CancelScope()
        self._scopes[c.id] = scope
        self.spawn(self._probe_loop, c, check, scope)

    def unwatch(self, c: Container) -> None:
        scope = self._scopes.pop(c.id, None)
        if scope is not None:
            scope.cancel()

    async def _probe_loop(self, c: Container, check: Check, scope: trio.CancelScope) -> None:
        started_at = parse_rfc3339(c.state.StartedAt)
        try:
            with scope:
                while True:
                    await trio.sleep(check.interval)
                    if c.state.Paused:
                        continue  # an exec cannot run in a frozen container
                    metrics.health_checks.inc()
                    result = await self.run_probe(c, list(check.argv), check)
                    if result.exit_code == -1:
                        # dockerd's meaning: the probe did not run to an end (it
                        # could not start, or timed out); an unhealthy exit is a
                        # check that worked
                        metrics.health_checks_failed.inc()
                    if scope.cancel_called or c.state.Health is None:
                        return  # the run ended while the probe ran: not its result
                    self.apply(c, result, started_at, check)
        finally:
            if self._scopes.get(c.id) is scope:
                del self._scopes[c.id]

    def apply(self, c: Container, result: ProbeResult, started_at: float,
              check: Check) -> None:
        """Record ``result`` in ``c``'s State.Health, persist it, announce a change."""
        health = c.state.Health
        if health is None:
            return
        changed = record(health, result, started_at=started_at, check=check)
        if c.id in self.registry.by_id:
            c.save()
        if changed:
            self.registry.event(c, f"health_status: {health['Status']}")
            log.info("container.health", id=c.id, status=health["Status"],
                     streak=health["FailingStreak"])
