"""The Dockerfile parser (core/dockerfile/parser.py, arguments.py): cases from
the Dockerfile reference and dockerd's parser behaviour."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiff.core.dockerfile import instructions as ins
from skiff.core.dockerfile.errors import ParseError
from skiff.core.dockerfile.parser import Dockerfile, parse_dockerfile, parse_instruction
from skiff.core.dockerfile.words import quote


def one(line: str, escape: str = "\\") -> ins.Instruction:
    return parse_instruction(line, escape)


def refusal(text: str) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_dockerfile(text)
    return info.value


# --- directives, comments, continuation --------------------------------------


def test_directives_escape_and_syntax() -> None:
    df = parse_dockerfile("# syntax=docker/dockerfile:1\n# escape=`\nFROM x\nRUN dir c:\\\n")
    assert df.syntax == "docker/dockerfile:1" and df.escape == "`"
    run = df.instructions[1]
    assert isinstance(run, ins.Run) and run.command == ("dir c:\\",)


@pytest.mark.parametrize("line", ["#escape=`", "# escape =`", "#\tescape= `", "# escape = `",
                                  "#\t  eScApE=`", "  # escape=`"])
def test_directive_spellings(line: str) -> None:
    assert parse_dockerfile(f"{line}\nFROM x\n").escape == "`"


@pytest.mark.parametrize("text", [
    "FROM x\n# escape=`\n",               # after an instruction: a comment
    "# about this file\n# escape=`\nFROM x\n",  # after a comment
    "\n# escape=`\nFROM x\n",             # after an empty line
    "# unknown=v\n# escape=`\nFROM x\n",  # after an unknown directive
])
def test_directive_only_at_the_top(text: str) -> None:
    assert parse_dockerfile(text).escape == "\\"


def test_directive_errors() -> None:
    err = refusal("# escape=`\n# escape=\\\nFROM x\n")
    assert err.reason == "only one escape parser directive can be used" and err.line == 2
    err = refusal("# escape=x\nFROM x\n")
    assert "invalid escape token 'x' does not match ` or \\" in err.message


def test_continuation_comments_and_empty_lines() -> None:
    df = parse_dockerfile(
        "FROM busybox\n"
        "RUN echo hello \\\n"
        "# comment\n"
        "world\n"
        "\n"
        "  # an indented comment\n"
        "RUN a \\  \n"
        "\n"
        "    b\n")
    run1, run2 = df.instructions[1:]
    assert isinstance(run1, ins.Run) and run1.command == ("echo hello world",)
    assert (run1.line, run1.end_line) == (2, 4)
    assert run1.original == "RUN echo hello world"
    assert isinstance(run2, ins.Run) and run2.command == ("a     b",)
    assert (run2.line, run2.end_line) == (7, 9)
    assert len(df.warnings) == 1 and "Empty continuation line" in df.warnings[0]


def test_escaped_escape_does_not_continue() -> None:
    df = parse_dockerfile("FROM x\nRUN echo \\\\\nRUN b\n")
    assert [i.keyword for i in df.instructions] == ["FROM", "RUN", "RUN"]


def test_backtick_continuation_and_windows_paths() -> None:
    df = parse_dockerfile("# escape=`\nFROM w\nCOPY testfile.txt c:\\\nRUN dir c:\\ `\n  /w\n")
    copy, run = df.instructions[1:]
    assert isinstance(copy, ins.Copy) and copy.dest == "c:\\"
    assert isinstance(run, ins.Run) and run.command == ("dir c:\\   /w",)


def test_crlf_bom_and_no_final_newline() -> None:
    df = parse_dockerfile(b"\xef\xbb\xbfFROM x\r\nRUN a \\\r\n b\r\nCMD c")
    assert [i.original for i in df.instructions] == ["FROM x", "RUN a  b", "CMD c"]


def test_hash_inside_an_instruction_is_an_argument() -> None:
    run = one("RUN echo # not a comment")
    assert isinstance(run, ins.Run) and run.command == ("echo # not a comment",)


def test_empty_file() -> None:
    assert refusal("# just a comment\n\n").reason == "file with no instructions"


def test_step_text_is_the_trimmed_original() -> None:
    df = parse_dockerfile("  from   busybox  AS  b \nrun  echo  x  \n")
    assert [str(i) for i in df.instructions] == ["from   busybox  AS  b", "run  echo  x"]


def test_long_line_refused() -> None:
    err = refusal("FROM x\nRUN " + "a" * 70000 + "\n")
    assert "max allowed size of 65535" in err.reason and err.line == 2


# --- instructions ----------------------------------------------------------


def test_unknown_instruction() -> None:
    err = refusal("FROM x\n\nfoo bar\n")
    assert err.message == "dockerfile parse error line 3: unknown instruction: FOO"
    assert err.line == 3 and err.text == "foo bar"


def test_from() -> None:
    f = one("FROM --platform=linux/amd64 busybox:1.36 AS Build-1.x")
    assert isinstance(f, ins.From)
    assert (f.base, f.name, f.platform) == ("busybox:1.36", "build-1.x", "linux/amd64")
    f = one("from scratch")
    assert isinstance(f, ins.From) and (f.base, f.name) == ("scratch", None)
    for bad, message in [("FROM", "FROM requires either one or three arguments"),
                         ("FROM a b", "FROM requires either one or three arguments"),
                         ("FROM a AS 1x", 'invalid name for build stage: "1x"'),
                         ("FROM a AS b$c", "invalid name for build stage"),
                         ("FROM --chown=x a", "Unknown flag: chown")]:
        with pytest.raises(ParseError, match=message):
            one(bad)


def test_run_cmd_entrypoint_forms() -> None:
    r = one('RUN ["/bin/bash", "-c", "echo hello"]')
    assert isinstance(r, ins.Run) and r.json_form and r.command == ("/bin/bash", "-c",
                                                                   "echo hello")
    r = one("RUN [ not json")
    assert isinstance(r, ins.Run) and not r.json_form and r.command == ("[ not json",)
    r = one("RUN ['single', 'quotes']")  # not JSON: the shell form
    assert isinstance(r, ins.Run) and not r.json_form
    c = one("CMD")
    assert isinstance(c, ins.Cmd) and c.command == ()
    e = one("ENTRYPOINT []")
    assert isinstance(e, ins.Entrypoint) and e.json_form and e.command == ()
    e = one("ENTRYPOINT exec top -b")
    assert isinstance(e, ins.Entrypoint) and e.command == ("exec top -b",)
    with pytest.raises(ParseError, match="arrays must be comprised of strings only"):
        one('CMD ["a", 1]')
    with pytest.raises(ParseError, match="Unknown flag: mount"):
        one("RUN --mount=type=cache,target=/x make")


def test_shell() -> None:
    s = one('SHELL ["powershell", "-command"]')
    assert isinstance(s, ins.Shell) and s.shell == ("powershell", "-command")
    with pytest.raises(ParseError, match="SHELL requires the arguments to be in JSON form"):
        one("SHELL /bin/bash -c")
    with pytest.raises(ParseError, match="SHELL requires at least one argument"):
        one("SHELL")


def test_env_both_forms() -> None:
    e = one('ENV MY_NAME="John Doe" MY_DOG=Rex\\ The\\ Dog \\\n MY_CAT=fluffy'
            .replace("\\\n", ""))
    assert isinstance(e, ins.Env)
    assert e.pairs == (("MY_NAME", '"John Doe"'), ("MY_DOG", "Rex\\ The\\ Dog"),
                       ("MY_CAT", "fluffy"))
    assert e.expand({}, "\\").pairs == (("MY_NAME", "John Doe"), ("MY_DOG", "Rex The Dog"),
                                        ("MY_CAT", "fluffy"))
    legacy = one("ENV MY_VAR my-value  with spaces")
    assert isinstance(legacy, ins.Env) and legacy.pairs == (("MY_VAR", "my-value  with spaces"),)
    for bad, message in [("ENV", "ENV requires at least one argument"),
                         ("ENV A", "ENV must have two arguments"),
                         ("ENV A=1 B", 'can\'t find = in "B"'),
                         ("ENV =x", "ENV names can not be blank")]:
        with pytest.raises(ParseError, match=message):
            one(bad)


def test_env_expansion_uses_the_environment_before_the_instruction() -> None:
    # the reference: ENV abc=bye def=$abc gives def=hello when abc was hello
    e = one("ENV abc=bye def=$abc")
    assert isinstance(e, ins.Env)
    assert e.expand({"abc": "hello"}, "\\").pairs == (("abc", "bye"), ("def", "hello"))


def test_label() -> None:
    label = one('LABEL "com.example.vendor"="ACME Incorporated" version="1.0" '
                'description="This text illustrates that label-values can span lines."')
    assert isinstance(label, ins.Label)
    assert dict(label.expand({}, "\\").pairs) == {
        "com.example.vendor": "ACME Incorporated", "version": "1.0",
        "description": "This text illustrates that label-values can span lines."}


def test_arg() -> None:
    a = one("ARG user1=someuser buildno CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}")
    assert isinstance(a, ins.Arg)
    assert a.args == (("user1", "someuser"), ("buildno", None),
                      ("CONT_IMG_VER", "${CONT_IMG_VER:-v1.0.0}"))
    assert a.expand({}, "\\").args[2] == ("CONT_IMG_VER", "v1.0.0")
    with pytest.raises(ParseError, match="ARG requires at least one argument"):
        one("ARG")
    with pytest.raises(ParseError, match="ARG names can not be blank"):
        one("ARG =x")


def test_expose_volume_user_workdir_stopsignal_maintainer() -> None:
    x = one("EXPOSE 80/tcp 80/udp $P")
    assert isinstance(x, ins.Expose) and x.ports == ("80/tcp", "80/udp", "$P")
    assert x.expand({"P": "1 2"}, "\\").ports == ("80/tcp", "80/udp", "1", "2")
    v = one('VOLUME ["/data", "/b"]')
    assert isinstance(v, ins.Volume) and v.paths == ("/data", "/b") and v.json_form
    v = one("VOLUME /var/log /var/db")
    assert isinstance(v, ins.Volume) and v.paths == ("/var/log", "/var/db")
    with pytest.raises(ParseError, match="VOLUME specified can not be an empty string"):
        one('VOLUME ["/a", " "]')
    u = one("USER patrick:$GROUP")
    assert isinstance(u, ins.User) and u.expand({"GROUP": "g"}, "\\").user == "patrick:g"
    w = one("WORKDIR /path/$DIRNAME")
    assert isinstance(w, ins.Workdir) and w.expand({"DIRNAME": "d"}, "\\").path == "/path/d"
    w = one("WORKDIR a b")
    assert isinstance(w, ins.Workdir) and w.path == "a b"
    s = one("STOPSIGNAL SIGKILL")
    assert isinstance(s, ins.Stopsignal) and s.signal == "SIGKILL"
    m = one("MAINTAINER Jane <jane@example.com>")
    assert isinstance(m, ins.Maintainer) and m.maintainer == "Jane <jane@example.com>"
    for bad, message in [("EXPOSE", "EXPOSE requires at least one argument"),
                         ("USER", "USER requires exactly one argument"),
                         ("WORKDIR", "WORKDIR requires exactly one argument"),
                         ("STOPSIGNAL", "STOPSIGNAL requires exactly one argument"),
                         ("VOLUME", "VOLUME requires at least one argument"),
                         ("USER --x=1 u", "Unknown flag: x")]:
        with pytest.raises(ParseError, match=message):
            one(bad)


def test_copy_and_add() -> None:
    c = one('COPY --from=build --chown=55:mygroup --chmod=644 files* "/my dir/" /dest/')
    assert isinstance(c, ins.Copy)
    assert c.sources == ("files*", '"/my', 'dir/"')  # split on blanks only, like dockerd
    assert (c.from_, c.chown, c.chmod, c.dest) == ("build", "55:mygroup", "644", "/dest/")
    c = one('COPY ["a b", "/dest dir/"]')
    assert isinstance(c, ins.Copy) and c.json_form
    assert (c.sources, c.dest) == (("a b",), "/dest dir/")
    c = one("COPY --chown=$U ${SRC} $DEST")
    assert isinstance(c, ins.Copy)
    e = c.expand({"U": "bin", "SRC": "s", "DEST": "/d"}, "\\")
    assert (e.chown, e.sources, e.dest) == ("bin", ("s",), "/d")
    a = one("ADD --chown=1 https://example.com/big.tar.xz /usr/src/things/")
    assert isinstance(a, ins.Add) and a.sources == ("https://example.com/big.tar.xz",)
    for bad, message in [
        ("COPY onlyone", "COPY requires at least two arguments, but only one was provided. "
                         "Destination could not be determined"),
        ("ADD x", "ADD requires at least two arguments"),
        ("ADD --from=a x y", "Unknown flag: from"),
        ("COPY --chown a b", "Missing a value on flag: chown"),
        ("COPY --chown=a --chown=b x y", "Duplicate flag specified: chown"),
        ("COPY --link x y", "Unknown flag: link"),
    ]:
        with pytest.raises(ParseError, match=message):
            one(bad)


def test_flags_take_quotes_and_stop_at_double_dash() -> None:
    c = one('COPY --chown="a b" x y')
    assert isinstance(c, ins.Copy) and c.chown == "a b"
    r = one("RUN -- --not-a-flag")
    assert isinstance(r, ins.Run) and r.command == ("--not-a-flag",)


def test_onbuild() -> None:
    o = one("ONBUILD ADD . /app/src")
    assert isinstance(o, ins.Onbuild)
    assert (o.expression, o.trigger) == ("ADD . /app/src", "ADD")
    o = one("onbuild   run make \\ x")
    assert isinstance(o, ins.Onbuild) and o.expression == "run make \\ x" and o.trigger == "RUN"
    for bad, message in [("ONBUILD", "ONBUILD requires at least one argument"),
                         ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` "
                                                   "isn't allowed"),
                         ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
                         ("ONBUILD maintainer x", "MAINTAINER isn't allowed")]:
        with pytest.raises(ParseError, match=message):
            one(bad)


def test_healthcheck() -> None:
    h = one("HEALTHCHECK --interval=5m --timeout=3s --start-period=1m30s --retries=3 "
            "CMD curl -f http://localhost/ || exit 1")
    assert isinstance(h, ins.Healthcheck)
    assert h.test == ("CMD-SHELL", "curl -f http://localhost/ || exit 1")
    assert (h.interval, h.timeout, h.start_period, h.retries) == (300 * 10**9, 3 * 10**9,
                                                                 90 * 10**9, 3)
    h = one('HEALTHCHECK CMD ["/bin/check", "-q"]')
    assert isinstance(h, ins.Healthcheck) and h.test == ("CMD", "/bin/check", "-q")
    assert h.interval == 0 and h.retries == 0
    h = one("healthcheck none")
    assert isinstance(h, ins.Healthcheck) and h.test == ("NONE",)
    for bad, message in [("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
                         ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
                         ("HEALTHCHECK FOO x", 'Unknown type "FOO" in HEALTHCHECK \\(try CMD\\)'),
                         ("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
                         ("HEALTHCHECK --interval=1us CMD x",
                          'Interval "interval" cannot be less than 1ms'),
                         ("HEALTHCHECK --timeout=soon CMD x", 'invalid duration "soon"'),
                         ("HEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative"),
                         ("HEALTHCHECK --retries=x CMD x", 'parsing "x": invalid syntax'),
                         ("HEALTHCHECK --bogus=1 CMD x", "Unknown flag: bogus")]:
        with pytest.raises(ParseError, match=message):
            one(bad)


@pytest.mark.parametrize("line", ["RUN <<EOF", "RUN cat <<-EOT > /f", "COPY <<EOF /dest",
                                  "RUN 3<<'END' x", "ONBUILD RUN <<EOF"])
def test_heredocs_refused_with_the_line(line: str) -> None:
    err = refusal(f"FROM x\n{line}\nhello\nEOF\n")
    assert err.line == 2 and "heredocs are not supported" in err.reason


@pytest.mark.parametrize("line", ['RUN echo "<<EOF"', "RUN cat<<EOF", "RUN a <<< word",
                                  'RUN ["cat", "<<EOF"]'])
def test_not_heredocs(line: str) -> None:
    assert isinstance(one(line), ins.Run)


def test_error_lines_of_a_continued_instruction() -> None:
    err = refusal("FROM x\nCOPY \\\n  onlyone\n")
    assert (err.line, err.end_line) == (2, 3)
    assert err.message.startswith("dockerfile parse error line 2: COPY requires")


def test_a_whole_dockerfile() -> None:
    df = parse_dockerfile("""\
