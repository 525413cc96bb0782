"""Properties of the translation on generated text: what the author wrote is what arrives.

- Subjects and display names of random Unicode, folded by the stdlib's own generator at
  random line widths (encoded words split wherever it likes, mid-word and mid-character
  included), come out identical.
- Text in every charset of the WHATWG Encoding Standard, under any of its labels, sent as a
  message body, comes out identical.
"""

from __future__ import annotations

import base64
import codecs
import email
import email.policy
import re
from email.headerregistry import Address
from email.message import EmailMessage

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from relay.translate.charsets import WHATWG_LABELS, codec_for
from relay.translate.message import translate

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What a person types: no control characters, surrogates or line/paragraph separators; and
# no U+FEFF, which at the start of a run of encoded words is a byte-order mark that the
# relay removes as Thunderbird's decoder does (tests/test_charsets.py).
TYPED = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"), exclude_characters="\ufeff")
WORDS = st.lists(st.text(TYPED, min_size=1, max_size=10), min_size=1, max_size=10).map(" ".join)
WIDTHS = st.integers(min_value=40, max_value=200)  # narrower: the stdlib folder can loop


def clean(text: str) -> str:
    """``text`` as a one-line header can carry it: blanks collapsed, stripped."""
    return " ".join(text.split())


def sent(msg: EmailMessage, width: int, header: str) -> dict[str, object]:
    """The request for ``msg`` serialised by the stdlib at line width ``width``.

    The stdlib's generator sometimes writes a space as the folding white space between two
    encoded words, where RFC 2047 §6.2 says it is not displayed (the stdlib's own parser
    then loses it too): such foldings, whose RFC 2047 reading differs from that of the
    same header written on one line, are no test of the relay and are skipped.
    """
    raw = msg.as_bytes(policy=email.policy.SMTP.clone(max_line_length=width))
    unfolded = msg.as_bytes(policy=email.policy.SMTP.clone(max_line_length=None))
    assume(_rfc2047_reading(raw, header) == _rfc2047_reading(unfolded, header))
    (payload,) = translate(raw, "s@example.com", ["to@example.com"]).payloads
    return payload


def _rfc2047_reading(raw: bytes, header: str) -> str:
    """The header's text as RFC 2047 reads it (read as unstructured: §6.2 for phrases too)."""
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    value = re.sub(r"\r?\n(?=[ \t])", "", str(parsed[header]))  # RFC 5322 unfolding
    if header == "from":
        value = value.rsplit("<", 1)[0]
    return str(email.policy.default.header_factory("subject", value))


@FAST
@given(subject=WORDS, width=WIDTHS)
def test_folded_subjects_arrive_identical(subject: str, width: int) -> None:
    subject = clean(subject)
    assume(subject)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "s@example.com", "to@example.com", subject
    msg.set_content("x")
    assert sent(msg, width, "subject")["subject"] == subject


@FAST
@given(name=WORDS, width=WIDTHS)
def test_folded_display_names_arrive_identical(name: str, width: int) -> None:
    name = clean(name)
    assume(name and name.lower() != "a@example.com")
    msg = EmailMessage()
    msg["From"] = Address(display_name=name, addr_spec="a@example.com")
    msg["To"], msg["Subject"] = "to@example.com", "names"
    msg.set_content("x")
    assert sent(msg, width, "from")["from"] == {"email": "a@example.com", "name": name}


LABELLED = [
    (encoding, label)
    for encoding, labels in WHATWG_LABELS.items()
    for label in labels.split()
    if encoding != "x-user-defined"  # no Python codec encodes it: see tests/test_charsets.py
]


@st.composite
def labelled_text(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(label, text, bytes): text the label's encoding can write, and those bytes.

    The text is what the bytes read back as: some codecs write a character they lack as a
    look-alike (cp932 writes U+00A2 as the bytes of U+FFE0), which is then what was sent.
    """
    _, label = draw(st.sampled_from(LABELLED))
    codec = codec_for(label)
    assert codec is not None, label
    text = draw(st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1))
    try:
        data = text.encode(codec)
    except UnicodeEncodeError:
        data = "".join(c for c in text if _encodable(c, codec)).encode(codec)
    return label, data.decode(codec), data


def _encodable(char: str, codec: str) -> bool:
    try:
        char.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


@FAST
@given(case=labelled_text())
def test_text_in_any_whatwg_charset_arrives_identical(case: tuple[str, str, bytes]) -> None:
    label, text, data = case
    assume(text.strip() and "\r" not in text)
    assume(not data.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)))
    if codec_for(label) not in ("utf-8", "utf-16-le", "utf-16-be") and not data.isascii():
        # The one deliberate exception: bytes that are also valid UTF-8 are read as UTF-8
        # (mislabelled UTF-8 is far more common than legacy text that happens to be valid).
        assume(_not_utf8(data))
    raw = (
        "From: s@example.com\r\nTo: to@example.com\r\nSubject: charset\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset={label}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + base64.encodebytes(data)
    (payload,) = translate(raw, "s@example.com", ["to@example.com"]).payloads
    assert payload["text_content"] == text


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
