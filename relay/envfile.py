"""``--env-file``: read as systemd's ``EnvironmentFile=`` reads it, refuse what others misread.

The relay's env file is also the unit's ``EnvironmentFile=`` (``/etc/ahasend-relay/relay.env``),
and operators hand the same file to ``docker --env-file``, compose's ``env_file:`` or a shell.
``parse`` is a port of systemd's parser (``src/basic/env-file.c``, ``parse_env_file_internal``):
``KEY=value`` lines, ``#``/``;`` comment lines, whitespace around key and value dropped,
``'...'`` literal, ``"..."`` with shell escapes, backslash escapes in unquoted text; a later
assignment replaces an earlier one. On top of that ``read_env_file`` refuses, with the line
number, every construct that systemd reads one way and other readers another:

- an inline comment (``RELAY_PORT=2526 # test``: systemd keeps ``# test`` in the value);
- text after a closing quote (``"a" # b`` is ``a# b`` to systemd);
- a backslash (systemd unescapes it, docker keeps it, python-dotenv decodes ``\\n``);
- ``$`` outside single quotes (shells and compose expand it, systemd does not);
- a value spanning lines, a line without ``=``, a key that is not a variable name
  (``export KEY=...``), invalid UTF-8 or NUL: systemd skips or mangles those lines;
- a comment line ending in a backslash (systemd before v254 continues the comment onto
  the next line, later versions do not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum, auto
from pathlib import Path

from relay.errors import ConfigError

__all__ = ["Assignment", "parse", "read_env_file"]

_NEWLINE = "\n\r"
_WHITESPACE = " \t\n\r"
_COMMENTS = "#;"
_SHELL_NEED_ESCAPE = '"\\`$'
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _State(Enum):
    PRE_KEY = auto()
    KEY = auto()
    PRE_VALUE = auto()
    VALUE = auto()
    VALUE_ESCAPE = auto()
    SINGLE_QUOTE = auto()
    DOUBLE_QUOTE = auto()
    DOUBLE_QUOTE_ESCAPE = auto()
    COMMENT = auto()


@dataclass(slots=True)
class Assignment:
    """One ``KEY=value`` as systemd reads it, and what the line held that others read apart."""

    line: int
    key: str
    value: str
    problems: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Parser:
    """systemd's state machine, one character at a time; ``finish`` returns what it read."""

    state: _State = _State.PRE_KEY
    line: int = 1
    start: int = 1
    key: str = ""
    value: str = ""
    key_ws: int | None = None  # where trailing whitespace of the key starts
    value_ws: int | None = None  # where trailing whitespace of the unquoted value starts
    quoted: bool = False  # a quote was closed: anything after it is ambiguous
    problems: list[str] = field(default_factory=list)
    found: list[Assignment] = field(default_factory=list)
    ignored: list[tuple[int, str]] = field(default_factory=list)

    def feed(self, c: str, nxt: str) -> None:
        handler = getattr(self, f"_{self.state.name.lower()}")
        handler(c, nxt)
        if c == "\n":
            self.line += 1

    def _pre_key(self, c: str, nxt: str) -> None:
        if c in _COMMENTS:
            self.state = _State.COMMENT
        elif c not in _WHITESPACE:
            self.state, self.start, self.key, self.key_ws = _State.KEY, self.line, c, None

    def _key(self, c: str, nxt: str) -> None:
        if c in _NEWLINE:
            self.ignored.append((self.start, f"{self.key.strip()!r} has no '='"))
            self.state = _State.PRE_KEY
        elif c == "=":
            self.state, self.value, self.value_ws = _State.PRE_VALUE, "", None
            self.quoted, self.problems = False, []
        else:
            if c not in _WHITESPACE:
                self.key_ws = None
            elif self.key_ws is None:
                self.key_ws = len(self.key)
            self.key += c

    def _pre_value(self, c: str, nxt: str) -> None:
        if c in _NEWLINE:
            self._push()
        elif c == "'":
            self._after_quote()
            self.state = _State.SINGLE_QUOTE
        elif c == '"':
            self._after_quote()
            self.state = _State.DOUBLE_QUOTE
        elif c == "\\":
            self._backslash()
            self.state = _State.VALUE_ESCAPE
        elif c not in _WHITESPACE:
            self._after_quote()
            self._unquoted(c)
            self.state = _State.VALUE
            self.value += c

    def _value(self, c: str, nxt: str) -> None:
        if c in _NEWLINE:
            if self.value_ws is not None:
                self.value = self.value[: self.value_ws]
            self._push()
        elif c == "\\":
            self._backslash()
            self.state, self.value_ws = _State.VALUE_ESCAPE, None
        else:
            if c == "#" and self.value_ws is not None:
                self.problems.append(
                    "an inline comment: systemd keeps it in the value; "
                    "put comments on lines of their own"
                )
            self._unquoted(c)
            if c not in _WHITESPACE:
                self.value_ws = None
            elif self.value_ws is None:
                self.value_ws = len(self.value)
            self.value += c

    def _value_escape(self, c: str, nxt: str) -> None:
        self.state = _State.VALUE
        if c not in _NEWLINE:
            self.value += c
        else:
            self._multiline()

    def _single_quote(self, c: str, nxt: str) -> None:
        if c == "'":
            self.state, self.quoted = _State.PRE_VALUE, True
        else:
            if c in _NEWLINE:
                self._multiline()
            self.value += c

    def _double_quote(self, c: str, nxt: str) -> None:
        if c == '"':
            self.state, self.quoted = _State.PRE_VALUE, True
        elif c == "\\":
            self._backslash()
            self.state = _State.DOUBLE_QUOTE_ESCAPE
        else:
            if c in _NEWLINE:
                self._multiline()
            if c == "$":
                self._dollar()
            self.value += c

    def _double_quote_escape(self, c: str, nxt: str) -> None:
        self.state = _State.DOUBLE_QUOTE
        if c in _SHELL_NEED_ESCAPE:
            self.value += c
        elif c != "\n":
            self.value += "\\" + c
        else:
            self._multiline()

    def _comment(self, c: str, nxt: str) -> None:
        if c == "\\" and nxt in _NEWLINE:
            self.ignored.append(
                (self.line, "a comment ending in a backslash (systemd before v254 "
                            "continues it onto the next line)")
            )  # fmt: skip
        elif c in _NEWLINE:
            self.state = _State.PRE_KEY

    def _push(self) -> None:
        key = self.key[: self.key_ws] if self.key_ws is not None else self.key
        self.found.append(Assignment(self.start, key, self.value, self.problems))
        self.state, self.key, self.value, self.problems = _State.PRE_KEY, "", "", []

    def _after_quote(self) -> None:
        if self.quoted:
            self.problems.append("text after the closing quote (systemd appends it)")
            self.quoted = False

    def _unquoted(self, c: str) -> None:
        if c == "$":
            self._dollar()

    def _dollar(self) -> None:
        self.problems.append(
            "'$' outside single quotes: shells and docker compose expand it, systemd does not"
        )

    def _backslash(self) -> None:
        self.problems.append(
            "a backslash: systemd removes it, docker keeps it; use single quotes and no backslash"
        )

    def _multiline(self) -> None:
        self.problems.append("a value spanning lines")

    def finish(self) -> tuple[list[Assignment], list[tuple[int, str]]]:
        if self.state is _State.KEY:
            self.ignored.append((self.start, f"{self.key.strip()!r} has no '='"))
        elif self.state in (_State.SINGLE_QUOTE, _State.DOUBLE_QUOTE, _State.DOUBLE_QUOTE_ESCAPE):
            self.problems.append("an unterminated quote")
            self._push()
        elif self.state is not _State.PRE_KEY and self.state is not _State.COMMENT:
            if self.state is _State.VALUE and self.value_ws is not None:
                self.value = self.value[: self.value_ws]
            self._push()
        return self.found, self.ignored


