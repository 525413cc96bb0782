"""The body a mail client shows, and the files it lists, from a parsed MIME tree.

Bodies
    Text/plain and text/html leaves shown inline are body text: ``Content-Disposition:
    inline`` (RFC 2183: displayed automatically, even with a file name), or no (or an
    unknown) disposition and no file name (a named part without a disposition is a file,
    as most clients show it), decoded with their charset
    (``relay.translate.charsets``), line ends as ``\\n``. Structure decides how they add up:

    - ``multipart/alternative``: one representation: the HTML of the last alternative that
      has HTML, the text of the last one that is text only (else the first with text);
    - ``multipart/related``: the root (the ``start`` part, else the first) is the body; the
      other parts are its inline resources;
    - any other multipart (``mixed``, ``report``, ``digest``...): every inline text part, in
      order, as a client shows them one after the other: iPhone's text, image, text; a list
      footer appended as a second text part. ``text_content`` is the text pieces joined
      (an HTML-only piece by its text, tags stripped); when some piece has HTML,
      ``html_content`` is the HTML pieces joined, a text-only piece shown in it as
      preformatted text;
    - the first ``text/x-amp-html`` is ``amp_content``.

    When the message has no non-empty text or HTML body, ``text_content`` is ``EMPTY_BODY``
    (the API refuses a request with neither). A multipart without a usable boundary is read
    as text/plain, so its content is not lost.

Signed and encrypted mail
    The API rebuilds the MIME, so no signature can survive it. ``multipart/signed`` (S/MIME
    or PGP/MIME): the signed content is delivered as any content is and the signature part
    is left out; ``notices`` says ``signature_removed`` (logged with the message).
    Encrypted content (``multipart/encrypted``, PGP/MIME; ``application/pkcs7-mime`` that is
    not an attachment, S/MIME enveloped or opaque-signed) cannot be shown by anyone but the
    holder of the key once its structure is rebuilt: ``MessageEncrypted`` (a permanent
    refusal naming the kind), never an empty body. An attached ``.p7m`` file
    (``Content-Disposition: attachment``) is just a file.

Attachments: every other leaf, see ``relay.translate.attachments``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, Final

from relay.errors import MessageEncrypted, MessageUnparseable
from relay.translate.attachments import Leaf, attachment, file_name
from relay.translate.charsets import decode_text
from relay.translate.headers import scrub
from relay.translate.rawslice import RawData
from relay.translate.transfer import payload_bytes
from relay.translate.tree import Raw, charset, content_type, disposition, param, subparts

__all__ = [
    "BODY_TYPES",
    "EMPTY_BODY",
    "Content",
    "is_inline",
    "is_signature",
    "keeps_places",
    "read_as_text",
]

EMPTY_BODY: Final = "\n"
"""``text_content`` of a message with no text or HTML body: the API requires one of them."""
BODY_TYPES: Final = frozenset({"text/plain", "text/html", "text/x-amp-html"})
"""The leaf types an inline leaf of which is read as body text."""

SIGNATURE_REMOVED: Final = "signature_removed"
_SIGNATURES: Final = frozenset(
    {"application/pkcs7-signature", "application/x-pkcs7-signature", "application/pgp-signature"}
)
_INVISIBLE: Final = re.compile(r"<(script|style|head)\b.*?</\1\s*>|<!--.*?-->", re.I | re.S)
_LINE_BREAK: Final = re.compile(r"<br\b[^>]*>|</(?:p|div|tr|h\d|li|table)\s*>", re.I)
_TAG: Final = re.compile(r"<[^>]*>")
_PKCS7_MIME: Final = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})


@dataclass(slots=True)
class Piece:
    """One displayed block of body: its text and/or HTML version."""

    text: str | None = None
    html: str | None = None


@dataclass(slots=True)
class Content:
    """The bodies, attachments and notices of a message tree."""

    raw: Raw
    root: Message
    lazy: Mapping[int, RawData] = field(default_factory=dict)
    text: str | None = None
    html: str | None = None
    amp: str | None = None
    leaves: list[Leaf] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, msg: Message, raw: Raw, lazy: Mapping[int, RawData] | None = None) -> Content:
        """Bodies and attachments of ``msg``, parsed from ``raw`` (see the module doc);
        ``lazy``: the leaves whose data stays in ``raw`` (``relay.translate.elision``)."""
        content = cls(raw, msg, lazy or {})
        try:
            body = content._walk(msg, (), related=False)
        except RecursionError:
            raise MessageUnparseable("MIME structure nested too deeply") from None
        content.text, content.html = body.text, body.html
        return content

    @property
    def attachments(self) -> list[dict[str, Any]]:
        """The API ``Attachment`` of every leaf that is not body text."""
        return [attachment(leaf, self.html or "", index) for index, leaf in self.indexed()]

    def indexed(self) -> list[tuple[int, Leaf]]:
        """The leaves with their 1-based position (which names unnamed files)."""
        return list(enumerate(self.leaves, 1))

    def fields(self) -> dict[str, Any]:
        """The request fields: non-empty bodies (or ``EMPTY_BODY``) and ``attachments``."""
        found: dict[str, Any] = {}
        for key, value in (("text_content", self.text), ("html_content", self.html)):
            if value:
                found[key] = value
        if self.amp:
            found["amp_content"] = self.amp
        if not found.get("text_content") and not found.get("html_content"):
            found["text_content"] = EMPTY_BODY
        if attachments := self.attachments:
            found["attachments"] = attachments
        return found

    def _walk(self, part: Message, path: tuple[int, ...], related: bool) -> Piece:
        """The displayed piece of ``part``; its files collected on the way."""
        ctype = content_type(part)
        if not ctype.startswith("multipart/"):
            return self._leaf(part, ctype, path, related)
        if not part.is_multipart():  # no usable boundary: keep the text rather than lose it
            return self._leaf(part, "text/plain", path, related)
        children = subparts(part)
        subtype = ctype.partition("/")[2]
        if subtype == "encrypted":
            raise MessageEncrypted("PGP/MIME encrypted (multipart/encrypted)")
        if subtype == "alternative":
            return _choose([self._walk(c, (*path, i), related) for i, c in enumerate(children)])
        if subtype == "related":
            return self._related(part, children, path)
        if subtype == "signed":
            children = self._unsigned(children)
        pieces = [self._walk(c, (*path, i), related) for i, c in enumerate(children)]
        return _joined(pieces)

    def _related(self, part: Message, children: list[Message], path: tuple[int, ...]) -> Piece:
        """The root of a multipart/related as the body, the other parts as resources."""
        root = _related_root(part, children)
        body = Piece()
        for index, child in enumerate(children):
            if index == root:
                body = self._walk(child, (*path, index), related=True)
            else:
                self._resources(child, (*path, index))
        return body

    def _resources(self, part: Message, path: tuple[int, ...]) -> None:
        """Every leaf of ``part`` as an inline resource of a multipart/related."""
        if content_type(part).startswith("multipart/") and part.is_multipart():
            for index, child in enumerate(subparts(part)):
                self._resources(child, (*path, index))
        else:
            self._add_leaf(part, content_type(part), path, related=True)

    def _unsigned(self, children: list[Message]) -> list[Message]:
        """The children of a multipart/signed without its signature part (noted)."""
        kept = [c for c in children if not is_signature(c)]
        if len(kept) < len(children) and SIGNATURE_REMOVED not in self.notices:
            self.notices.append(SIGNATURE_REMOVED)
        return kept

    def _leaf(self, part: Message, ctype: str, path: tuple[int, ...], related: bool) -> Piece:
        """A leaf: body text when it is inline text, else a file (module doc)."""
        inline = is_inline(part)
        if ctype in _PKCS7_MIME and disposition(part) != "attachment":
            raise MessageEncrypted(f"S/MIME {_smime_kind(part)} ({ctype})")
        if inline and ctype in ("text/plain", "text/html"):  # BODY_TYPES but AMP
            text = _text(part)
            return Piece(text=text) if ctype == "text/plain" else Piece(html=text)
        if inline and ctype == "text/x-amp-html" and self.amp is None:
            self.amp = _text(part)
            return Piece()
        self._add_leaf(part, ctype, path, related)
        return Piece()

    def _add_leaf(self, part: Message, ctype: str, path: tuple[int, ...], related: bool) -> None:
        lazy = self.lazy.get(id(part))
        self.leaves.append(Leaf(part, ctype, path, related, self.raw, self.root, lazy))


def is_signature(part: Message) -> bool:
    """Whether ``part`` is a signature part (S/MIME or PGP), dropped from signed mail."""
    return content_type(part) in _SIGNATURES


def keeps_places(signed: Message) -> bool:
    """Whether dropping the signatures of ``signed`` (a multipart/signed) leaves every other
    child at its place: no signature part comes before a signed one."""
    children = subparts(signed)
    first = next((i for i, child in enumerate(children) if is_signature(child)), len(children))
    return all(is_signature(child) for child in children[first:])


def is_inline(part: Message) -> bool:
    """Whether a leaf is shown in place: ``Content-Disposition: inline``, or neither
    ``attachment`` nor a file name."""
    kind = disposition(part)
    return kind == "inline" or (kind != "attachment" and not file_name(part))


def read_as_text(part: Message, ctype: str) -> bool:
    """Whether ``Content`` may decode the leaf's data as body text: an inline text/plain,
    text/html or AMP leaf. Every other leaf's data is only passed on as a file (base64)."""
    return ctype in BODY_TYPES and is_inline(part)


