"""One build: the stages of a Dockerfile run step by step into images.

:class:`Build` is made from the options and the received context (parsing
and planning there, so a bad Dockerfile is a plain 400 before any output),
then :meth:`Build.run` builds the stages the target needs, independent
stages at the same time (:func:`skiff.core.dockerfile.stages.build_layers`),
and streams dockerd's messages in dockerd's order
(:mod:`skiff.core.builder.output`).

Each step is looked up in the cache first (:mod:`skiff.core.builder.cache`);
a miss runs it:

- metadata instructions (ENV, LABEL, CMD, ARG ...) make an image with the
  same layers and the new config, no container, no layer;
- RUN creates one of the engine's containers from the current image (the
  engine's runtime, cgroups, network and storage driver), streams its
  output, and commits its read-write layer when it exits with 0;
- COPY, ADD and WORKDIR write into a bare read-write layer
  (:mod:`skiff.core.builder.rootfs`).

If the client goes away the build is cancelled: a running step's container
is killed and removed, bare layers are dropped, and nothing is half made
(an image is stored whole or not at all).
"""

from __future__ import annotations

import codecs
import contextlib
import functools
from collections.abc import Callable
from typing import Any

import structlog
import trio

from skiff.core.builder import copying
from skiff.core.builder.cache import step_key
from skiff.core.builder.context import BuildContext
from skiff.core.builder.options import BuildOptions, check_platform
from skiff.core.builder.output import BuildOutput, StageOutput
from skiff.core.builder.rootfs import RootfsSource, make_dirs, write_layer
from skiff.core.builder.runconfig import (
    PROXY_ARGS,
    StageState,
    apply_metadata,
    go_config,
    normalize_workdir,
)
from skiff.core.builder.services import BuildServices
from skiff.core.dockerfile import instructions as ins
from skiff.core.dockerfile.errors import DockerfileError, ParseError
from skiff.core.dockerfile.parser import parse_dockerfile, parse_instruction
from skiff.core.dockerfile.stages import SCRATCH, Stage, build_layers, plan_stages
from skiff.core.dockerfile.words import expand
from skiff.core.errors import InvalidParameter, NotFound
from skiff.core.images.commit import commit_layer, commit_metadata
from skiff.core.images.records import Image
from skiff.core.images.reference import familiar_string, parse

log = structlog.get_logger("skiff.builder")

__all__ = ["Build", "StepFailed", "json_quote", "short"]


