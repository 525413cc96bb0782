"""Content-Transfer-Encodings undone the forgiving way mail clients undo them.

``payload_bytes(part)`` is the decoded content of a leaf part. Base64 is decoded leniently
(``b64decode_lenient``): characters outside the alphabet are skipped, base64 runs that were
concatenated with their padding (``SGk=SGk=``) are each decoded, and a lone character
left over at the end (4n+1 characters, which no encoder writes) is dropped. The stdlib
gives up on those and hands back the undecoded text. Quoted-printable and uuencode are the
stdlib's (already lenient); anything else is the payload as it came.
"""

from __future__ import annotations

import binascii
import re
from email.message import Message
from typing import Final

from relay.translate.tree import PARSE_ERRORS, Raw, raw_header, raw_payload

__all__ = ["b64decode_lenient", "payload_bytes", "transfer_encoding"]

_NOT_BASE64: Final = re.compile(rb"[^A-Za-z0-9+/=]+")
_BASE64_RUN: Final = re.compile(rb"[A-Za-z0-9+/]+")


def transfer_encoding(part: Message) -> str:
    """The part's Content-Transfer-Encoding, lower case ("" when absent)."""
    return raw_header(part, "content-transfer-encoding").lower()


def payload_bytes(part: Message) -> bytes:
    """The decoded content of a leaf part; its raw text when decoding fails."""
    raw = raw_payload(part)
    if isinstance(raw, str) and transfer_encoding(part) == "base64":
        return b64decode_lenient(raw.encode("ascii", "ignore"))
    try:
        data = part.get_payload(decode=True)
    except PARSE_ERRORS:
        data = None
    if isinstance(data, bytes):
        return data
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def b64decode_lenient(data: Raw) -> bytes:
    """``data`` base64-decoded as a mail client would (see the module doc)."""
    clean = _NOT_BASE64.sub(b"", data)
    body = clean.rstrip(b"=")
    if b"=" not in body and len(body) % 4 != 1:
        return binascii.a2b_base64(body + b"=" * (-len(body) % 4))
    return b"".join(_decode_run(run) for run in _BASE64_RUN.findall(clean))


def _decode_run(run: bytes) -> bytes:
    """One run of base64 characters, padded; a lone trailing character dropped."""
    if len(run) % 4 == 1:
        run = run[:-1]
    return binascii.a2b_base64(run + b"=" * (-len(run) % 4))