def _text(part: Message) -> str:
    """The decoded text of a text leaf, line ends as ``\\n``."""
    return scrub(decode_text(payload_bytes(part), charset(part)).replace("\r\n", "\n"))


def _smime_kind(part: Message) -> str:
    """What an application/pkcs7-mime part holds, for the refusal's text."""
    kind = (param(part, "smime-type") or "").lower()
    return "opaque-signed" if kind == "signed-data" else "encrypted"


def _related_root(part: Message, children: list[Message]) -> int:
    """The index of a multipart/related's root: its ``start`` Content-ID, else 0."""
    start = (param(part, "start") or "").strip().strip("<>")
    for index, child in enumerate(children):
        if start and str(child.get("content-id", "")).strip().strip("<>") == start:
            return index
    return 0


def _choose(alternatives: list[Piece]) -> Piece:
    """One representation of a multipart/alternative (module doc)."""
    htmls = [a.html for a in alternatives if a.html is not None]
    texts = [a.text for a in alternatives if a.text is not None and a.html is None]
    fallback = [a.text for a in alternatives if a.text is not None]
    return Piece(
        text=texts[-1] if texts else (fallback[0] if fallback else None),
        html=htmls[-1] if htmls else None,
    )


def _joined(pieces: list[Piece]) -> Piece:
    """Pieces shown one after the other (module doc)."""
    shown = [p for p in pieces if p.text is not None or p.html is not None]
    if len(shown) == 1:
        return shown[0]
    texts = [p.text if p.text is not None else _html_text(p.html) for p in shown]
    text = _join_text(texts) if any(p.text is not None for p in shown) else None
    if all(p.html is None for p in shown):
        return Piece(text=text)
    return Piece(text=text, html="\n".join(p.html or _preformatted(p.text) for p in shown))


def _join_text(texts: list[str]) -> str | None:
    """Text pieces one after the other, each starting on a line of its own."""
    if not texts:
        return None
    joined = texts[0]
    for text in texts[1:]:
        joined += text if not joined or joined.endswith("\n") else "\n" + text
    return joined


def _html_text(markup: str | None) -> str:
    """The text of an HTML-only piece, for the text version of a joined body."""
    text = _INVISIBLE.sub("", markup or "")
    text = _LINE_BREAK.sub("\n", text)
    return html.unescape(_TAG.sub("", text)).strip() + "\n"


def _preformatted(text: str | None) -> str:
    """A text piece inside HTML: escaped, its line breaks and spaces kept."""
    return f'<pre style="white-space: pre-wrap">{html.escape(text or "")}</pre>'
