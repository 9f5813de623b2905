"""The daemon's metrics: the instruments the domain counts into, and their
Prometheus text (docs/metrics.md).

The format is written here rather than with prometheus_client: measured on
this machine, its text exposition took 26 ms for 100 labelled histograms (the
trio loop stands still meanwhile) and an increment through ``labels()`` about
2.4 us; these take a tenth of that (numbers in docs/metrics.md).  The
instruments are module-level, as dockerd's are, so that counting an action is
one line where the action is, not a collaborator handed through every
constructor.  What belongs to one engine (the containers by state) or to
another module (log messages dropped) is read at each scrape through a
function registered with :func:`on_scrape`.

Increments take a lock: image actions run in worker threads.
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "REGISTRY",
    "Counter",
    "Histogram",
    "Registry",
    "count_dropped_log_entries",
    "on_scrape",
    "timed",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Prometheus's default buckets (Go's DefBuckets), which dockerd's timers use
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                      10.0)

F = TypeVar("F", bound=Callable[..., Any])
#: what a scrape-time function returns: (label values, value) pairs
Samples = Iterable[tuple[Sequence[str], float]]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def number(value: float) -> str:
    """A sample value as Prometheus writes it: integers without a point, +Inf."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values,
                                                                       strict=True)) + "}"


class _Family:
    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _check(self, values: tuple[str, ...]) -> None:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")

    def header(self) -> str:
        return (f"# HELP {self.name} {_escape_help(self.documentation)}\n"
                f"# TYPE {self.name} {self.kind}\n")

    def lines(self) -> Iterator[str]:
        raise NotImplementedError


class Counter(_Family):
    """A monotonic count, optionally per label values."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 initial: Iterable[Sequence[str]] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        #: label values -> [rendered labels, count]; the text of the labels is
        #: made once, when a series first appears, not at every scrape
        self._series: dict[tuple[str, ...], list[Any]] = {}
        if not self.labelnames:
            self._series[()] = ["", 0.0]
        for values in initial:
            self.inc(*values, amount=0)

    def inc(self, *values: str, amount: float = 1.0) -> None:
        with self._lock:
            series = self._series.get(values)
            if series is None:
                self._check(values)
                series = self._series[values] = [_labels(self.labelnames, values), 0.0]
            series[1] += amount

    def value(self, *values: str) -> float:
        series = self._series.get(values)
        return 0.0 if series is None else float(series[1])

    def lines(self) -> Iterator[str]:
        with self._lock:
            rows = [(text, count) for text, count in self._series.values()]
        for text, count in rows:
            yield f"{self.name}{text} {number(count)}\n"


class Histogram(_Family):
    """Durations in seconds per label values: dockerd's "timers"."""

    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = DEFAULT_BUCKETS,
                 initial: Iterable[Sequence[str]] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._le = [number(b) for b in self.buckets] + ["+Inf"]
        #: label values -> [label prefix, sum, count per bucket (not cumulative; last: +Inf)]
        self._series: dict[tuple[str, ...], list[Any]] = {}
        for values in initial:
            self._get(tuple(values))

    def _get(self, values: tuple[str, ...]) -> list[Any]:
        series = self._series.get(values)
        if series is None:
            self._check(values)
            prefix = "".join(f'{n}="{_escape_label(v)}",'
                             for n, v in zip(self.labelnames, values, strict=True))
            series = self._series[values] = [prefix, 0.0, [0] * (len(self.buckets) + 1)]
        return series

    def observe(self, seconds: float, *values: str) -> None:
        with self._lock:
            series = self._get(values)
            series[1] += seconds
            series[2][bisect_left(self.buckets, seconds)] += 1

    @contextmanager
    def time(self, *values: str) -> Iterator[None]:
        """Observe how long the block took, when it ends without an exception
        (dockerd records an action's time only when it succeeded)."""
        started = time.perf_counter()
        yield
        self.observe(time.perf_counter() - started, *values)

    def count(self, *values: str) -> int:
        series = self._series.get(values)
        return 0 if series is None else sum(series[2])

    def lines(self) -> Iterator[str]:
        with self._lock:
            rows = [(prefix, total, list(counts)) for prefix, total, counts in
                    self._series.values()]
        name = self.name
        for prefix, total, counts in rows:
            cumulative = 0
            for le, n in zip(self._le, counts, strict=True):
                cumulative += n
                yield f'{name}_bucket{{{prefix}le="{le}"}} {cumulative}\n'
            labels = "{" + prefix[:-1] + "}" if prefix else ""
            yield f"{name}_sum{labels} {number(total)}\n"
            yield f"{name}_count{labels} {cumulative}\n"