def parse(text: str) -> tuple[list[Assignment], list[tuple[int, str]]]:
    """(assignments as systemd reads them, (line, why) of lines systemd would ignore)."""
    parser = _Parser()
    for index, c in enumerate(text):
        parser.feed(c, text[index + 1 : index + 2])
    return parser.finish()


def read_env_file(path: Path) -> dict[str, tuple[str, int]]:
    """``{KEY: (value, line)}`` from ``path``; ConfigError naming the line of any ambiguity."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--env-file: cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 (systemd ignores such lines)") from None
    if "\0" in text:
        raise ConfigError(f"{path}: contains a NUL byte")
    if text.startswith("\ufeff"):
        raise ConfigError(f"{path}: starts with a byte order mark (systemd reads it as "
                          "part of the first name); save it as UTF-8 without BOM")  # fmt: skip
    assignments, ignored = parse(text)
    problems = [f"{path}:{line}: {why}" for line, why in ignored]
    values: dict[str, tuple[str, int]] = {}
    for item in assignments:
        if not _NAME.fullmatch(item.key):
            problems.append(f"{path}:{item.line}: {item.key!r} is not a variable name "
                            "(systemd ignores the line)")  # fmt: skip
        where = f"{path}:{item.line}: {item.key}"
        problems.extend(f"{where}: {why}" for why in dict.fromkeys(item.problems))
        values[item.key] = (item.value, item.line)
    if problems:
        raise ConfigError("; ".join(problems))
    return values