class StepFailed(InvalidParameter):
    """A RUN step's command exited with a non-zero code (``code``)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def short(image_id: str | None) -> str:
    """An image ID as the builder prints it: 12 hex digits (empty for none)."""
    return (image_id or "").removeprefix("sha256:")[:12]


def _tag_name(tag: str) -> str:
    try:
        ref = parse(tag, default_tag=False)
    except ValueError as exc:
        raise InvalidParameter(f"invalid tag {tag!r}: {exc}") from exc
    if ref.digest is not None:
        raise InvalidParameter(f"invalid tag {tag!r}: a tag cannot hold a digest")
    return familiar_string(ref.with_default_tag() if ref.tag is None else ref)


def failure_reason(exc: BaseException) -> str:
    """dockerd's ``reason`` of a failed build (``builder_builds_failed_total``);
    a step that fails (a RUN's exit code, a missing COPY source) is an error
    processing commands."""
    if isinstance(exc, trio.Cancelled):
        return "build_canceled"
    if isinstance(exc, ParseError):
        if exc.reason.startswith("unknown instruction"):
            return "unknown_instruction_error"
        if exc.reason == "file with no instructions":
            return "dockerfile_empty_error"
        return "dockerfile_syntax_error"
    if isinstance(exc, DockerfileError) and str(exc).startswith("target stage"):
        return "build_target_not_reachable_error"
    if isinstance(exc, InvalidParameter) and "Is your Dockerfile empty" in str(exc):
        return "dockerfile_empty_error"
    return "error_processing_commands_error"


class Build:
    """One build (see the module's doc)."""

    def __init__(self, services: BuildServices, options: BuildOptions,
                 context: BuildContext) -> None:
        self.services = services
        self.options = options
        self.context = context
        parsed = parse_dockerfile(context.dockerfile)
        self.warnings = parsed.warnings
        given = {k: v for k, v in options.build_args.items() if v is not None}
        self.plan = plan_stages(parsed, given)
        self.needed = self.plan.needed(options.target)
        self.target = self.needed[-1] if options.target is None else \
            self.plan.stage(options.target).index
        self.tags = tuple(_tag_name(t) for t in options.tags)
        for i in self.needed:
            platform = self.plan.stages[i].from_.platform
            if platform:
                check_platform(expand(platform, self.plan.global_args, self.plan.escape),
                               "FROM --platform")
        self.label_step: ins.Instruction | None = None
        if options.labels:
            pairs = " ".join(f"{json_quote(k)}={json_quote(v)}"
                             for k, v in sorted(options.labels.items()))
            self.label_step = parse_instruction("LABEL " + pairs, self.plan.escape)
        self.total = self.plan.step_count(self.needed) + (1 if self.label_step else 0)
        self.first_step: dict[int, int] = {}
        step = len(self.plan.meta_args) + 1
        for i in self.needed:
            self.first_step[i] = step
            step += 1 + len(self.plan.stages[i].instructions)
            if i == self.target and self.label_step is not None:
                step += 1
        self.results: dict[int, str | None] = {}
        self.referenced: set[str] = set()
        self.cache_sources: dict[str, str] = {}
        self._failure: BaseException | None = None

    # -- the whole build -------------------------------------------------------

    async def run(self, emit: Callable[[dict[str, Any]], None]) -> str:
        """Build; returns the image ID.  Messages go to ``emit`` as they come."""
        output = BuildOutput(emit, self.needed, quiet=self.options.quiet)
        try:
            return await self._run(output)
        except BaseException:
            output.failed()
            raise
        finally:
            with trio.CancelScope(shield=True):
                await self.services.to_thread(self.services.cache.save)

    async def _run(self, output: BuildOutput) -> str:
        for warning in self.warnings:
            output.line(f"[WARNING]: {warning}")
        if self.options.cache_from:
            await self.services.to_thread(self._index_cache_sources)
        for step, arg in enumerate(self.plan.meta_args, 1):
            output.line(f"Step {step}/{self.total} : {arg.original}")
        for layer in build_layers(self.plan, self.needed):
            async with trio.open_nursery() as nursery:
                for index in layer:
                    nursery.start_soon(self._stage_task, index, output, nursery.cancel_scope)
            if self._failure is not None:
                raise self._failure
        final = self.results.get(self.target)
        if not final:
            raise InvalidParameter("No image was generated. Is your Dockerfile empty?")
        unused = sorted(k for k in self.options.build_args
                        if k not in self.referenced and k not in PROXY_ARGS)
        if unused:
            output.line(f"[Warning] One or more build-args [{' '.join(unused)}] were not "
                        "consumed")
        output.result({"aux": {"ID": final}})
        output.line(f"Successfully built {short(final)}")
        images = self.services.images
        for tag in self.tags:
            if images.lookup_ref(tag) != final:  # a rebuild that changed nothing writes nothing
                await self.services.to_thread(images.tag, final, tag)
            output.line(f"Successfully tagged {tag}")
        if self.options.quiet:
            output.result({"stream": final + "\n"})
        log.info("build.done", image=final, tags=list(self.tags), stages=len(self.needed))
        return final

    async def _stage_task(self, index: int, output: BuildOutput,
                          scope: trio.CancelScope) -> None:
        try:
            await self._stage(self.plan.stages[index], output.stages[index])
        except Exception as exc:
            # the first failure is the build's; the stages beside it stop
            if self._failure is None:
                self._failure = exc
            scope.cancel()

    # -- one stage ---------------------------------------------------------------

    async def _stage(self, stage: Stage, out: StageOutput) -> None:
        step = self.first_step[stage.index]
        out.line(f"Step {step}/{self.total} : {stage.from_.original}")
        state = await self._begin(stage, out)
        out.line(f" ---> {short(state.image_id)}")
        triggers = list(state.config.get("OnBuild") or [])
        if triggers:
            out.line(f"# Executing {len(triggers)} build trigger"
                     f"{'s' if len(triggers) > 1 else ''}")
            state.config["OnBuild"] = None
            for text in triggers:
                node = parse_instruction(text, self.plan.escape)
                if isinstance(node, ins.Onbuild | ins.From | ins.Maintainer):
                    raise DockerfileError(f"{node.keyword} isn't allowed as an ONBUILD trigger")
                await self._dispatch(state, node, out)
                state.config["Image"] = state.image_id or ""
        nodes = list(stage.instructions)
        if stage.index == self.target and self.label_step is not None:
            nodes.append(self.label_step)
        for node in nodes:
            step += 1
            out.line(f"Step {step}/{self.total} : {node.original}")
            await self._dispatch(state, node, out)
            state.config["Image"] = state.image_id or ""
            out.line(f" ---> {short(state.image_id)}")
        self.results[stage.index] = state.image_id
        self.referenced |= state.referenced
        out.finish()

    async def _begin(self, stage: Stage, out: StageOutput) -> StageState:
        if stage.base_stage is not None:
            image_id: str | None = self.results[stage.base_stage]
        elif stage.base.lower() == SCRATCH:
            image_id = None
        else:
            image_id = await self._image(stage.base, out, self.options.pull)
        config: dict[str, Any] = {}
        if image_id is not None:
            image = await self.services.to_thread(self.services.images.get, image_id)
            config = dict(image.config.get("config") or {})
        config["OpenStdin"] = config["StdinOnce"] = False
        state = StageState(config=config, image_id=image_id,
                           build_args=self.options.build_args,
                           meta_args=self.plan.global_args, escape=self.plan.escape)
        state.set_default_path()
        state.config["Image"] = image_id or ""
        return state

    async def _image(self, ref: str, out: StageOutput, pull: bool) -> str:
        """The ID of image ``ref``: the local one, or pulled when missing (always
        with ``pull``)."""
        if not pull:
            try:
                image = await self.services.to_thread(self.services.images.get, ref)
                return image.id
            except NotFound:
                pass
        return await self.services.pull(ref, out.message)

    # -- one step ----------------------------------------------------------------

    async def _dispatch(self, state: StageState, node: ins.Instruction,
                        out: StageOutput) -> None:
        expander = getattr(node, "expand", None)
        if expander is not None and isinstance(node, ins.EXPANDING):
            node = expander(state.expansion_env(), state.escape)
        if isinstance(node, ins.Run):
            await self._run_step(state, node, out)
        elif isinstance(node, ins.Copy | ins.Add):
            await self._copy_step(state, node, out)
        elif isinstance(node, ins.Workdir):
            await self._workdir_step(state, node, out)
        elif isinstance(node, ins.From):
            raise DockerfileError("FROM cannot be run as a step")
        else:
            comment = apply_metadata(state, node)
            probe = state.with_cmd_comment(comment)
            if self._cached(state, probe, out):
                return
            image_id = await self.services.to_thread(functools.partial(
                commit_metadata, self.services.images, image_id=state.image_id,
                config=go_config(state.config), container_config=probe,
                created_by=" ".join(probe["Cmd"]), author=state.maintainer))
            self._record(state, probe, image_id)

    def _cached(self, state: StageState, probe: dict[str, Any], out: StageOutput) -> bool:
        if self.options.nocache:
            return False
        key = step_key(state.image_id, probe)
        hit = self.services.cache.lookup(key) or self.cache_sources.get(key)
        if hit is None:
            return False
        out.line(" ---> Using cache")
        state.image_id = hit
        return True

    def _record(self, state: StageState, probe: dict[str, Any], image_id: str) -> None:
        self.services.cache.record(step_key(state.image_id, probe), image_id,
                                   " ".join(probe.get("Cmd") or []))
        state.image_id = image_id

    def _index_cache_sources(self) -> None:
        """Every image in the chains of the ``cachefrom`` images, by step key."""
        images = self.services.images
        for ref in self.options.cache_from:
            try:
                image: Image | None = images.get(ref)
            except NotFound:
                continue  # as dockerd: a missing cache source is no error
            seen = 0
            while image is not None and seen < 1000:
                recorded = image.config.get("container_config")
                if isinstance(recorded, dict):
                    key = step_key(image.parent or None, go_config(recorded))
                    self.cache_sources.setdefault(key, image.id)
                image = images.by_id(image.parent) if image.parent else None
                seen += 1

    # -- RUN ---------------------------------------------------------------------

    async def _run_step(self, state: StageState, node: ins.Run, out: StageOutput) -> None:
        cmd = list(node.command) if node.json_form else [*state.shell(), *node.command]
        args = state.args_for_run()
        state.referenced |= set(args)
        save_cmd = cmd
        if args:
            recorded = sorted(f"{k}={v}" for k, v in args.items()
                              if k not in PROXY_ARGS or k in state.declared)
            save_cmd = [f"|{len(recorded)}", *recorded, *cmd]
        probe = go_config({**state.config, "Cmd": save_cmd, "Entrypoint": None})
        if self._cached(state, probe, out):
            return
        if state.image_id is None:
            raise InvalidParameter(
                f"The command '{' '.join(cmd)}' cannot run: this FROM scratch stage has no "
                "files yet (COPY a shell or a static program in first)")
        opts = self.options
        host_config: dict[str, Any] = {
            "NetworkMode": opts.network_mode or "default", "ShmSize": opts.shm_size,
            "ExtraHosts": list(opts.extra_hosts) or None, **opts.resources}
        body = {**go_config(state.config), "Image": state.image_id, "Cmd": cmd,
                "Entrypoint": [""], "Healthcheck": {"Test": ["NONE"]},
                "Env": [*(state.config.get("Env") or []),
                        *(f"{k}={v}" for k, v in args.items())],
                "AttachStdout": True, "AttachStderr": True, "HostConfig": host_config}
        containers = self.services.containers
        cid, _ = await containers.create(body, None)
        out.line(f" ---> Running in {cid[:12]}")
        try:
            code = await self._run_container(cid, out)
            if code != 0:
                # dockerd keeps a failed step's container unless forcerm; skiff
                # leaves nothing behind a failed build unless asked (rm=false)
                if opts.rm or opts.forcerm:
                    await self._remove(cid, out)
                raise StepFailed(
                    f"The command '{' '.join(cmd)}' returned a non-zero code: {code}", code)
            c = containers.get(cid)
            chowned = c.idmap if c.userns.get("Storage") == "chown" else None
            parent = state.image_id
            image_id, _ = await self.services.to_thread(functools.partial(
                commit_layer, self.services.layers, self.services.images, container_id=cid,
                mount_id=c.mount_id, init_id=c.init_id, image_id=parent,
                config=go_config(state.config), container_config=probe,
                created_by=" ".join(save_cmd), author=state.maintainer, chowned=chowned))
            self._record(state, probe, image_id)
        except BaseException as exc:
            if not isinstance(exc, StepFailed):
                # cancelled (the client left) or broken: nothing of the step stays
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await containers.remove(cid, force=True, volumes=True)
            raise
        if opts.rm or opts.forcerm:
            await self._remove(cid, out)

    async def _run_container(self, cid: str, out: StageOutput) -> int:
        containers = self.services.containers
        sub = self.services.subscribe_output(cid)
        notice = containers.waiter(cid, "next-exit")
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            await containers.start(cid)
            async for _stream, data, _when in sub:
                out.text(decoder.decode(data))
            out.text(decoder.decode(b"", final=True))
        finally:
            sub.close()
        if notice is not None:
            await notice.event.wait()
            return notice.code
        return int(containers.get(cid).state.ExitCode or 0)

    async def _remove(self, cid: str, out: StageOutput) -> None:
        with trio.CancelScope(shield=True):
            await self.services.containers.remove(cid, force=True, volumes=True)
        out.line(f"Removing intermediate container {cid[:12]}")

    # -- COPY, ADD, WORKDIR --------------------------------------------------------

    async def _copy_step(self, state: StageState, node: ins.Copy | ins.Add,
                         out: StageOutput) -> None:
        services = self.services
        source: RootfsSource | None = None
        if isinstance(node, ins.Copy) and node.from_:
            value = expand(node.from_, self.plan.global_args, self.plan.escape)
            if value:
                source = await self._source_image(value, out)
        tree: copying.SourceTree = source if source is not None else self.context
        plan: copying.CopyPlan | None = None
        try:
            plan = await services.to_thread(functools.partial(
                copying.plan_copy, tree, node.sources, node.dest,
                workdir=state.config.get("WorkingDir") or "/", keyword=node.keyword,
                allow_urls=isinstance(node, ins.Add), fetch_dir=services.spool_dir))
            probe = state.with_cmd_comment_string(plan.history_text(node.chown))
            if self._cached(state, probe, out):
                return
            chosen = plan

            def write(root_fd: int) -> None:
                copying.apply_copy(chosen, tree, root_fd, chown=node.chown, chmod=node.chmod,
                                   decompress=isinstance(node, ins.Add))

            image_id = await services.to_thread(functools.partial(
                write_layer, services.layers, services.images, parent=state.image_id,
                config=go_config(state.config), container_config=probe,
                created_by=" ".join(probe["Cmd"]), author=state.maintainer, write=write))
            self._record(state, probe, image_id)
        finally:
            with trio.CancelScope(shield=True):
                if plan is not None:
                    await services.to_thread(copying.discard, plan)
                if source is not None:
                    await services.to_thread(source.close)

    async def _source_image(self, value: str, out: StageOutput) -> RootfsSource:
        """The filesystem ``COPY --from=value`` reads: a stage's image or an image's."""
        stage_index = None
        for stage in self.plan.stages:
            if stage.name is not None and stage.name == value.lower():
                stage_index = stage.index
        if stage_index is None and value.isdecimal() and int(value) < len(self.plan.stages):
            stage_index = int(value)
        if stage_index is not None:
            image_id = self.results.get(stage_index)
            if image_id is None:
                raise InvalidParameter(f"COPY --from={value}: that stage made no image")
        else:
            image_id = await self._image(value, out, False)
        services = self.services
        return await services.to_thread(RootfsSource, services.layers, services.images,
                                        image_id)

    async def _workdir_step(self, state: StageState, node: ins.Workdir,
                            out: StageOutput) -> None:
        path = normalize_workdir(state.config.get("WorkingDir") or "", node.path)
        state.config["WorkingDir"] = path
        probe = state.with_cmd_comment_string("WORKDIR " + path)
        if self._cached(state, probe, out):
            return
        services = self.services
        image_id = await services.to_thread(functools.partial(
            write_layer, services.layers, services.images, parent=state.image_id,
            config=go_config(state.config), container_config=probe,
            created_by=" ".join(probe["Cmd"]), author=state.maintainer,
            write=lambda root_fd: make_dirs(root_fd, path)))
        self._record(state, probe, image_id)


def json_quote(text: str) -> str:
    """A word in double quotes for a generated instruction (``LABEL "k"="v"``)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