class _Callback(_Family):
    """A family whose samples a function gives at each scrape."""

    def __init__(self, name: str, documentation: str, kind: str,
                 read: Callable[[], Samples | float], labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self.kind = kind
        self.read = read

    def lines(self) -> Iterator[str]:
        got = self.read()
        samples: Samples = [((), got)] if isinstance(got, int | float) else got
        for values, value in samples:
            yield f"{self.name}{_labels(self.labelnames, values)} {number(value)}\n"


class Registry:
    """The families one scrape shows, in the order they were added."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def add(self, family: _Family) -> Any:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} is already registered")
        self._families[family.name] = family
        return family

    def replace(self, family: _Family) -> None:
        """Add ``family``, or put it in place of the one of the same name."""
        self._families[family.name] = family

    def remove(self, name: str) -> None:
        self._families.pop(name, None)

    def names(self) -> list[str]:
        return list(self._families)

    def render(self) -> bytes:
        """The text exposition format (version 0.0.4) of every family.

        A scrape-time function that fails costs its own family, never the
        scrape: the others are still worth having.
        """
        parts: list[str] = []
        for family in list(self._families.values()):
            try:
                body = list(family.lines())
            except Exception as exc:
                parts.append(f"# {family.name}: not read: "
                             f"{_escape_help(str(exc) or type(exc).__name__)}\n")
                continue
            parts.append(family.header())
            parts.extend(body)
        return "".join(parts).encode("utf-8")


REGISTRY = Registry()


def on_scrape(name: str, documentation: str, read: Callable[[], Samples | float], *,
              kind: str = "gauge", labelnames: Sequence[str] = ()) -> None:
    """Show ``read()`` as metric ``name`` at each scrape; registering a name
    again replaces the earlier function (a new engine in the same process).

    ``read`` runs on the event loop during the scrape: it must be quick and
    must not block.  It returns a number, or (label values, value) pairs.
    """
    if kind not in ("gauge", "counter"):
        raise ValueError(f"kind must be gauge or counter, not {kind!r}")
    REGISTRY.replace(_Callback(name, documentation, kind, read, labelnames))


def count_dropped_log_entries(read: Callable[[], int]) -> None:
    """Where ``logger_log_entries_dropped_total`` comes from: ``read()`` is the
    number of log messages dropped by non-blocking delivery since the daemon
    started (``core/containers/logdelivery.dropped_total``)."""
    on_scrape("logger_log_entries_dropped_total",
              "Number of log messages dropped because the log driver could not keep up "
              "(mode=non-blocking)", read, kind="counter")


def timed(histogram: Histogram, *values: str) -> Callable[[F], F]:
    """Decorate a function, sync or async, to observe its duration under
    ``values`` when it returns (not when it raises)."""
    def deco(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                result = await fn(*args, **kwargs)
                histogram.observe(time.perf_counter() - started, *values)
                return result
            return cast(F, run_async)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = fn(*args, **kwargs)
            histogram.observe(time.perf_counter() - started, *values)
            return result
        return cast(F, run)
    return deco


# -- the engine's instruments (names as dockerd's where dockerd has the metric) --

#: dockerd's actions, pre-declared so the series exist before the first one;
#: stop is skiff's own addition (dockerd does not time it)
CONTAINER_ACTIONS = ("changes", "commit", "create", "delete", "start", "stop")
container_actions: Histogram = REGISTRY.add(Histogram(
    "engine_daemon_container_actions_seconds",
    "The number of seconds it takes to process each container action", ("action",),
    initial=[(a,) for a in CONTAINER_ACTIONS]))

IMAGE_ACTIONS = ("delete", "history", "import", "load", "pull", "push", "save", "tag")
image_actions: Histogram = REGISTRY.add(Histogram(
    "engine_daemon_image_actions_seconds",
    "The number of seconds it takes to process each image action", ("action",),
    initial=[(a,) for a in IMAGE_ACTIONS]))

health_checks: Counter = REGISTRY.add(Counter(
    "engine_daemon_health_checks_total", "The total number of health checks"))
health_checks_failed: Counter = REGISTRY.add(Counter(
    "engine_daemon_health_checks_failed_total", "The total number of failed health checks"))

events: Counter = REGISTRY.add(Counter(
    "engine_daemon_events_total", "The number of events logged"))

#: dockerd's reasons of a failed build
BUILD_FAILURES = ("build_canceled", "build_target_not_reachable_error",
                  "command_not_supported_error", "dockerfile_empty_error",
                  "dockerfile_syntax_error", "error_processing_commands_error",
                  "missing_onbuild_arguments_error", "unknown_instruction_error")
builds_triggered: Counter = REGISTRY.add(Counter(
    "builder_builds_triggered_total", "Number of triggered image builds"))
builds_failed: Counter = REGISTRY.add(Counter(
    "builder_builds_failed_total", "Number of failed image builds", ("reason",),
    initial=[(r,) for r in BUILD_FAILURES]))

# skiff's own: dockerd has no metric of its API
api_requests: Counter = REGISTRY.add(Counter(
    "skiff_api_requests_total",
    "API requests answered, by operation (method and route) and HTTP status",
    ("operation", "status")))
api_request_seconds: Histogram = REGISTRY.add(Histogram(
    "skiff_api_request_duration_seconds",
    "Seconds from a request's arrival to the end of its answer (streams: to their end)",
    ("operation",)))


def observe_request(operation: str, status: str, seconds: float) -> None:
    """One API request answered (the API server calls it while metrics are on)."""
    api_requests.inc(operation, status)
    api_request_seconds.observe(seconds, operation)
