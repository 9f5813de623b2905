"""``POST /build`` (the classic builder's API) and ``POST /build/prune``.

The request body is the build context, a tar (plain, gzip, bzip2 or xz); the
query holds the options.  Options and the context are checked before
anything is streamed, so a bad one is a plain 400 the CLI prints as ``Error
response from daemon``; once the build runs, its messages stream as
dockerd's (``{"stream": "Step 1/3 : ..."}``) and a failure is the stream's
last line, ``errorDetail`` with the exit code for a failed RUN.  The domain
work is :mod:`skiff.core.builder`.
"""

from __future__ import annotations

import json
from typing import IO, TYPE_CHECKING, Any

import trio

from skiff.core import metrics
from skiff.core.api.bridge import feed_sync_consumer
from skiff.core.api.commit import timestamp
from skiff.core.api.distribution import progress_response
from skiff.core.api.filters import parse_filters
from skiff.core.api.router import Request, Router, StreamResponse
from skiff.core.api.streams import json_line
from skiff.core.builder.options import BuildOptions, check_platform
from skiff.core.errors import InvalidParameter

if TYPE_CHECKING:
    from skiff.core.builder.context import BuildContext
    from skiff.core.engine import Engine

# The builder itself (executor, context, prune) is imported by the first build:
# a daemon's start does not pay for the Dockerfile machinery it may never run.

#: query options dockerd's classic builder takes that skiff refuses, and why
_REFUSED = {
    "squash": "squash is not supported: it needs dockerd's experimental mode; skiff "
              "builds the layers as the Dockerfile makes them",
    "remote": "remote build contexts (a git or HTTP URL as the context) are not supported: "
              "send the context as the request body (docker build <dir>)",
    "outputs": "outputs are a BuildKit feature; the classic builder stores the image",
}

#: the resource options of RUN's containers, query name -> HostConfig field
_RESOURCES = {"memory": "Memory", "memswap": "MemorySwap", "cpushares": "CpuShares",
              "cpuperiod": "CpuPeriod", "cpuquota": "CpuQuota"}


def _json_option(req: Request, name: str, kind: type) -> Any:
    raw = req.q(name)
    if raw in (None, ""):
        return kind()
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidParameter(f"{name} must be JSON ({kind.__name__}); got {raw!r}") from None
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise InvalidParameter(f"{name} must be a JSON {kind.__name__}; got {raw!r}")
    return value


def build_options(req: Request) -> BuildOptions:
    """The options of ``POST /build``'s query, checked (400 on a bad one)."""
    for name, why in _REFUSED.items():
        value = req.q(name, "")
        if value and value not in ("0", "false", "False", "[]", "null"):
            raise InvalidParameter(why)
    if req.q("version", "1") not in ("", "1"):
        raise InvalidParameter("BuildKit (builder version 2) is not supported by skiffd; "
                               "use the classic builder (DOCKER_BUILDKIT=0)")
    check_platform(req.q("platform", ""))
    build_args = _json_option(req, "buildargs", dict)
    labels = _json_option(req, "labels", dict)
    cache_from = _json_option(req, "cachefrom", list)
    for key, value in build_args.items():
        if value is not None and not isinstance(value, str):
            raise InvalidParameter(f"buildargs: the value of {key} must be a string or null")
    for key, value in labels.items():
        if not isinstance(value, str):
            raise InvalidParameter(f"labels: the value of {key} must be a string")
    resources: dict[str, Any] = {}
    for name, field in _RESOURCES.items():
        if req.q(name):
            resources[field] = req.qint(name)
    for name, field in (("cpusetcpus", "CpusetCpus"), ("cpusetmems", "CpusetMems"),
                        ("cgroupparent", "CgroupParent")):
        if req.q(name):
            resources[field] = req.q(name)
    ulimits = _json_option(req, "ulimits", list)
    if ulimits:
        resources["Ulimits"] = ulimits
    isolation = req.q("isolation", "")
    if isolation not in ("", "default"):
        raise InvalidParameter(f"isolation {isolation!r} is not supported on Linux")
    if req.query.get("securityopt"):
        raise InvalidParameter("securityopt is not supported for builds: RUN steps get the "
                               "daemon's default confinement")
    dockerfile = req.q("dockerfile", "") or "Dockerfile"
    target = req.q("target", "") or None
    return BuildOptions(
        tags=tuple(t for t in req.query.get("t", []) if t),
        dockerfile=dockerfile, build_args=build_args, target=target,
        nocache=req.qbool("nocache"), pull=req.qbool("pull"),
        rm=req.qbool("rm", True), forcerm=req.qbool("forcerm"), labels=labels,
        network_mode=req.q("networkmode", "") or "default",
        cache_from=tuple(str(c) for c in cache_from), shm_size=req.qint("shmsize"),
        extra_hosts=tuple(h for v in req.query.get("extrahosts", []) for h in v.split(",")
                          if h),
        quiet=req.qbool("q"), resources=resources)


def _error_line(exc: BaseException) -> bytes:
    from skiff.core.api.errors import status_and_message, unwrap
    from skiff.core.builder.executor import StepFailed

    inner = unwrap(exc)
    message = status_and_message(exc)[1]
    detail: dict[str, Any] = {"message": message}
    if isinstance(inner, StepFailed):
        detail["code"] = inner.code
    return json_line({"errorDetail": detail, "error": message})


def register(router: Router, engine: Engine) -> None:
    builds = engine.builds

    @router.route("POST", "/build")
    async def build(req: Request) -> StreamResponse:
        from skiff.core.builder.context import receive_context
        from skiff.core.builder.executor import Build, failure_reason

        options = build_options(req)
        length = req.headers.get("content-length")
        if length and length.isdigit() and int(length) > builds.max_context_size:
            raise InvalidParameter(
                f"the build context is larger than the daemon allows "
                f"({builds.max_context_size} bytes); exclude files with .dockerignore or "
                "raise builder-max-context-size in daemon.json")

        def consume(stream: IO[bytes]) -> BuildContext:
            return receive_context(stream, spool_dir=builds.spool_dir,
                                   dockerfile=options.dockerfile,
                                   max_size=builds.max_context_size, index=engine.stat_index,
                                   memory_spool=builds.memory_spool)

        context = await feed_sync_consumer(req.body_stream(), consume, engine.transfers)
        metrics.builds_triggered.inc()
        try:
            job = Build(builds, options, context)
        except BaseException as exc:
            metrics.builds_failed.inc(failure_reason(exc))
            await engine.to_thread(context.close)
            raise

        async def work(emit: Any) -> None:
            try:
                await job.run(emit)
            except BaseException as exc:
                metrics.builds_failed.inc(failure_reason(exc))
                raise
            finally:
                with trio.CancelScope(shield=True):
                    await engine.to_thread(context.close)

        response = await progress_response(engine, work)
        response.on_error = _error_line
        return response

    @router.route("POST", "/build/prune")
    async def prune(req: Request) -> dict[str, Any]:
        from skiff.core.builder.prune import prune_cache

        flt = parse_filters(req.q("filters"))
        until = None
        for key in ("until", "unused-for"):
            if flt.get(key):
                until = timestamp(flt[key][0])
        users: dict[str, list[tuple[str, bool]]] = {}
        for c in list(engine.containers.by_id.values()):
            users.setdefault(c.image_id, []).append((c.id, bool(c.state.Running)))

        def in_use(image_id: str) -> list[tuple[str, bool]]:
            return users.get(image_id, [])

        return await engine.to_thread(
            lambda: prune_cache(builds.cache, engine.images, engine.layers, in_use,
                                until=until))
