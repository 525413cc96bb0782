"""AhaSend's SMTP special headers (``ahasend-*``): parsed into request fields, never forwarded.

``directive_fields(pairs)`` takes the ``(name, value)`` pairs of every ``ahasend-*`` header of
a message (names in any case, values already unfolded and decoded) and returns the fields
they set on a ``CreateConversationMessageRequest``:

=============================== ======================== ===================================
header                          value                    request field
=============================== ======================== ===================================
ahasend-tags                    comma-separated list     ``tags`` (trimmed, empties dropped,
                                                         deduplicated, first order kept)
ahasend-track-opens             boolean                  ``tracking.open``
ahasend-track-clicks            boolean                  ``tracking.click``
ahasend-sandbox                 boolean                  ``sandbox``
ahasend-sandbox-result          deliver|bounce|defer|    ``sandbox_result``
                                fail|suppress
ahasend-metadata-retention      integer 1-30 (days)      ``retention.metadata``
ahasend-data-retention          integer 0-30 (days)      ``retention.data``
ahasend-schedule-first-attempt  RFC 3339 date-time       ``schedule.first_attempt``
ahasend-schedule-expires        RFC 3339 date-time       ``schedule.expires``
=============================== ======================== ===================================

Booleans accept ``true/false``, ``yes/no``, ``on/off`` and ``1/0`` in any case. Date-times
need a UTC offset (``Z`` or ``±hh:mm``); they are passed on with ``T`` and ``Z`` upper-cased
and are not compared with the clock here (the API checks "in the future, within 7/8 days").

Repeated headers: ``ahasend-tags`` headers accumulate; any other directive may repeat only
with the same value. Unknown ``ahasend-*`` names are ignored (still never forwarded), so a
client written for AhaSend's own SMTP service keeps working. Every problem raises
``InvalidHeader`` whose detail starts with the header name, because it is shown to the client.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Final

from relay.errors import InvalidHeader

__all__ = ["PREFIX", "directive_fields"]

PREFIX: Final = "ahasend-"

_TRUE: Final = frozenset({"true", "yes", "on", "1"})
_FALSE: Final = frozenset({"false", "no", "off", "0"})
_SANDBOX_RESULTS: Final = ("deliver", "bounce", "defer", "fail", "suppress")
_RFC3339: Final = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_SHOWN_VALUE = 60


def _invalid(name: str, problem: str, value: str) -> InvalidHeader:
    shown = value if len(value) <= _SHOWN_VALUE else value[: _SHOWN_VALUE - 3] + "..."
    return InvalidHeader(f"{name}: {problem}, got {shown!r}")


def parse_bool(name: str, value: str) -> bool:
    """``value`` as a boolean (true/false, yes/no, on/off, 1/0); else ``InvalidHeader``."""
    word = value.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise _invalid(name, "expected true/false, yes/no or 1/0", value)


def parse_days(name: str, value: str, low: int, high: int) -> int:
    """``value`` as a whole number of days in ``low..high``; else ``InvalidHeader``."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise _invalid(name, f"expected a whole number of days from {low} to {high}", value)
    return int(text)


def parse_sandbox_result(name: str, value: str) -> str:
    """``value`` as one of AhaSend's sandbox results (case-insensitive); else ``InvalidHeader``."""
    word = value.strip().lower()
    if word not in _SANDBOX_RESULTS:
        raise _invalid(name, f"expected one of {', '.join(_SANDBOX_RESULTS)}", value)
    return word


def parse_datetime(name: str, value: str) -> str:
    """``value`` as a normalised RFC 3339 date-time with an offset; else ``InvalidHeader``."""
    match = _RFC3339.fullmatch(value.strip())
    if match is None:
        raise _invalid(name, "expected an RFC 3339 date-time with a timezone", value)
    date, time, fraction, zone = match.groups()
    zone = "Z" if zone in ("z", "Z") else zone
    normalised = f"{date}T{time}{fraction or ''}{zone}"
    try:  # range check: month 13, hour 25...
        datetime.fromisoformat(normalised)
    except ValueError:
        raise _invalid(name, "not a valid date-time", value) from None
    return normalised


def parse_tags(value: str) -> list[str]:
    """The non-empty, trimmed items of a comma-separated list."""
    return [tag for item in value.split(",") if (tag := item.strip())]


# name -> (path in the request, parser)
_Parser = Callable[[str, str], Any]
_DIRECTIVES: Final[dict[str, tuple[tuple[str, ...], _Parser]]] = {
    "ahasend-track-opens": (("tracking", "open"), parse_bool),
    "ahasend-track-clicks": (("tracking", "click"), parse_bool),
    "ahasend-sandbox": (("sandbox",), parse_bool),
    "ahasend-sandbox-result": (("sandbox_result",), parse_sandbox_result),
    "ahasend-metadata-retention": (
        ("retention", "metadata"),
        lambda n, v: parse_days(n, v, 1, 30),
    ),
    "ahasend-data-retention": (("retention", "data"), lambda n, v: parse_days(n, v, 0, 30)),
    "ahasend-schedule-first-attempt": (("schedule", "first_attempt"), parse_datetime),
    "ahasend-schedule-expires": (("schedule", "expires"), parse_datetime),
}


def directive_fields(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The request fields set by the ``ahasend-*`` headers ``pairs`` (see the module doc).

    Raises ``InvalidHeader`` for an invalid value or a conflicting repetition.
    """
    fields: dict[str, Any] = {}
    tags: list[str] = []
    for raw_name, value in pairs:
        name = raw_name.strip().lower()
        if name == "ahasend-tags":
            tags += parse_tags(value)
        elif name in _DIRECTIVES:
            path, parser = _DIRECTIVES[name]
            _set(fields, path, parser(name, value), name)
    if tags:
        fields["tags"] = list(dict.fromkeys(tags))  # deduplicated, first order kept
    return fields


def _set(fields: dict[str, Any], path: tuple[str, ...], value: Any, name: str) -> None:
    """Store ``value`` at ``path`` in ``fields``; a different earlier value is a conflict."""
    *parents, leaf = path
    target = fields
    for key in parents:
        target = target.setdefault(key, {})
    if leaf in target and target[leaf] != value:
        raise InvalidHeader(f"{name}: given more than once with different values")
    target[leaf] = value
