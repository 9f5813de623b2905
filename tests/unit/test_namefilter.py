"""The ``name`` filter as dockerd reads it: regular expressions, searched unanchored."""

from __future__ import annotations

from skiff.core import namefilter


def test_unanchored_search_and_anchors() -> None:
    assert namefilter.matches(["web"], "my-web-1")
    assert not namefilter.matches(["^web$"], "my-web-1")
    assert namefilter.matches(["^web$"], "web")
    assert namefilter.matches(["^my-.*-1$"], "my-web-1")


def test_containers_match_with_and_without_the_slash() -> None:
    assert namefilter.matches_container(["^/web$"], "/web")
    assert namefilter.matches_container(["^web$"], "/web")
    assert namefilter.matches_container(["^/web$"], "web")
    assert not namefilter.matches_container(["^/web$"], "/web2")


def test_values_that_do_not_compile_match_only_themselves() -> None:
    assert not namefilter.matches(["["], "a[b")
    assert namefilter.matches(["a[b"], "a[b")  # the exact name, as dockerd's ExactMatch
    # look-around and back-references are not RE2: ignored, as dockerd ignores them
    assert not namefilter.matches(["(?=w)"], "web")
    assert not namefilter.matches([r"(w)\1"], "ww")
