"""Words of the Dockerfile language: splitting and variable expansion.

Two steps, as Docker does them.  :func:`split_words` cuts an instruction's
arguments into raw words on blanks, keeping quotes and escapes in the word
(so ``"a b"`` stays one word, written with its quotes).  :func:`expand` then
processes one raw word with the environment of the build at that point: it
removes quotes, applies escapes and substitutes variables:

- ``$name`` and ``${name}``: the value, empty when unset;
- ``${name:-word}``: the value, or ``word`` when unset or empty;
- ``${name:+word}``: ``word`` when set and not empty, else empty;
- ``${name?word}`` and ``${name:?word}``: an error (``word`` is its message)
  when unset (``?``) or unset or empty (``:?``);
- inside single quotes nothing is special; inside double quotes ``$``
  substitutes and the escape character escapes only ``"``, ``$`` and itself;
  elsewhere the escape character takes the next character literally.

The escape character is ``\\`` unless the Dockerfile's ``# escape=`` directive
makes it `````.  These are the rules of Docker's Engine API v1.41 builder
(bash's other modifiers, ``${x#y}`` and the like, came later and are refused).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from skiff.core.dockerfile.errors import DockerfileError

__all__ = [
    "DEFAULT_ESCAPE",
    "ESCAPE_CHARS",
    "WordError",
    "expand",
    "expand_words",
    "is_blank",
    "quote",
    "split_words",
    "trim",
    "trim_left",
]

#: the escape character of a Dockerfile without an ``# escape=`` directive
DEFAULT_ESCAPE = "\\"
#: the escape characters the ``# escape=`` directive may choose
ESCAPE_CHARS = ("\\", "`")

_SPECIAL_PARAMS = frozenset("@*#?-$!0")


class WordError(DockerfileError):
    """A word that cannot be processed: an unterminated quote, a bad ``${...}``,
    or a ``${x:?message}`` whose variable is unset."""


def is_blank(ch: str) -> bool:
    """Whether ``ch`` separates words (Go's ``unicode.IsSpace``, which Docker uses:
    Python's ``str.isspace`` also counts the ASCII separators 0x1c-0x1f)."""
    if ch in "\t\n\v\f\r \x85\xa0":
        return True
    return ord(ch) > 0xFF and ch.isspace()


def trim(text: str) -> str:
    """``text`` without leading and trailing blanks (:func:`is_blank`)."""
    start, end = 0, len(text)
    while start < end and is_blank(text[start]):
        start += 1
    while end > start and is_blank(text[end - 1]):
        end -= 1
    return text[start:end]


def trim_left(text: str) -> str:
    """``text`` without leading blanks (:func:`is_blank`)."""
    start = 0
    while start < len(text) and is_blank(text[start]):
        start += 1
    return text[start:]


def _check_escape(escape: str) -> None:
    if escape not in ESCAPE_CHARS:
        raise ValueError(f"escape character must be \\ or `, not {escape!r}")


def split_words(text: str, escape: str = DEFAULT_ESCAPE) -> list[str]:
    """Split ``text`` on blanks into raw words, quotes and escapes kept.

    A blank inside quotes, or after the escape character, does not split; an
    empty quoted word (``""``) is a word; an escape character ending the text is
    dropped.  The words are still to be processed by :func:`expand`."""
    _check_escape(escape)
    words: list[str] = []
    word: list[str] = []
    quote_ch = ""
    in_word = False
    blank_ok = False  # a quoted word counts even when it is empty
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if quote_ch:
            if ch == quote_ch:
                quote_ch = ""
            elif ch == escape and quote_ch != "'":
                if i + 1 == n:
                    quote_ch = ""
                    i += 1
                    continue
                word.append(ch)
                i += 1
                ch = text[i]
            word.append(ch)
            i += 1
            continue
        if is_blank(ch):
            if in_word and (blank_ok or word):
                words.append("".join(word))
            word, in_word, blank_ok = [], False, False
            i += 1
            continue
        in_word = True
        if ch in "'\"":
            quote_ch = ch
            blank_ok = True
        elif ch == escape:
            if i + 1 == n:
                break
            word.append(ch)
            i += 1
            ch = text[i]
        word.append(ch)
        i += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


class _Words:
    """The words of :func:`expand_words`: a quoted or escaped part never splits,
    a substituted value splits on its blanks as the rest of the text does."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.word = ""
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if is_blank(ch):
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word, self.in_word = "", False
        else:
            self.add_raw(ch)

    def add_text(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def result(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word, self.in_word = "", False
        return self.words


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str) -> None:
        _check_escape(escape)
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = escape

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += 1 if ch else 0
        return ch

    def run(self, stop: str = "") -> tuple[str, list[str]]:
        """Process up to ``stop`` (consumed) or to the end when ``stop`` is empty."""
        out: list[str] = []
        words = _Words()
        while (ch := self.peek()) != "":
            if stop and ch == stop:
                self.next()
                return "".join(out), words.result()
            if ch == "'":
                part = self.single_quoted()
                words.add_raw(part)
            elif ch == '"':
                part = self.double_quoted()
                words.add_raw(part)
            elif ch == "$":
                part = self.dollar()
                words.add_text(part)
            else:
                part = self.next()
                if part == self.escape:
                    part = self.next()
                    if part == "":
                        break
                    words.add_raw(part)
                else:
                    words.add_char(part)
            out.append(part)
        if stop:
            raise WordError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out), words.result()

    def single_quoted(self) -> str:
        self.next()
        start = self.pos
        end = self.text.find("'", start)
        if end < 0:
            raise WordError("unexpected end of statement while looking for matching single-quote")
        self.pos = end + 1
        return self.text[start:end]

    def double_quoted(self) -> str:
        self.next()
        out: list[str] = []
        while True:
            ch = self.peek()
            if ch == "":
                raise WordError(
                    "unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                following = self.peek()
                if following == "":
                    continue
                if following in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        ch = self.peek()
        if ch.isdecimal():
            start = self.pos
            while self.peek().isdecimal():
                self.next()
            return self.text[start:self.pos]
        if ch in _SPECIAL_PARAMS:
            return self.next()
        start = self.pos
        while (ch := self.peek()) != "" and (ch.isalpha() or ch.isdecimal() or ch == "_"):
            self.next()
        return self.text[start:self.pos]

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            return self.env.get(name, "") if name else "$"
        self.next()
        first = self.peek()
        if first == "":
            raise WordError("syntax error: missing '}'")
        if first in "{}:":
            raise WordError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        value = self.env.get(name)
        if ch == "":
            raise WordError("syntax error: missing '}'")
        if ch == "}":
            return value or ""
        if ch not in ("?", ":"):
            raise WordError("missing ':' in substitution")
        modifier = "?" if ch == "?" else self.next()
        if ch == ":" and modifier not in ("-", "+", "?"):
            raise WordError(f"unsupported modifier ({modifier}) in substitution")
        word = self.modifier_word()
        if modifier == "-":
            return value if value else word
        if modifier == "+":
            return word if value else ""
        if value is None:
            raise WordError(f"{name}: {word or 'is not allowed to be unset'}")
        if ch == ":" and value == "":
            raise WordError(f"{name}: {word or 'is not allowed to be empty'}")
        return value

    def modifier_word(self) -> str:
        try:
            word, _ = self.run("}")
        except WordError:
            if self.peek() == "":
                raise WordError("syntax error: missing '}'") from None
            raise
        return word


def _failed(text: str, err: WordError) -> WordError:
    return WordError(f"failed to process {json.dumps(text, ensure_ascii=False)}: {err.message}")


def expand(word: str, env: Mapping[str, str], escape: str = DEFAULT_ESCAPE) -> str:
    """Process one raw word: quotes removed, escapes applied, variables of
    ``env`` substituted (an unset one is empty).  Blanks are kept: the result is
    one string however many blanks it holds.  Raises :class:`WordError` naming
    the word when it is malformed."""
    try:
        return _Lexer(word, env, escape).run()[0]
    except WordError as err:
        raise _failed(word, err) from None


def expand_words(text: str, env: Mapping[str, str], escape: str = DEFAULT_ESCAPE) -> list[str]:
    """Process ``text`` as :func:`expand` does and split the result into words:
    on unquoted, unescaped blanks, including blanks that a substituted value
    brings.  Empty words are dropped.  Raises :class:`WordError` as
    :func:`expand` does."""
    try:
        return _Lexer(text, env, escape).run()[1]
    except WordError as err:
        raise _failed(text, err) from None


def quote(word: str, escape: str = DEFAULT_ESCAPE) -> str:
    """A raw word that :func:`split_words` keeps as one word and :func:`expand`
    turns back into ``word`` exactly (whatever ``word`` holds)."""
    _check_escape(escape)
    if not word:
        return '""'
    return "".join(escape + ch if is_blank(ch) or ch in ("'", '"', "$", escape) else ch
                   for ch in word)
