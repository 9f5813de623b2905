""".dockerignore (core/dockerfile/ignore.py): the documented examples, Docker's
particular cases, and agreement with a naive matcher over random patterns."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skiff.core.dockerfile.errors import DockerfileError
from skiff.core.dockerfile.ignore import (
    IgnoreMatcher,
    always_read,
    clean_path,
    read_dockerignore,
)


def test_read_dockerignore() -> None:
    text = ("\ufeff# comment\n  */temp*  \n\n#another\n ! keep/me/ \n/abs/path\n./x/../y//z/\n"
            " # not a comment: the # is not in column 1\n/\n")
    assert read_dockerignore(text) == ["*/temp*", "!keep/me", "abs/path", "y/z",
                                       "# not a comment: the # is not in column 1", "/"]
    assert read_dockerignore(b"a\r\nb\n") == ["a", "b"]


@pytest.mark.parametrize(("path", "cleaned"), [
    ("a/./b/", "a/b"), ("", "."), ("../a", "../a"), ("/../a", "/a"), ("a/..", "."),
    ("//a//b", "/a/b"), ("a/b/../../..", ".."),
])
def test_clean_path(path: str, cleaned: str) -> None:
    assert clean_path(path) == cleaned


def test_documented_example() -> None:
    m = IgnoreMatcher.from_dockerignore("# comment\n*/temp*\n*/*/temp*\ntemp?\n")
    assert m.excluded("somedir/temporary.txt")
    assert m.excluded("somedir/temp") and m.excluded("somedir/temp/inside/deep")
    assert m.excluded("somedir/subdir/temporary.txt")
    assert m.excluded("tempa") and m.excluded("tempb")
    assert not m.excluded("temporary.txt")  # */temp* is one level down only
    assert not m.excluded("a/b/c/temp")
    assert not m.excluded("tempab")
    assert not m.excluded(".")


def test_double_star() -> None:
    m = IgnoreMatcher(["**/*.go"])
    assert m.excluded("main.go") and m.excluded("a/b/c.go")
    assert not m.excluded("a/b/c.goo")
    m = IgnoreMatcher(["a/**/b"])
    assert m.excluded("a/b") and m.excluded("a/x/y/b") and m.excluded("a/x/b/inside")
    assert not m.excluded("a/xb")
    m = IgnoreMatcher(["a/**"])
    assert not m.excluded("a") and m.excluded("a/x") and m.excluded("a/x/y")
    m = IgnoreMatcher(["**.txt"])  # Docker's suffix case: every name ending in .txt
    assert m.excluded("notes.txt") and m.excluded("d/e/fnotes.txt")
    assert IgnoreMatcher(["**"]).excluded("anything/at/all")


def test_exceptions_last_match_wins() -> None:
    m = IgnoreMatcher.from_dockerignore("*.md\n!README.md\n")
    assert m.excluded("CHANGES.md") and not m.excluded("README.md")
    # the reference's two orders
    m = IgnoreMatcher.from_dockerignore("*.md\n!README*.md\nREADME-secret.md\n")
    assert m.excluded("a.md") and m.excluded("README-secret.md")
    assert not m.excluded("README-public.md")
    m = IgnoreMatcher.from_dockerignore("*.md\nREADME-secret.md\n!README*.md\n")
    assert not m.excluded("README-secret.md") and m.excluded("a.md")


def test_include_only_what_is_listed() -> None:
    m = IgnoreMatcher.from_dockerignore("*\n!src\n!Dockerfile\n")
    assert m.excluded("node_modules") and m.excluded("node_modules/x")
    assert not m.excluded("src") and not m.excluded("src/a/b.py")
    assert not m.excluded("Dockerfile")
    assert m.may_skip_dir("node_modules") and not m.may_skip_dir("src")


def test_parent_directory_match_excludes_contents() -> None:
    m = IgnoreMatcher(["build", "**/cache"])
    assert m.excluded("build/out/x.o") and m.excluded("a/b/cache/c/d")
    assert not m.excluded("builder/x")


def test_exception_inside_an_excluded_directory() -> None:
    m = IgnoreMatcher(["docs", "!docs/keep.md"])
    assert m.excluded("docs") and m.excluded("docs/other.md")
    assert not m.excluded("docs/keep.md")
    assert not m.may_skip_dir("docs")  # the walk must look inside
    assert m.may_skip_dir("docs/sub")  # keep.md cannot be inside it
    # an exception with a wildcard that could reach inside (docker/cli#2919's case)
    m = IgnoreMatcher(["*/", "!*/keep"])
    assert not m.may_skip_dir("a")
    assert not m.excluded("a/keep")
    m = IgnoreMatcher(["vendor", "!src/**/*.py"])
    assert m.may_skip_dir("vendor")


def test_escapes_and_classes() -> None:
    m = IgnoreMatcher(["a\\*b", "[xy].txt", "f?o"])
    assert m.excluded("a*b") and not m.excluded("axb")
    assert m.excluded("x.txt") and not m.excluded("z.txt")
    assert m.excluded("foo") and not m.excluded("f/o")


def test_bad_patterns() -> None:
    with pytest.raises(DockerfileError, match='illegal exclusion pattern: "!"'):
        IgnoreMatcher(["!"])
    with pytest.raises(DockerfileError, match="syntax error in pattern"):
        IgnoreMatcher(["a[b"])


def test_always_read() -> None:
    assert always_read(".dockerignore") and always_read("./Dockerfile")
    assert always_read("build/Dockerfile.dev", "build/Dockerfile.dev")
    assert not always_read("Dockerfile", "other/Dockerfile")


def test_patterns_kept_cleaned() -> None:
    assert IgnoreMatcher([" a/ ", "", "!b//c"]).patterns == ["a", "!b/c"]


# --- a naive matcher, component by component, to compare with -----------------

def _glob_parts(pattern: list[str], path: list[str], trailing_any: bool) -> bool:
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        if not rest and trailing_any:
            return len(path) >= 1  # a final ** matches what is inside, one level or more
        return any(_glob_parts(rest, path[i:], trailing_any) for i in range(len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], head) and \
        _glob_parts(rest, path[1:], trailing_any)


def _naive_excluded(patterns: list[str], path: str) -> bool:
    parts = path.split("/")
    verdict = False
    for raw in patterns:
        exception = raw.startswith("!")
        pattern = (raw[1:] if exception else raw).split("/")
        for n in range(1, len(parts) + 1):
            if _glob_parts(pattern, parts[:n], trailing_any=True):
                verdict = not exception
                break
    return verdict


_COMPONENT = st.sampled_from(["a", "b", "ab", "*", "?", "a*", "*b", "**"])
_PATTERN = st.builds(
    lambda neg, parts: ("!" if neg else "") + "/".join(parts),
    st.booleans(),
    # whole components only: Docker's cases of ** glued to a name are tested above
    st.lists(_COMPONENT, min_size=1, max_size=3),
)
_PATH = st.lists(st.sampled_from(["a", "b", "ab", "ba", "aab"]), min_size=1, max_size=4).map(
    "/".join)


@settings(max_examples=400)
@given(st.lists(_PATTERN, max_size=4), st.lists(_PATH, min_size=1, max_size=6))
def test_agrees_with_a_naive_matcher(patterns: list[str], paths: list[str]) -> None:
    m = IgnoreMatcher(patterns)
    for path in paths:
        assert m.excluded(path) == _naive_excluded(patterns, path), (patterns, path)


@settings(max_examples=400)
@given(st.lists(_PATTERN, max_size=4), _PATH, st.lists(_PATH, min_size=1, max_size=6))
def test_a_skipped_directory_hides_nothing_included(patterns: list[str], directory: str,
                                                    tails: list[str]) -> None:
    m = IgnoreMatcher(patterns)
    if m.may_skip_dir(directory):
        for tail in tails:
            assert _naive_excluded(patterns, f"{directory}/{tail}"), (patterns, directory, tail)
