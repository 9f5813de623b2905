"""Restart policies: ``--restart no|always|on-failure[:N]|unless-stopped``.

The decision is a pure function (:func:`decide`) with Docker's rules
(moby's ``restartmanager``): no restart after a stop or kill through the
API, ``on-failure`` only for non-zero exit codes and at most N times,
``always`` and ``unless-stopped`` every time.  The delay before a restart
starts at 100 ms and doubles with every restart up to a minute; it falls
back to 100 ms once a run lasted at least 10 seconds.

:class:`RestartSupervisor` applies decisions to a daemon's containers: it
keeps the back-off per container, waits in the engine's nursery, and starts
the container again unless a ``docker stop`` cancelled the wait meanwhile.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from skiff.core.containers.model import ZERO_TIME, Container, State
from skiff.core.containers.registry import ContainerRegistry, Track
from skiff.core.errors import InvalidParameter
from skiff.core.timefmt import now_rfc3339, parse_rfc3339

log = structlog.get_logger("skiff.containers.restart")

POLICIES = ("no", "always", "on-failure", "unless-stopped")
#: Docker's first delay, its multiplier and its ceiling (seconds)
FIRST_DELAY = 0.1
BACKOFF = 2
MAX_DELAY = 60.0
#: a run at least this long resets the back-off
RESET_AFTER = 10.0


@dataclass(frozen=True)
class Policy:
    """A parsed HostConfig.RestartPolicy."""

    name: str = "no"
    max_retry: int = 0

    @classmethod
    def of(cls, host_config: Mapping[str, Any]) -> Policy:
        rp = host_config.get("RestartPolicy") or {}
        return cls(rp.get("Name") or "no", int(rp.get("MaximumRetryCount") or 0))

    @property
    def none(self) -> bool:
        return self.name == "no"


@dataclass(frozen=True)
class Decision:
    """Whether to restart, after how long, and the back-off to remember."""

    restart: bool
    delay: float  #: the back-off after this exit (kept even when not restarting)


def validate(policy: Mapping[str, Any] | None, auto_remove: bool = False) -> dict[str, Any]:
    """Docker's checks of a RestartPolicy; the normalised policy or ``ValueError``."""
    rp = dict(policy or {})
    name = rp.get("Name") or "no"
    try:
        count = int(rp.get("MaximumRetryCount") or 0)
    except (TypeError, ValueError):
        raise ValueError("invalid restart policy: maximum retry count must be an integer"
                         ) from None
    # dockerd's words: clients and scripts match on them; no name at all is
    # "no", whatever the count (dockerd does not check it then)
    given = rp.get("Name") or ""
    if given in ("always", "unless-stopped", "no"):
        if count != 0:
            raise ValueError(
                f"maximum retry count cannot be used with restart policy '{name}'")
    elif given == "on-failure":
        if count < 0:
            raise ValueError("maximum retry count cannot be negative")
    elif given:
        raise ValueError(f"invalid restart policy '{name}'")
    if auto_remove and name != "no":
        raise ValueError("can't create 'AutoRemove' container with restart policy")
    return {"Name": given, "MaximumRetryCount": count}


