"""The stages of a multi-stage Dockerfile and the order to build them in.

:func:`plan_stages` cuts a parsed Dockerfile at each FROM.  The ARGs before
the first FROM are the global scope: their values (a build argument given by
the client wins over the default) expand the FROM lines, and ``COPY --from``
values, and nothing else unless a stage declares the ARG again.  A stage may
build on an earlier stage (``FROM <name>``) and copy from one (``COPY
--from=<name or index>``); anything else FROM or ``--from`` names is an
image.  A reference to a later stage, to the stage itself by index, or to an
index out of range is an error, and so is a stage name used twice.

:meth:`BuildPlan.needed` gives the stages a target needs (only those), and
:func:`build_layers` the order to build them in: layers of stages that do not
depend on each other, each layer after the stages it depends on, so the
stages of one layer may be built in parallel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from skiff.core.dockerfile import instructions as ins
from skiff.core.dockerfile.errors import DockerfileError, ParseError
from skiff.core.dockerfile.parser import Dockerfile
from skiff.core.dockerfile.words import expand

__all__ = ["BuildPlan", "Stage", "build_layers", "plan_stages"]

#: the base name of a stage that starts from an empty filesystem
SCRATCH = "scratch"


@dataclass(frozen=True)
class Stage:
    """One stage: its FROM and the instructions after it.

    ``base`` is FROM's base name with the global ARGs substituted;
    ``base_stage`` the index of the stage it builds on (None when ``base`` is an
    image or ``scratch``).  ``copies_from`` maps each ``COPY --from`` value of the
    stage (global ARGs substituted) to the index of the stage it names, or to
    None for an image; a value empty once substituted means the build context,
    as in dockerd, and is not listed."""

    index: int
    name: str | None
    from_: ins.From
    instructions: tuple[ins.Instruction, ...]
    base: str
    base_stage: int | None
    copies_from: Mapping[str, int | None] = field(default_factory=dict)

    @property
    def depends_on(self) -> frozenset[int]:
        """The earlier stages this one needs built first."""
        deps = {i for i in self.copies_from.values() if i is not None}
        if self.base_stage is not None:
            deps.add(self.base_stage)
        return frozenset(deps)

    @property
    def images(self) -> tuple[str, ...]:
        """The images this stage needs: its base (unless a stage or scratch) and
        the images ``COPY --from`` names, in order, each once."""
        out: list[str] = []
        if self.base_stage is None and self.base.lower() != SCRATCH:
            out.append(self.base)
        out.extend(v for v, i in self.copies_from.items() if i is None and v not in out)
        return tuple(out)


@dataclass(frozen=True)
class BuildPlan:
    """A Dockerfile's global ARGs and stages (see the module's doc)."""

    #: the ARG instructions before the first FROM, in order
    meta_args: tuple[ins.Arg, ...]
    #: the values of the global ARGs that have one
    global_args: Mapping[str, str]
    stages: tuple[Stage, ...]
    escape: str = "\\"

    def stage(self, name: str) -> Stage:
        """The stage named ``name`` (case-insensitive); DockerfileError when
        there is none (``target stage "x" could not be found``)."""
        for stage in self.stages:
            if stage.name is not None and stage.name == name.lower():
                return stage
        raise DockerfileError(f'target stage "{name}" could not be found')

    def needed(self, target: str | None = None) -> tuple[int, ...]:
        """The indices, ascending, of the stages building ``target`` needs: the
        target and every stage it depends on, directly or not; no other.
        Without a target, the last stage's.  Raises DockerfileError for an
        unknown target."""
        last = self.stage(target) if target is not None else self.stages[-1]
        seen = {last.index}
        todo = [last.index]
        while todo:
            for dep in self.stages[todo.pop()].depends_on:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return tuple(sorted(seen))

    def step_count(self, indices: Iterable[int]) -> int:
        """The ``M`` of ``Step N/M`` when the stages ``indices`` are built: the global
        ARGs, and each stage's FROM and instructions."""
        return len(self.meta_args) + sum(1 + len(self.stages[i].instructions) for i in indices)


