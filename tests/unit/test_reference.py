"""Image references: Docker's grammar, normalisation, familiar form, messages."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from skiff.core.api.errors import status_of
from skiff.core.errors import InvalidParameter
from skiff.core.images.errors import InvalidReference
from skiff.core.images.reference import (
    Reference,
    familiar_match,
    familiar_name,
    familiar_string,
    is_full_id,
    parse,
    parse_digest,
)

D = "sha256:" + hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize(
    ("text", "domain", "path", "tag", "digest", "familiar"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
        ("library/busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
        ("docker.io/library/busybox:1.36", "docker.io", "library/busybox", "1.36", None,
         "busybox:1.36"),
        ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None,
         "busybox:latest"),
        ("user/repo:tag", "docker.io", "user/repo", "tag", None, "user/repo:tag"),
        ("docker.io/library/a/b", "docker.io", "library/a/b", "latest", None,
         "library/a/b:latest"),
        ("127.0.0.1:5000/a/b:tag", "127.0.0.1:5000", "a/b", "tag", None,
         "127.0.0.1:5000/a/b:tag"),
        ("localhost/foo", "localhost", "foo", "latest", None, "localhost/foo:latest"),
        ("localhost:5000/foo@" + D, "localhost:5000", "foo", None, D, "localhost:5000/foo@" + D),
        ("busybox:1@" + D, "docker.io", "library/busybox", "1", D, "busybox:1@" + D),
        ("foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080", None,
         "foo_bar.com:8080"),
        ("[::1]:5000/a", "[::1]:5000", "a", "latest", None, "[::1]:5000/a:latest"),
        ("registry.example.com/team/app:v1.2-rc_3", "registry.example.com", "team/app",
         "v1.2-rc_3", None, "registry.example.com/team/app:v1.2-rc_3"),
        ("foo--bar__baz.qux", "docker.io", "library/foo--bar__baz.qux", "latest", None,
         "foo--bar__baz.qux:latest"),
        ("busybox:Tag_UPPER", "docker.io", "library/busybox", "Tag_UPPER", None,
         "busybox:Tag_UPPER"),
        # a capitalised first component can only be a host (distribution >= 2.8)
        ("Foo/bar", "Foo", "bar", "latest", None, "Foo/bar:latest"),
    ],
)
def test_parse_normalises_like_docker(
    text: str, domain: str, path: str, tag: str | None, digest: str | None, familiar: str
) -> None:
    ref = parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert familiar_string(ref) == familiar
    assert ref.familiar == familiar
    assert parse(familiar) == ref


def test_name_only_without_default_tag() -> None:
    ref = parse("busybox", default_tag=False)
    assert ref.tag is None and ref.digest is None and ref.name_only
    assert str(ref) == "docker.io/library/busybox"
    assert familiar_string(ref) == "busybox"
    assert ref.with_default_tag().tag == "latest"
    digested = parse("busybox@" + D)
    assert digested.tag is None  # a digest reference gets no default tag
    assert digested.with_default_tag() == digested


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Busybox", "invalid reference format: repository name must be lowercase"),
        ("docker.io/Foo", "invalid reference format: repository name must be lowercase"),
        ("localhost:5000/Foo:tag", "invalid reference format: repository name must be lowercase"),
        ("", "invalid reference format"),
        (":justtag", "invalid reference format"),
        ("@" + D, "invalid reference format"),
        ("repo@sha256:abc", "invalid reference format"),
        ("aa/asdf$$^/aa", "invalid reference format"),
        ("-foo", "invalid reference format"),
        ("foo___bar", "invalid reference format"),
        ("foo/", "invalid reference format"),
        ("busybox:" + "a" * 129, "invalid reference format"),
        ("busybox:-tag", "invalid reference format"),
        ("a:b:c", "invalid reference format"),
        ("a/" * 127 + "ab", "repository name must not be more than 255 characters"),
        ("validname@invaliddigest:" + "e" * 64, "unsupported digest algorithm"),
        ("validname@sha256:" + "e" * 63, "invalid checksum digest length"),
        ("validname@sha256:" + "e" * 65, "invalid checksum digest length"),
        ("validname@sha256:" + "E" * 64, "invalid checksum digest format"),
        ("e" * 64, "invalid repository name (" + "e" * 64
         + "), cannot specify 64-byte hexadecimal strings"),
    ],
)
def test_invalid_references_with_dockers_messages(text: str, message: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse(text)
    assert str(info.value) == message
    # the API maps it to 400
    assert isinstance(info.value, InvalidParameter) and status_of(info.value) == 400


def test_digest_validation() -> None:
    assert parse_digest(D) == D
    assert parse_digest("sha512:" + "a" * 128).startswith("sha512:")
    for bad in ("sha256", "sha256:", ":abc", "md5:" + "a" * 32):
        with pytest.raises(InvalidReference):
            parse_digest(bad)


def test_is_full_id() -> None:
    assert is_full_id("a" * 64)
    assert not is_full_id("a" * 63)
    assert not is_full_id("sha256:" + "a" * 64)
    assert not is_full_id("A" * 64)


def test_tag_and_digest_helpers() -> None:
    ref = parse("busybox")
    assert ref.with_tag("1.0").familiar == "busybox:1.0"
    with pytest.raises(InvalidReference):
        ref.with_tag("-bad")
    assert ref.trimmed() == Reference("docker.io", "library/busybox")
    assert ref.with_digest(D).familiar == "busybox:latest@" + D
    assert ref.name == "docker.io/library/busybox"
    assert familiar_name(parse("docker.io/user/app")) == "user/app"
    assert familiar_name(parse("quay.io/library/app")) == "quay.io/library/app"


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("busybox", "busybox:latest", True),
        ("busybox:latest", "busybox", True),
        ("busy*", "busybox:1.0", True),
        ("busybox:1.*", "busybox:1.36", True),
        ("busybox:2*", "busybox:1.36", False),
        ("*", "user/app:v1", False),  # * never crosses a slash
        ("*/*", "user/app:v1", True),
        ("user/ap?", "user/app:v1", True),
        ("user/[a-b]pp", "user/app", True),
        ("user/[^a]pp", "user/app", False),
        ("library/busybox", "busybox", False),  # matched against the familiar name
    ],
)
def test_familiar_match(pattern: str, text: str, matches: bool) -> None:
    assert familiar_match(pattern, parse(text)) is matches


# -- property tests -------------------------------------------------------------

_component = st.from_regex(r"[a-z0-9]{1,6}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,6}){0,2}",
                           fullmatch=True)
_path = st.lists(_component, min_size=1, max_size=4).map("/".join)
_domain = st.one_of(
    st.sampled_from(["docker.io", "localhost", "localhost:5000", "127.0.0.1:5000",
                     "registry.example.com", "[::1]:5000", "Quay.IO"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]\.[a-z]{2,5}(?::[1-9][0-9]{0,4})?",
                  fullmatch=True),
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digest = st.binary(max_size=16).map(lambda b: "sha256:" + hashlib.sha256(b).hexdigest())


@given(_domain, _path, st.one_of(st.none(), _tag), st.one_of(st.none(), _digest))
def test_round_trip_through_strings(
    domain: str, path: str, tag: str | None, digest: str | None
) -> None:
    text = f"{domain}/{path}"
    assume(len(text) <= 255)
    if tag is not None:
        text += ":" + tag
    if digest is not None:
        text += "@" + digest
    ref = parse(text, default_tag=False)
    expected_path = path
    if domain == "docker.io" and "/" not in path:
        expected_path = "library/" + path
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, expected_path, tag, digest)
    # full form and familiar form both parse back to the same reference
    assert parse(str(ref), default_tag=False) == ref
    first = path.split("/")[0]
    if not (domain == "docker.io" and "/" in path and ("." in first or ":" in first)):
        # Docker's own quirk: the familiar form of docker.io/a.b/c is "a.b/c",
        # which names the registry a.b; only other names survive the trip.
        assert parse(familiar_string(ref), default_tag=False) == ref
    # normalising is idempotent, and the default tag only fills a bare name
    tagged = parse(text)
    assert parse(str(tagged)) == tagged
    assert tagged.tag == (tag if (tag is not None or digest is not None) else "latest")


@given(_path, st.one_of(st.none(), _tag))
def test_familiar_names_of_docker_hub(path: str, tag: str | None) -> None:
    first = path.split("/", 1)[0]
    # a first component with a dot or a port would be a registry, not a path
    assume("." not in first and first != "localhost")
    text = path + (":" + tag if tag else "")
    ref = parse(text)
    assert ref.domain == "docker.io"
    shown = familiar_string(ref)
    official = path.startswith("library/") and path.count("/") == 1
    assert shown == (path[8:] if official else path) + ":" + (tag or "latest")
    assert parse(shown) == ref


@given(st.text(max_size=40))
def test_parse_never_crashes(text: str) -> None:
    try:
        ref = parse(text)
    except InvalidReference:
        return
    assert parse(str(ref)) == ref
