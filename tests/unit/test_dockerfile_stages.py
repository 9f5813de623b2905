"""Multi-stage structure (core/dockerfile/stages.py): global ARGs, stage
references, --target and the parallel build order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiff.core.dockerfile.errors import DockerfileError, ParseError
from skiff.core.dockerfile.parser import parse_dockerfile
from skiff.core.dockerfile.stages import BuildPlan, build_layers, plan_stages


def plan(text: str, **build_args: str) -> BuildPlan:
    return plan_stages(parse_dockerfile(text), build_args)


MULTI = """\
ARG VERSION=1.36
ARG REG
FROM ${REG:-docker.io}/busybox:$VERSION AS base
RUN echo base
FROM golang:1.21 AS build
COPY . /src
RUN go build -o /out/app
FROM base AS test
COPY --from=build /out/app /bin/app
RUN app --test
FROM alpine AS docs
RUN make docs
FROM base
COPY --from=1 /out/app /bin/app
COPY --from=docs /docs /docs
COPY --from=nginx:latest /etc/nginx/nginx.conf /nginx.conf
CMD ["app"]
"""


def test_global_args_expand_from_lines() -> None:
    p = plan(MULTI)
    assert p.global_args == {"VERSION": "1.36"}
    assert p.stages[0].base == "docker.io/busybox:1.36"
    p = plan(MULTI, VERSION="1.37", REG="localhost:5000", UNUSED="x")
    assert p.global_args == {"VERSION": "1.37", "REG": "localhost:5000"}
    assert p.stages[0].base == "localhost:5000/busybox:1.37"
    assert [a.original for a in p.meta_args] == ["ARG VERSION=1.36", "ARG REG"]


def test_stages_and_references() -> None:
    p = plan(MULTI)
    assert [s.name for s in p.stages] == ["base", "build", "test", "docs", None]
    assert [s.base_stage for s in p.stages] == [None, None, 0, None, 0]
    assert p.stages[2].copies_from == {"build": 1}
    assert p.stages[4].copies_from == {"1": 1, "docs": 3, "nginx:latest": None}
    assert p.stages[4].depends_on == {0, 1, 3}
    assert p.stages[4].images == ("nginx:latest",)
    assert p.stages[1].images == ("golang:1.21",)
    assert [len(s.instructions) for s in p.stages] == [1, 2, 2, 1, 4]


def test_target_needs_only_its_stages() -> None:
    p = plan(MULTI)
    assert p.needed() == (0, 1, 3, 4)
    assert p.needed("test") == (0, 1, 2)
    assert p.needed("TEST") == (0, 1, 2)  # stage names are case-insensitive
    assert p.needed("docs") == (3,)
    with pytest.raises(DockerfileError, match='target stage "nope" could not be found'):
        p.needed("nope")


def test_layers_run_independent_stages_together() -> None:
    p = plan(MULTI)
    assert build_layers(p, p.needed()) == [(0, 1, 3), (4,)]
    assert build_layers(p, range(len(p.stages))) == [(0, 1, 3), (2, 4)]
    assert build_layers(p, p.needed("test")) == [(0, 1), (2,)]
    with pytest.raises(ValueError):
        build_layers(p, [2])


def test_step_count() -> None:
    p = plan(MULTI)
    # the two global ARGs, then a FROM and the instructions of each stage
    assert p.step_count(range(5)) == 2 + 5 + 10
    assert p.step_count(p.needed("docs")) == 2 + 2


def test_scratch_and_image_bases() -> None:
    p = plan("FROM scratch\nCOPY x /\n")
    assert p.stages[0].base_stage is None and p.stages[0].images == ()


def test_a_stage_named_like_its_image() -> None:
    p = plan("FROM node AS node\nRUN x\nFROM node\n")
    assert p.stages[0].base_stage is None and p.stages[1].base_stage == 0


def test_empty_from_flag_is_the_context() -> None:
    p = plan("ARG NONE\nFROM a\nCOPY --from=$NONE x y\n")
    assert p.stages[0].copies_from == {}


@pytest.mark.parametrize(("text", "message"), [
    ("FROM a AS x\nFROM b AS X\n", "x stage name already used"),
    ("FROM later\nFROM b AS later\n", "refers to stage 'later', defined later"),
    ("FROM a AS one\nCOPY --from=two x y\nFROM b AS two\n",
     "invalid from flag value two: refers to a later build stage"),
    ("FROM a AS one\nCOPY --from=one x y\n", "refers to current build stage"),
    ("FROM a\nCOPY --from=0 x y\n", "invalid from flag value 0: refers to current build stage"),
    ("FROM a\nFROM b\nCOPY --from=5 x y\n", "invalid from flag value 5: index out of bounds"),
    ("FROM a\nCOPY --from=-1 x y\n", "index out of bounds"),
    ("ARG B\nFROM $B\n", r"base name \(\$B\) should not be blank"),
])
def test_refusals(text: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=message):
        plan(text)


def test_instruction_before_from() -> None:
    with pytest.raises(ParseError) as info:
        plan("ARG A\nRUN x\nFROM a\n")
    assert info.value.message == "dockerfile parse error line 2: no build stage in current context"
    with pytest.raises(ParseError, match="no build stage"):
        plan("ARG A\n")


@st.composite
def _dockerfiles(draw: st.DrawFn) -> str:
    n = draw(st.integers(1, 8))
    lines = []
    for i in range(n):
        base = f"s{draw(st.integers(0, i - 1))}" if i and draw(st.booleans()) else "busybox"
        lines.append(f"FROM {base} AS s{i}")
        for _ in range(draw(st.integers(0, 2))):
            if i and draw(st.booleans()):
                j = draw(st.integers(0, i - 1))
                ref = str(j) if draw(st.booleans()) else f"s{j}"
                lines.append(f"COPY --from={ref} /x /y")
            else:
                lines.append("RUN true")
    return "\n".join(lines) + "\n"


@given(_dockerfiles(), st.data())
def test_order_respects_dependencies(text: str, data: st.DataObject) -> None:
    p = plan(text)
    target = data.draw(st.sampled_from([s.name for s in p.stages]))
    needed = p.needed(target)
    assert target is not None and p.stage(target).index in needed
    layers = build_layers(p, needed)
    flat = [i for layer in layers for i in layer]
    assert sorted(flat) == list(needed)  # every needed stage, once
    position = {i: n for n, layer in enumerate(layers) for i in layer}
    for i in needed:
        for dep in p.stages[i].depends_on:
            assert position[dep] < position[i]  # built before, never alongside
    # only what the target reaches
    reach = {p.stage(target).index}
    frontier = list(reach)
    while frontier:
        for dep in p.stages[frontier.pop()].depends_on:
            if dep not in reach:
                reach.add(dep)
                frontier.append(dep)
    assert set(needed) == reach
    # as early as possible: each stage of a later layer waits on the layer before it
    for i in flat:
        if position[i]:
            assert any(position[d] == position[i] - 1 for d in p.stages[i].depends_on)
