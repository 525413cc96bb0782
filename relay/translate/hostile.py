"""Hostile values taken out of a finished API payload, before it reaches AhaSend.

``harden`` is applied by ``relay.translate.message.translate`` to every payload it builds.
It changes only what a mail client would show and a recipient could be misled by:

===============================  ===========================================================
value                            rule
===============================  ===========================================================
subject, display names (from,    U+2028 LINE SEPARATOR, U+2029 PARAGRAPH SEPARATOR and U+0085
reply_to, to, cc, bcc),          NEXT LINE (and blanks around) become one space, as a line break;
forwarded header values,         bidi embedding/override/isolate controls (U+202A-U+202E,
attachment names, tags           U+2066-U+2069: the "Trojan Source" set) are removed. The
                                 marks U+200E/U+200F/U+061C stay: they cannot reorder text
                                 and right-to-left names need them.
attachment ``file_name``         a name of dots only (``..``, ``.``, also what ``x/..`` leaves)
                                 becomes ``attachment``; a name over ``MAX_NAME_BYTES`` (255,
                                 UTF-8) is cut to fit with its extension kept.
``tags`` (``ahasend-tags``)      at most ``MAX_TAGS`` (50) of at most ``MAX_TAG_LENGTH`` (100)
                                 characters. AhaSend publishes no limit; beyond this one the
                                 message is refused: ``InvalidHeader`` (``554 5.6.0`` naming
                                 the header).
===============================  ===========================================================

Addresses and bodies are left alone: an address is the envelope's business, and a body may
legitimately hold any character.
"""

from __future__ import annotations

import re
from typing import Any, Final

from relay.errors import InvalidHeader

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "checked_tags",
    "clean_text",
    "harden",
    "safe_name",
]

MAX_TAGS: Final = 50
MAX_TAG_LENGTH: Final = 100
MAX_NAME_BYTES: Final = 255
SAFE_NAME: Final = "attachment"
_MAX_EXTENSION: Final = 16  # characters after the last dot kept as the extension

_LINE_BREAKERS: Final = re.compile("[ \t]*[\u2028\u2029\u0085][\u2028\u2029\u0085 \t]*")
_BIDI_CONTROLS: Final = re.compile("[\u202a-\u202e\u2066-\u2069]")
_MAILBOX_LISTS: Final = ("to", "cc", "bcc")


def clean_text(text: str) -> str:
    """``text`` with line/paragraph separators as one space and bidi controls removed."""
    return _BIDI_CONTROLS.sub("", _LINE_BREAKERS.sub(" ", text)).strip()


def safe_name(name: str) -> str:
    """An attachment name safe to show and save: cleaned, never dots only, <= 255 bytes."""
    name = clean_text(name)
    if not name.strip(". "):
        return SAFE_NAME
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension) > _MAX_EXTENSION:
        stem, extension = name, ""
    suffix = f".{extension}" if extension else ""
    return _cut(stem, MAX_NAME_BYTES - len(suffix.encode("utf-8"))) + suffix


def _cut(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 form fits in ``limit`` bytes."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def harden(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with the rules of the module docstring applied (a new dict).

    Raises ``InvalidHeader`` for tags beyond the documented limit.
    """
    result = dict(payload)
    if isinstance(result.get("subject"), str):
        result["subject"] = clean_text(result["subject"])
    for key in ("from", "reply_to"):
        if isinstance(result.get(key), dict):
            result[key] = _mailbox(result[key])
    for key in _MAILBOX_LISTS:
        if isinstance(result.get(key), list):
            result[key] = [_mailbox(m) if isinstance(m, dict) else m for m in result[key]]
    if isinstance(result.get("headers"), dict):
        result["headers"] = {k: clean_text(str(v)) for k, v in result["headers"].items()}
    if isinstance(result.get("attachments"), list):
        result["attachments"] = [_attachment(a) for a in result["attachments"]]
    if isinstance(result.get("tags"), list):
        result["tags"] = checked_tags([clean_text(str(t)) for t in result["tags"]])
    return result


def _mailbox(mailbox: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(mailbox.get("name"), str):
        return mailbox
    name = clean_text(mailbox["name"])
    rest = {k: v for k, v in mailbox.items() if k != "name"}
    return {**rest, "name": name} if name else rest


def _attachment(attachment: Any) -> Any:
    if not isinstance(attachment, dict) or not isinstance(attachment.get("file_name"), str):
        return attachment
    return {**attachment, "file_name": safe_name(attachment["file_name"])}


def checked_tags(tags: list[str]) -> list[str]:
    """``tags`` without empties; ``InvalidHeader`` naming ``ahasend-tags`` past the limits."""
    tags = [tag for tag in tags if tag]
    if len(tags) > MAX_TAGS:
        raise InvalidHeader(f"ahasend-tags: {len(tags)} tags, at most {MAX_TAGS} allowed")
    if too_long := [tag for tag in tags if len(tag) > MAX_TAG_LENGTH]:
        raise InvalidHeader(
            f"ahasend-tags: a tag of {len(too_long[0])} characters, "
            f"at most {MAX_TAG_LENGTH} allowed"
        )
    return tags
