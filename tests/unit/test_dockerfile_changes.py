"""``--change`` of import and commit (core/images/dockerfile_changes.py): the
behaviour pinned before its word splitting moved to core/dockerfile/words.py."""

from __future__ import annotations

import pytest

from skiff.core.errors import InvalidParameter
from skiff.core.images.dockerfile_changes import apply_changes
from skiff.core.images.records import ZERO_CONTAINER_CONFIG


def test_change_instructions() -> None:
    cfg = apply_changes(dict(ZERO_CONTAINER_CONFIG), [
        "ENV A=1 B=\"two words\"",
        "ENV C three words",
        "ENV D=$A-x E=${NOPE:-def} F=${A:+set} G='$A'",
        "WORKDIR /app",
        "WORKDIR sub/../sub2",
        "USER nobody:nogroup",
        "EXPOSE 80 53/udp 8000-8002",
        'LABEL version=1.0 "with space"=yes',
        "LABEL legacy value here",
        'VOLUME ["/data"]',
        "VOLUME /a /b",
        "STOPSIGNAL SIGINT",
        "ONBUILD RUN make",
        "cmd echo hi",
    ])
    assert cfg["Env"] == ["A=1", "B=two words", "C=three words", "D=1-x", "E=def",
                          "F=set", "G=$A"]
    assert cfg["WorkingDir"] == "/app/sub2"
    assert cfg["User"] == "nobody:nogroup"
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "8000/tcp": {},
                                   "8001/tcp": {}, "8002/tcp": {}}
    assert cfg["Labels"] == {"version": "1.0", "with space": "yes", "legacy": "value here"}
    assert cfg["Volumes"] == {"/data": {}, "/a": {}, "/b": {}}
    assert cfg["StopSignal"] == "SIGINT"
    assert cfg["OnBuild"] == ["RUN make"]
    assert cfg["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert ZERO_CONTAINER_CONFIG["Env"] is None  # the input is not modified

    ep = apply_changes(dict(ZERO_CONTAINER_CONFIG), ['CMD ["a"]', 'ENTRYPOINT ["/bin/x", "-v"]'])
    assert ep["Entrypoint"] == ["/bin/x", "-v"] and ep["Cmd"] == ["a"]
    ep2 = apply_changes({**ZERO_CONTAINER_CONFIG, "Cmd": ["old"]}, ["ENTRYPOINT exec thing"])
    assert ep2["Entrypoint"] == ["/bin/sh", "-c", "exec thing"] and ep2["Cmd"] is None


@pytest.mark.parametrize(("bad", "message"), [
    ("RUN x", "run is not a valid change command"),
    ("FROM busybox", "from is not a valid change command"),
    ("STOPSIGNAL BOGUS", "Invalid signal: BOGUS"),
    ("EXPOSE 70000", "Invalid containerPort: 70000"),
    ("EXPOSE 80/xyz", "invalid proto: xyz"),
    ("ENV", "ENV requires at least one argument"),
    ("ENV A", "ENV must have two arguments"),
    ("ENV A=1 B", "can't find = in 'B'"),
    ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD"),
    ("ENV A='open", "single-quote"),
    ('ENV A="open', "double-quote"),
    ("ENV A=${B", "missing '}'"),
    ("ENV A=${B!x}", "substitution"),
])
def test_change_refusals(bad: str, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        apply_changes(dict(ZERO_CONTAINER_CONFIG), [bad])


def test_change_words_and_escapes() -> None:
    cfg = apply_changes(dict(ZERO_CONTAINER_CONFIG), [
        r"ENV A=a\ b B=\$A C=\"q\" D=x\\y",
        r'ENV E="in \"quotes\" \$A and \x" F=${A}${A}',
        "ENV G=$ H=${A:-} I=${NOPE:+alt}",
        "WORKDIR /w/$A",
    ])
    assert cfg["Env"] == ["A=a b", "B=$A", 'C="q"', "D=x\\y", 'E=in "quotes" $A and \\x',
                          "F=a ba b", "G=$", "H=a b", "I="]
    assert cfg["WorkingDir"] == "/w/a b"
