"""Support for the differential test: the relay's translation beside an independent parser's.

The reference is postal-mime (npm), a MIME parser written independently of Python's
``email`` package, run by node ONCE over every file (``tests/mimeref/parse.mjs``; .ci/run
installs it into the gitignored ``tests/mimeref/node_modules``). Both sides are reduced to
the same summary, after these normalisations:

- the message is given to both with CRLF line ends, as SMTP delivers it (``as_crlf``);
- subject and display names: stripped (the API gets one line);
- text and HTML bodies: CRLF as LF, runs of whitespace as one space, stripped (HTML
  compared by its text: tags removed, entities decoded, since the two join a text part
  into HTML with different markup); the relay's placeholder for "no body"
  (``EMPTY_BODY``) counts as none. A body postal-mime
  derives from the other type (HTML made from text, text made from HTML) is not compared
  when the relay sends none of that type and the message has no part of it;
- addresses: lower-case e-mail, display name; To / Cc only for addresses the envelope
  holds (the test sends to every To / Cc address), so Bcc splitting plays no part.
  Without a From the relay sends as the envelope sender, without To / Cc to the envelope
  recipients: the reference's missing value (or one without an address) counts as those;
  an address in To twice counts once, source routes are dropped;
- attachments: a multiset of (file name without a path, as the relay sends it,
  type/subtype, Content-ID without brackets, sha256 of the decoded bytes with CRLF as LF
  and without trailing line breaks: postal-mime turns CRLF into LF in parts that are not
  base64 and keeps the line break that RFC 2046 gives to the boundary). A Content-ID
  counts only where the relay's rule sends one (the part is inline, in a
  multipart/related or referenced by the HTML). postal-mime re-encodes calendars as UTF-8
  with one trailing LF, so calendars are hashed that way on both sides. postal-mime's
  unnamed files have no name: the relay's generated names (``attachment-2.pdf``) are not
  compared. The signature part of a multipart/signed message is left out of the
  reference's files: the relay removes it by design (``relay.translate.parts``);
- attached messages are files on both sides (postal-mime's ``forceRfc822Attachments``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from relay.translate.charsets import decode_text
from relay.translate.message import EMPTY_BODY
from tests.paths import REPO

MIMEREF = REPO / "tests" / "mimeref"
ALLOW_LIST = REPO / "tests" / "differential_allowlist.txt"
SENDER = "s@example.com"
SIGNATURES = {"application/pgp-signature", "application/pkcs7-signature"}
_SPACE = re.compile(r"\s+")
_TAG = re.compile(r"<[^>]*>")
_GENERATED = re.compile(r"attachment-\d+\.\w+|invite\.ics")


def reference(paths: list[Path]) -> dict[str, Any]:
    """postal-mime's summary of every file in ``paths`` (one node process)."""
    node = shutil.which("node")
    assert node, "node missing: .ci/run installs nodejs"
    assert (MIMEREF / "node_modules" / "postal-mime").is_dir(), (
        "postal-mime missing: .ci/run installs it into tests/mimeref/node_modules"
    )
    done = subprocess.run(
        [node, str(MIMEREF / "parse.mjs")], input=json.dumps([str(p) for p in paths]),
        capture_output=True, text=True, check=True, timeout=300, cwd=MIMEREF,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def as_crlf(raw: bytes) -> bytes:
    """``raw`` with every line break (LF, CRLF) written as CRLF."""
    return re.sub(rb"\r?\n", b"\r\n", raw)


def recipients(ref: dict[str, Any]) -> list[str]:
    """The envelope for a message: every To / Cc address the reference found, else one.

    A source route (``@relay:mary@example.net``, which postal-mime keeps) is left out.
    """
    found = [a["email"].rsplit(":", 1)[-1] for a in ref.get("to", []) + ref.get("cc", [])]
    return list(dict.fromkeys(a for a in found if _usable(a))) or ["rcpt@example.com"]


def _usable(addr: str) -> bool:
    local, at, domain = addr.rpartition("@")
    return bool(at and local and domain) and " " not in domain and "," not in addr


def body(text: str | None) -> str | None:
    """A body for comparison (module doc); None when there is none."""
    if text is None or text == EMPTY_BODY:
        return None
    return _SPACE.sub(" ", text.replace("\r\n", "\n")).strip() or None


def html_text(markup: str | None) -> str | None:
    """An HTML body for comparison: its text (tags removed, entities decoded), as ``body``."""
    if markup is None:
        return None
    return body(html.unescape(_TAG.sub(" ", markup)))


def _box(address: dict[str, Any] | None) -> tuple[str, str] | None:
    if not address or not address.get("email"):
        return None
    return (address.get("name") or "").strip(), address["email"].rsplit(":", 1)[-1].lower()


def _boxes(addresses: list[dict[str, Any]], held: set[str]) -> list[tuple[str, str]]:
    """The mailboxes the envelope holds, each address once (the relay sends it once)."""
    found: dict[str, tuple[str, str]] = {}
    for box in filter(None, map(_box, addresses)):
        if box[1] in held:
            found.setdefault(box[1], box)
    return sorted(found.values())


def ours(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """The relay's summary of one message (the requests it would send)."""
    first = payloads[0]
    return {
        "subject": first["subject"].strip(),
        "from": _box(first["from"]),
        "to": sorted(b for p in payloads for a in p.get("to", []) if (b := _box(a))),
        "cc": sorted(b for p in payloads for a in p.get("cc", []) if (b := _box(a))),
        "text": body(first.get("text_content")),
        "html": html_text(first.get("html_content")),
        "attachments": sorted(_our_file(a) for a in first.get("attachments", [])),
    }


def _our_file(attachment: dict[str, Any]) -> tuple[str, str, str, str]:
    data = base64.b64decode(attachment["data"])
    ctype, _, params = attachment["content_type"].partition(";")
    if ctype == "text/calendar":
        charset = re.search(r'charset="?([^";]+)', params)
        data = _calendar(decode_text(data, charset.group(1) if charset else None))
    name = attachment["file_name"]
    return (
        "" if _GENERATED.fullmatch(name) else name,
        ctype,
        attachment.get("content_id", "").strip("<>"),
        hashlib.sha256(data.replace(b"\r\n", b"\n").rstrip(b"\r\n")).hexdigest(),
    )


def _calendar(text: str) -> bytes:
    """A calendar as postal-mime re-encodes it: UTF-8, LF line ends, one trailing LF."""
    return (re.sub(r"\r?\n", "\n", text).rstrip("\n") + "\n").encode()


def theirs(ref: dict[str, Any], envelope: list[str], raw: bytes) -> dict[str, Any]:
    """postal-mime's summary reduced like ``ours`` (module doc)."""
    held = {r.lower() for r in envelope}
    to = _boxes(ref.get("to", []), held)
    cc = [b for b in _boxes(ref.get("cc", []), held) if b not in to]
    return {
        "subject": (ref.get("subject") or "").strip(),
        "from": _box(ref.get("from")) or ("", SENDER),
        "to": to or ([] if cc else sorted(("", r.lower()) for r in envelope)),
        "cc": cc,
        "text": body(ref.get("text")),
        "html": html_text(ref.get("html")),
        "attachments": sorted(
            _their_file(a, ref.get("html") or "")
            for a in ref.get("attachments", [])
            if not (a["mimeType"] in SIGNATURES and b"multipart/signed" in raw.lower())
        ),
        "_has_html_part": b"text/html" in raw.lower(),
    }


def _their_file(attachment: dict[str, Any], html: str) -> tuple[str, str, str, str]:
    cid = (attachment.get("contentId") or "").strip("<>")
    shown = attachment.get("disposition") != "attachment" or attachment.get("related")
    return (
        re.split(r"[\\/]", attachment.get("filename") or "")[-1].strip(),
        attachment["mimeType"],
        cid if shown or f"cid:{cid}".lower() in html.lower() else "",
        attachment["sha256"],
    )


def differences(mine: dict[str, Any], ref: dict[str, Any]) -> dict[str, str]:
    """field -> "ours != theirs" for every field that differs after normalisation."""
    found = {}
    for field in ("subject", "from", "to", "cc", "text", "html", "attachments"):
        a, b = mine[field], ref[field]
        if field == "text" and a is None and mine["html"] is not None:
            continue  # postal-mime made text out of the HTML
        if field == "html" and a is None and not ref["_has_html_part"]:
            continue  # postal-mime made HTML out of the text
        if field == "attachments":
            a, b = _unnamed_alike(a, b)
        if a != b:
            found[field] = f"{_short(a)} != {_short(b)}"
    return found


Files = list[tuple[str, ...]]


def _unnamed_alike(mine: Files, ref: Files) -> tuple[Files, Files]:
    """Both lists with the name blanked where either side has none (generated names)."""
    unnamed = {item[1:] for item in mine + ref if not item[0]}

    def blank(item: tuple[str, ...]) -> tuple[str, ...]:
        return ("", *item[1:]) if item[1:] in unnamed else item

    return sorted(map(blank, mine)), sorted(map(blank, ref))


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) < 300 else text[:297] + "..."


def allow_list() -> dict[tuple[str, str], str]:
    """(corpus file, field) -> the reviewed reason the difference is accepted.

    The file defines reasons once (``reason KEY: one line``) and lists differences as
    ``path field KEY``; every key used must be defined.
    """
    reasons: dict[str, str] = {}
    allowed: dict[tuple[str, str], str] = {}
    for line in ALLOW_LIST.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("reason "):
            key, _, text = line.removeprefix("reason ").partition(":")
            reasons[key.strip()] = text.strip()
            continue
        path, field, key = line.split()
        assert key in reasons, f"allow-list: {line!r} uses an undefined reason"
        allowed[(path, field)] = reasons[key]
    return allowed