ARG BASE=busybox
FROM ${BASE} AS build
ENV APP=/app
WORKDIR $APP
COPY . .
RUN make
FROM busybox
COPY --from=build /app/out /bin/app
USER nobody
LABEL a=b
EXPOSE 8080
HEALTHCHECK CMD ["app", "--check"]
CMD ["app"]
""")
    assert isinstance(df, Dockerfile)
    assert [i.keyword for i in df.instructions] == [
        "ARG", "FROM", "ENV", "WORKDIR", "COPY", "RUN", "FROM", "COPY", "USER", "LABEL",
        "EXPOSE", "HEALTHCHECK", "CMD"]
    assert [i.line for i in df.instructions] == list(range(1, 14))


_WORD = st.text(st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1,
                max_size=8)


@given(st.lists(st.tuples(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True), _WORD),
                min_size=1, max_size=4))
def test_env_pairs_round_trip(pairs: list[tuple[str, str]]) -> None:
    # a last pair of plain text: a line's trailing blanks are trimmed, escaped or not
    # (and in a file an escaped blank ending a line continues it), as in dockerd
    line = "ENV " + " ".join(f"{k}={quote(v)}" for k, v in pairs) + " END=end"
    env = one(line)
    assert isinstance(env, ins.Env)
    assert list(env.expand({}, "\\").pairs) == [*pairs, ("END", "end")]


@given(st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=6), max_size=4))
def test_exec_form_round_trips(args: list[str]) -> None:
    import json
    r = one("RUN " + json.dumps(args))
    assert isinstance(r, ins.Run) and r.json_form and list(r.command) == args