def checked(host_config: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`validate` of a create request's HostConfig; ``InvalidParameter``."""
    try:
        return validate(host_config.get("RestartPolicy"), bool(host_config.get("AutoRemove")))
    except ValueError as exc:
        raise InvalidParameter(str(exc)) from exc


def next_delay(previous: float, ran_for: float) -> float:
    """The back-off after a run of ``ran_for`` seconds that followed ``previous``."""
    if ran_for >= RESET_AFTER:
        previous = 0.0
    if previous <= 0:
        return FIRST_DELAY
    return min(previous * BACKOFF, MAX_DELAY)


def decide(policy: Policy, exit_code: int, *, manually_stopped: bool, restart_count: int,
           ran_for: float, previous_delay: float, cancelled: bool = False,
           shutting_down: bool = False) -> Decision:
    """Docker's ``ShouldRestart``: pure, so it is tested without a daemon.

    ``cancelled``: this run was stopped or killed through the API, so no
    policy restarts it now.  ``manually_stopped``: the persistent flag, which
    keeps only ``unless-stopped`` down (also when the daemon starts again).
    """
    delay = next_delay(previous_delay, ran_for)
    if policy.none or cancelled or shutting_down:
        return Decision(False, delay)
    if policy.name == "always":
        return Decision(True, delay)
    if policy.name == "unless-stopped":
        return Decision(not manually_stopped, delay)
    if policy.name == "on-failure":
        within = policy.max_retry == 0 or restart_count < policy.max_retry
        return Decision(within and exit_code != 0, delay)
    return Decision(False, delay)


def should_autostart(c: Container) -> bool:
    """Whether the daemon starts a stopped container when it starts: Docker asks
    its restart manager as if the container had just exited."""
    s = c.state
    if s.Running or s.StartedAt in ("", ZERO_TIME):
        return False  # never started: Docker's HasBeenStartedBefore
    try:
        ran_for = parse_rfc3339(s.FinishedAt) - parse_rfc3339(s.StartedAt)
    except ValueError:
        ran_for = 0.0
    return decide(Policy.of(c.host_config), s.ExitCode, manually_stopped=c.manually_stopped,
                  restart_count=c.restart_count, ran_for=ran_for, previous_delay=0.0).restart


class RestartSupervisor:
    """The pending restarts and the back-off of one daemon's containers."""

    def __init__(self, registry: ContainerRegistry, *,
                 start_run: Callable[[Container, Track], Awaitable[None]],
                 start: Callable[[str], Awaitable[None]],
                 remove: Callable[..., Awaitable[None]],
                 spawn: Callable[..., None]) -> None:
        self.registry = registry
        #: start a container's next run; the caller holds its track's lock
        self.start_run = start_run
        #: ``docker start`` and ``docker rm`` (``remove(ref, force=...)``)
        self.start = start
        self.remove = remove
        #: start a background task in the daemon's nursery
        self.spawn = spawn
        self.delays: dict[str, float] = {}
        self.pending: dict[str, trio.CancelScope] = {}
        self.shutting_down = False

    # -- hooks the lifecycle calls ------------------------------------------------

    def user_start(self, c: Container) -> None:
        """``docker start``/``restart``: a fresh restart count and back-off."""
        self.cancel(c)
        c.restart_count = 0
        c.manually_stopped = False
        self.delays.pop(c.id, None)

    def user_stop(self, c: Container) -> bool:
        """``docker stop``/``kill``: no restart after this exit.

        True if the container was waiting to restart (it is stopped now).
        """
        c.manually_stopped = True
        was_waiting = self.cancel(c)
        if c.id in self.registry.by_id:
            c.save()
        return was_waiting

    def cancel(self, c: Container) -> bool:
        """Cancel a pending restart; the container becomes exited.  True if one was."""
        scope = self.pending.pop(c.id, None)
        if scope is None:
            return False
        scope.cancel()
        s = c.state
        c.state = State(Status="exited", ExitCode=s.ExitCode, StartedAt=s.StartedAt,
                        FinishedAt=s.FinishedAt, OOMKilled=s.OOMKilled, Health=s.Health)
        if c.id in self.registry.by_id:
            c.save()
        return True

    def after_exit(self, c: Container, code: int) -> bool:
        """Called when the container's process ended, after its state became exited.

        When the policy says so, the state becomes ``restarting``, the
        restart count grows and a start is scheduled after the back-off.
        """
        try:
            ran_for = parse_rfc3339(c.state.FinishedAt) - parse_rfc3339(c.state.StartedAt)
        except ValueError:
            ran_for = 0.0
        decision = decide(
            Policy.of(c.host_config), code, manually_stopped=c.manually_stopped,
            cancelled=c.manually_stopped, restart_count=c.restart_count, ran_for=ran_for,
            previous_delay=self.delays.get(c.id, 0.0), shutting_down=self.shutting_down,
        )
        self.delays[c.id] = decision.delay
        if not decision.restart or c.id not in self.registry.by_id:
            return False
        c.restart_count += 1
        s = c.state
        c.state = State(Status="restarting", Restarting=True, ExitCode=s.ExitCode,
                        StartedAt=s.StartedAt, FinishedAt=s.FinishedAt, OOMKilled=s.OOMKilled,
                        Health=s.Health)
        scope = trio.CancelScope()
        self.pending[c.id] = scope
        self.spawn(self._restart_later, c, scope, decision.delay)
        log.info("container.restart_scheduled", id=c.id, count=c.restart_count,
                 delay=decision.delay)
        return True

    def forget(self, c: Container) -> None:
        """The container is being removed: its last exit must not schedule a restart."""
        c.manually_stopped = True
        self.cancel(c)
        self.delays.pop(c.id, None)

    async def _restart_later(self, c: Container, scope: trio.CancelScope, delay: float) -> None:
        with scope:
            await trio.sleep(delay)
            track = self.registry.tracks.get(c.id)
            if track is None or c.id not in self.registry.by_id:
                return
            async with track.lock:
                if self.pending.get(c.id) is not scope or c.state.Running:
                    return
                del self.pending[c.id]
                try:
                    await self.start_run(c, track)
                except Exception as exc:
                    log.error("container.restart_failed", id=c.id, error=str(exc))
                    s = c.state
                    c.state = State(Status="exited", ExitCode=s.ExitCode or 128,
                                    StartedAt=s.StartedAt, FinishedAt=now_rfc3339(),
                                    Error=str(exc), Health=s.Health)
                    if c.id in self.registry.by_id:
                        c.save()
                    track.hub.end_run()

    # -- daemon start and stop ------------------------------------------------

    def on_restore(self, c: Container) -> None:
        """A record loaded at start-up: a wait for a restart did not survive."""
        if c.state.Restarting or c.state.Status == "restarting":
            s = c.state
            c.state = State(Status="exited", ExitCode=s.ExitCode, StartedAt=s.StartedAt,
                            FinishedAt=s.FinishedAt, OOMKilled=s.OOMKilled, Health=s.Health)
            c.save()

    async def after_restore(self) -> None:
        """Remove the ``--rm`` containers that exited while the daemon was down and
        start those whose policy says so; finish the removals a crash cut short."""
        for c in list(self.registry.by_id.values()):
            if c.state.Status == "removing":
                # Dead, as dockerd shows a container whose removal failed, so the
                # removal is not refused as one already in progress
                c.state.Status, c.state.Dead = "dead", True
                try:
                    await self.remove(c.id, force=True)
                    log.warning("container.interrupted_removal_finished", id=c.id)
                except Exception as exc:
                    log.error("container.interrupted_removal_failed", id=c.id,
                              error=str(exc))
        for c in list(self.registry.by_id.values()):
            if (c.host_config.get("AutoRemove") and not c.state.Running
                    and not should_autostart(c)):
                try:
                    await self.remove(c.id, force=True)
                except Exception as exc:
                    log.error("container.autoremove_failed", id=c.id, error=str(exc))
        for c in list(self.registry.by_id.values()):
            if not should_autostart(c):
                continue
            try:
                await self.start(c.id)
            except Exception as exc:
                log.error("container.autostart_failed", id=c.id, error=str(exc))
            else:
                log.info("container.autostart", id=c.id)

    def shutdown(self) -> None:
        """The daemon is stopping: its containers exit, and none restarts now."""
        self.shutting_down = True
        for scope in self.pending.values():
            scope.cancel()
        self.pending.clear()
