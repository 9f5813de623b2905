"""Tag templates and the labels/env attributes that log drivers share."""

from __future__ import annotations

import pytest

from skiff.core.hookspecs import LogContext
from skiff.plugins.logging.common import check_tag, extra_attributes, render_tag

CID = "0123456789ab" + "c" * 52


def ctx(**options: str) -> LogContext:
    return LogContext(CID, "/web", "/nonexistent", dict(options), image_name="busybox:1",
                      image_id="sha256:" + "f" * 64, labels={"team": "a", "com.x.y": "z"},
                      env=["A=1", "PATH=/bin", "EMPTY="], command=["sh", "-c", "x"],
                      hostname="h1")


def test_default_tag_is_the_short_id() -> None:
    assert render_tag(ctx()) == "0123456789ab"
    assert render_tag(ctx(tag="")) == "0123456789ab"


def test_fields_and_text_mixed() -> None:
    got = render_tag(ctx(tag="{{.ImageName}}/{{.Name}}/{{ .ID }}:{{.ImageID}}"))
    assert got == "busybox:1/web/0123456789ab:ffffffffffff"
    assert render_tag(ctx(tag="{{.FullID}} {{.DaemonName}} {{.Hostname}}")) == (
        f"{CID} skiff h1")


@pytest.mark.parametrize("bad", ["{{.Nope}}", "{{json .Name}}", "{{.Name", "x}}"])
def test_unknown_template_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        check_tag(bad)


def test_labels_and_env_selected_by_name_and_regex() -> None:
    assert extra_attributes(ctx(labels="team,missing", env="A,NOPE")) == {"team": "a", "A": "1"}
    assert extra_attributes(ctx(**{"labels-regex": "^com\\.", "env-regex": "^P"})) == {
        "com.x.y": "z", "PATH": "/bin"}
    assert extra_attributes(ctx(env="A"), str.upper) == {"A": "1"}
    with pytest.raises(ValueError):
        extra_attributes(ctx(**{"env-regex": "("}))