def build_layers(plan: BuildPlan, indices: Iterable[int]) -> list[tuple[int, ...]]:
    """The order to build the stages ``indices`` (with the stages they depend
    on, which must be among them: :meth:`BuildPlan.needed` gives such a set).

    Returns layers: each a tuple of stage indices, ascending, none depending on
    another of its layer, every one depending only on stages of earlier
    layers; each stage is in the layer right after its last dependency, so
    stages are started as early as the order allows.  ValueError when a
    dependency is missing from ``indices``."""
    wanted = set(indices)
    layer_of: dict[int, int] = {}
    for i in sorted(wanted):
        deps = plan.stages[i].depends_on
        missing = deps - wanted
        if missing:
            raise ValueError(f"stage {i} needs stages {sorted(missing)} that are not built")
        # dependencies are earlier stages, so ascending order sees them first
        layer_of[i] = 1 + max((layer_of[d] for d in deps), default=-1)
    layers: list[list[int]] = [[] for _ in range(1 + max(layer_of.values(), default=-1))]
    for i, layer in sorted(layer_of.items()):
        layers[layer].append(i)
    return [tuple(layer) for layer in layers]


def _global_args(meta: Iterable[ins.Arg], build_args: Mapping[str, str],
                 escape: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for arg in meta:
        for name, default in arg.expand(values, escape).args:
            if name in build_args:
                values[name] = build_args[name]
            elif default is not None:
                values[name] = default
    return values


def _stage_ref(names: Mapping[str, int], value: str, current: int,
               later: Mapping[str, tuple[int, int]]) -> int | None:
    """The stage ``COPY --from=value`` names in stage ``current``, or None (an image)."""
    key = value.lower()
    if key in names:
        return names[key]
    if key in later:
        index, line = later[key]
        if index == current:
            raise DockerfileError(f"invalid from flag value {value}: refers to current "
                                  "build stage")
        raise DockerfileError(f"invalid from flag value {value}: refers to a later build "
                              f"stage (line {line}); a stage can only use stages before it")
    if value.lstrip("-").isdecimal():
        index = int(value)
        if index == current:
            raise DockerfileError(f"invalid from flag value {value}: refers to current "
                                  "build stage")
        if not 0 <= index < current:
            raise DockerfileError(f"invalid from flag value {value}: index out of bounds")
        return index
    return None


def plan_stages(dockerfile: Dockerfile, build_args: Mapping[str, str] | None = None) -> BuildPlan:
    """Cut ``dockerfile`` into its global ARGs and stages, and resolve what each
    FROM and ``COPY --from`` refers to, with ``build_args`` (the client's
    ``buildargs``) overriding the global ARGs' defaults.

    Raises :class:`ParseError` for an instruction before the first FROM other
    than ARG (``no build stage in current context``), and DockerfileError for
    a FROM whose base is blank once expanded, a stage name used twice
    (``x stage name already used``), or a FROM or ``--from`` referring to a
    later stage."""
    escape = dockerfile.escape
    meta: list[ins.Arg] = []
    groups: list[tuple[ins.From, list[ins.Instruction]]] = []
    for instruction in dockerfile.instructions:
        if isinstance(instruction, ins.From):
            groups.append((instruction, []))
        elif groups:
            groups[-1][1].append(instruction)
        elif isinstance(instruction, ins.Arg):
            meta.append(instruction)
        else:
            raise ParseError("no build stage in current context", instruction.line,
                             instruction.end_line, instruction.original)
    if not groups:
        last = dockerfile.instructions[-1]
        raise ParseError("no build stage in current context", last.line, last.end_line,
                         last.original)
    global_args = _global_args(meta, build_args or {}, escape)

    all_names: dict[str, tuple[int, int]] = {}
    for index, (from_, _) in enumerate(groups):
        if from_.name is not None:
            if from_.name in all_names:
                raise DockerfileError(f"{from_.name} stage name already used")
            all_names[from_.name] = (index, from_.line)

    stages: list[Stage] = []
    names: dict[str, int] = {}
    for index, (from_, body) in enumerate(groups):
        later = {n: at for n, at in all_names.items() if at[0] >= index}
        base = expand(from_.base, global_args, escape)
        if not base:
            raise DockerfileError(f"base name ({from_.base}) should not be blank")
        base_stage = names.get(base.lower())
        if base_stage is None and base.lower() in later and later[base.lower()][0] > index:
            raise DockerfileError(
                f"FROM {base} (line {from_.line}) refers to stage {base.lower()!r}, defined "
                f"later (line {later[base.lower()][1]}): a stage can only build on stages "
                "before it")
        copies: dict[str, int | None] = {}
        for instruction in body:
            if isinstance(instruction, ins.Copy) and instruction.from_ is not None:
                value = expand(instruction.from_, global_args, escape)
                if not value:
                    continue  # an empty --from copies from the context, as dockerd does
                copies[value] = _stage_ref(names, value, index, later)
        stages.append(Stage(index, from_.name, from_, tuple(body), base, base_stage, copies))
        if from_.name is not None:
            names[from_.name] = index
    return BuildPlan(tuple(meta), global_args, tuple(stages), escape)
