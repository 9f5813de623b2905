"""The builder's config state and history texts: dockerd's formats, exactly."""

from __future__ import annotations

from typing import Any

import pytest

from skiff.core.builder.output import BuildOutput
from skiff.core.builder.runconfig import (
    DEFAULT_PATH,
    StageState,
    apply_metadata,
    go_config,
    go_duration,
    go_quote,
    go_quoted_list,
    healthcheck_text,
    normalize_workdir,
)
from skiff.core.dockerfile.parser import parse_instruction
from skiff.core.errors import InvalidParameter


def state(**kw: Any) -> StageState:
    return StageState(config=kw.pop("config", {}), image_id="sha256:" + "a" * 64,
                      build_args=kw.pop("build_args", {}), meta_args=kw.pop("meta_args", {}))


@pytest.mark.parametrize(("ns", "text"), [
    (0, "0s"), (30 * 10**9, "30s"), (90 * 10**9, "1m30s"), (3600 * 10**9, "1h0m0s"),
    (500 * 10**6, "500ms"), (1500 * 10**6, "1.5s"), (2_000, "2µs"), (7, "7ns"),
])
def test_go_duration(ns: int, text: str) -> None:
    assert go_duration(ns) == text


def test_go_quote() -> None:
    assert go_quote('a "b" \\ c\n') == '"a \\"b\\" \\\\ c\\n"'
    assert go_quote("\x01é") == '"\\x01é"'
    assert go_quoted_list(["/bin/sh", "-c", "echo hi"]) == '["/bin/sh" "-c" "echo hi"]'


def test_healthcheck_text_as_dockerd() -> None:
    text = healthcheck_text({"Test": ["CMD-SHELL", "true"], "Interval": 30 * 10**9,
                             "Timeout": 3 * 10**9, "Retries": 3})
    assert text == """&{["CMD-SHELL" "true"] "30s" "3s" "0s" '\\x03'}"""


def test_go_config_shape() -> None:
    cfg = go_config({"Env": ["A=b"], "Cmd": ["sh"], "Healthcheck": None})
    assert list(cfg)[:6] == ["Hostname", "Domainname", "User", "AttachStdin", "AttachStdout",
                             "AttachStderr"]
    assert cfg["Volumes"] is None and cfg["Entrypoint"] is None and cfg["OnBuild"] is None
    assert "Healthcheck" not in cfg and "Shell" not in cfg and "ExposedPorts" not in cfg


def test_metadata_comments_and_effects() -> None:
    s = state(config={"Env": ["PATH=/bin"]})
    assert apply_metadata(s, parse_instruction("ENV A=1 B=two")) == "ENV A=1 B=two"
    assert s.config["Env"] == ["PATH=/bin", "A=1", "B=two"]
    apply_metadata(s, parse_instruction("ENV A=3"))
    assert s.config["Env"] == ["PATH=/bin", "A=3", "B=two"]  # replaced in place
    assert apply_metadata(s, parse_instruction("CMD echo hi")) == \
        'CMD ["/bin/sh" "-c" "echo hi"]'
    assert apply_metadata(s, parse_instruction('ENTRYPOINT ["/e"]')) == 'ENTRYPOINT ["/e"]'
    assert s.config["Cmd"] == ["/bin/sh", "-c", "echo hi"]  # CMD set in the stage stays
    t = state(config={"Cmd": ["sh"]})
    apply_metadata(t, parse_instruction('ENTRYPOINT ["/e"]'))
    assert t.config["Cmd"] is None  # the base's CMD does not survive an ENTRYPOINT
    assert apply_metadata(s, parse_instruction("EXPOSE 80 53/udp")) == "EXPOSE 80 53/udp"
    assert s.config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert apply_metadata(s, parse_instruction("VOLUME /a /b")) == "VOLUME [/a /b]"
    assert apply_metadata(s, parse_instruction('SHELL ["/bin/bash", "-c"]')) == \
        "SHELL [/bin/bash -c]"
    assert s.with_cmd_comment("USER x")["Cmd"] == ["/bin/bash", "-c", "#(nop) ", "USER x"]
    assert " ".join(s.with_cmd_comment("USER x")["Cmd"]) == "/bin/bash -c #(nop)  USER x"
    with pytest.raises(InvalidParameter, match="Invalid signal: NOPE"):
        apply_metadata(s, parse_instruction("STOPSIGNAL NOPE"))


def test_args_rules() -> None:
    s = state(build_args={"A": "given", "HTTP_PROXY": "http://p", "UNUSED": "x"},
              meta_args={"G": "global"})
    apply_metadata(s, parse_instruction("ARG A=default"))
    apply_metadata(s, parse_instruction("ARG B=bee"))
    apply_metadata(s, parse_instruction("ARG G"))
    assert s.args_for_run() == {"A": "given", "B": "bee", "G": "global",
                                "HTTP_PROXY": "http://p"}
    s.set_env([("B", "from-env")])
    assert "B" not in s.args_for_run()  # ENV shadows an ARG
    assert s.expansion_env()["B"] == "from-env"
    assert s.referenced == {"A", "B", "G"}


def test_default_path_and_workdir() -> None:
    s = state()
    s.set_default_path()
    assert s.config["Env"] == [f"PATH={DEFAULT_PATH}"]
    assert normalize_workdir("/a", "b/../c") == "/a/c"
    assert normalize_workdir("/a", "/x/") == "/x"
    assert normalize_workdir("", "rel") == "/rel"


def test_output_keeps_stage_order() -> None:
    sent: list[str] = []
    out = BuildOutput(lambda m: sent.append(m["stream"]), [0, 1, 2])
    out.stages[1].line("one-a")   # held: stage 0 is not done
    out.stages[0].line("zero-a")  # live
    out.stages[2].line("two-a")
    out.stages[2].finish()
    out.stages[0].finish()        # releases stage 1's lines; 1 is now live
    out.stages[1].line("one-b")
    out.stages[1].finish()        # releases stage 2's
    assert sent == ["zero-a\n", "one-a\n", "one-b\n", "two-a\n"]


def test_quiet_output_only_on_failure() -> None:
    sent: list[dict[str, Any]] = []
    out = BuildOutput(sent.append, [0], quiet=True)
    out.stages[0].line("Step 1/1 : FROM x")
    assert sent == []
    out.failed()
    assert sent == [{"stream": "Step 1/1 : FROM x\n"}]
