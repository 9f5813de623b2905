"""Dockerfile words (core/dockerfile/words.py): splitting and expansion as the
Dockerfile reference describes them ("Environment replacement")."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiff.core.dockerfile.words import (
    WordError,
    expand,
    expand_words,
    is_blank,
    quote,
    split_words,
)

ENV = {"foo": "/bar", "empty": "", "sp": "a b", "n": "1"}


@pytest.mark.parametrize(("text", "words"), [
    ("a b  c", ["a", "b", "c"]),
    ("  lead trail  ", ["lead", "trail"]),
    ('"a b" c', ['"a b"', "c"]),
    ("'a b'c d", ["'a b'c", "d"]),
    (r"a\ b c", [r"a\ b", "c"]),
    ('"" x', ['""', "x"]),
    ('k="v w" z=1', ['k="v w"', "z=1"]),
    ('"a \\" b"', ['"a \\" b"']),
    ("'a \\' b'", ["'a \\'", "b'"]),  # no escape inside single quotes
    ("end\\", ["end"]),
    ("", []),
    ("\t\n ", []),
])
def test_split_words(text: str, words: list[str]) -> None:
    assert split_words(text) == words


def test_split_words_backtick_escape() -> None:
    assert split_words("a` b c", escape="`") == ["a` b", "c"]
    assert split_words("a` b") == ["a`", "b"]
    assert split_words(r"C:\dir x", escape="`") == [r"C:\dir", "x"]


@pytest.mark.parametrize(("word", "value"), [
    # the reference's examples of environment replacement
    ("$foo", "/bar"),
    ("${foo}", "/bar"),
    ("${foo}/baz", "/bar/baz"),
    ("\\$foo", "$foo"),
    ("\\${foo}", "${foo}"),
    ("${foo:-x}", "/bar"),
    ("${nope:-x}", "x"),
    ("${empty:-x}", "x"),
    ("${foo:+x}", "x"),
    ("${nope:+x}", ""),
    ("${empty:+x}", ""),
    ("${nope:-${foo}}", "/bar"),  # the word is itself expanded
    ("${nope:-a b}", "a b"),
    ("${nope:-a\\}b}", "a}b"),
    ("${empty?x}", ""),  # ? only refuses unset
    ("${foo:?x}", "/bar"),
    ("$nope", ""),
    ("$", "$"),
    ("a$", "a$"),
    ("$/x", "$/x"),
    ("$foo_x", ""),  # the name runs on
    ("${foo}_x", "/bar_x"),
    ("$1", ""),
    # quotes
    ("'$foo'", "$foo"),
    ('"$foo"', "/bar"),
    ('"a b"', "a b"),
    ('"\\"q\\""', '"q"'),
    ('"\\$foo"', "$foo"),
    ('"\\x"', "\\x"),  # in double quotes the escape escapes only " $ and itself
    ('"\\\\"', "\\"),
    ("'\\n'", "\\n"),
    ("a\\ b", "a b"),
    ("a\\\\b", "a\\b"),
    ("end\\", "end"),
    ('x"y"z', "xyz"),
])
def test_expand(word: str, value: str) -> None:
    assert expand(word, ENV) == value


def test_expand_backtick_escape() -> None:
    assert expand("`$foo", ENV, escape="`") == "$foo"
    assert expand(r"C:\dir", ENV, escape="`") == r"C:\dir"
    assert expand('"a`"b"', ENV, escape="`") == 'a"b'


@pytest.mark.parametrize(("word", "message"), [
    ("'open", "looking for matching single-quote"),
    ('"open', "looking for matching double-quote"),
    ("${foo", "missing '}'"),
    ("${foo:-x", "missing '}'"),
    ("${}", "bad substitution"),
    ("${:-x}", "bad substitution"),
    ("${foo!}", "missing ':' in substitution"),
    ("${foo:=x}", r"unsupported modifier \(=\) in substitution"),
    ("${nope:?must be set}", "nope: must be set"),
    ("${nope?}", "nope: is not allowed to be unset"),
    ("${empty:?}", "empty: is not allowed to be empty"),
])
def test_expand_refusals(word: str, message: str) -> None:
    with pytest.raises(WordError, match=message) as info:
        expand(word, ENV)
    assert info.value.message.startswith(f"failed to process {json.dumps(word)}")


def test_expand_words_splits_substitutions() -> None:
    assert expand_words("x $sp 'c d' \"$sp\" e\\ f", ENV) == ["x", "a", "b", "c d", "a b", "e f"]
    assert expand_words('"" $empty', ENV) == []


def test_bad_escape_char() -> None:
    with pytest.raises(ValueError):
        split_words("x", escape="/")


def test_blanks_are_go_blanks() -> None:
    assert is_blank(" ") and is_blank("\t") and is_blank("\u2003") and is_blank("\xa0")
    assert not is_blank("\x1c") and not is_blank("x")


_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)


@given(st.lists(_TEXT, max_size=6), st.sampled_from(["\\", "`"]))
def test_quote_round_trips(words: list[str], escape: str) -> None:
    line = " ".join(quote(w, escape) for w in words)
    assert [expand(w, {}, escape) for w in split_words(line, escape)] == words
    assert expand_words(line, {}, escape) == [w for w in words if w]


@given(_TEXT, st.dictionaries(st.from_regex(r"[a-z]{1,3}", fullmatch=True), _TEXT))
def test_quoted_words_never_expand(word: str, env: dict[str, str]) -> None:
    assert expand(quote(word), env) == word


@given(st.text(st.sampled_from("ab $\\'\"{}:-+ \t"), max_size=20))
def test_split_then_expand_never_crashes(text: str) -> None:
    # any input gives words or a WordError, nothing else
    for word in split_words(text):
        with contextlib.suppress(WordError):
            expand(word, ENV)
