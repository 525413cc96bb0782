"""relay.translate.message.translate on small hand-written messages (tests/fixtures/eml/)."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from relay.errors import MessageUnparseable
from relay.translate.message import EMPTY_BODY, Translated, translate
from tests.spec import assert_valid_request

FIXTURES = Path(__file__).parent / "fixtures" / "eml"
SENDER = "app@example.com"


def load(name: str) -> bytes:
    """Fixture ``name`` with CRLF line ends, as an SMTP client sends it."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", (FIXTURES / name).read_bytes())


def run(name: str, rcpts: Sequence[str] = ("bob@example.net",), sender: str = SENDER) -> Translated:
    """Translate fixture ``name``; every payload must be valid and serialisable."""
    translated = translate(load(name), sender, rcpts)
    for payload in translated.payloads:
        assert_valid_request(payload)
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return translated


def one(name: str, rcpts: Sequence[str] = ("bob@example.net",), sender: str = SENDER) -> Any:
    """The single payload of fixture ``name``."""
    translated = run(name, rcpts, sender)
    assert len(translated.payloads) == 1
    return translated.payloads[0]


def attachment_bytes(attachment: dict[str, Any]) -> bytes:
    assert attachment["base64"] is True
    assert "\n" not in attachment["data"]
    return base64.b64decode(attachment["data"], validate=True)


# -- basics ------------------------------------------------------------------------------


def test_plain_text_message() -> None:
    translated = run("plain.eml")
    assert translated.message_id == "<plain-1@example.com>"
    assert translated.attachment_count == 0
    assert translated.payloads == [
        {
            "from": {"email": "alice@example.com", "name": "Alice Example"},
            "to": [{"email": "bob@example.net", "name": "Bob"}],
            "subject": "Quarterly report",
            "text_content": "Hello Bob,\n\nthe report is attached.\n",
        }
    ]


def test_message_id_is_none_when_absent() -> None:
    assert run("alternative.eml").message_id is None


def test_missing_subject_is_empty_string() -> None:
    raw = b"From: a@example.com\r\nTo: b@example.net\r\n\r\nhi\r\n"
    assert translate(raw, SENDER, ["b@example.net"]).payloads[0]["subject"] == ""


def test_text_and_html_alternative() -> None:
    payload = one("alternative.eml")
    assert payload["text_content"] == "Café plain"
    assert payload["html_content"] == "<p>Café <b>html</b></p>"
    assert "attachments" not in payload


def test_amp_body() -> None:
    payload = one("amp.eml")
    assert payload["text_content"] == "plain version"
    assert payload["html_content"] == "<p>html version</p>"
    assert payload["amp_content"] == (
        "<!doctype html><html amp4email><body>amp version</body></html>"
    )


def test_encoded_words_in_subject_names_and_file_name() -> None:
    payload = one("encoded_words.eml", rcpts=["andre@example.net"])
    assert payload["subject"] == "Re: Prüfung bestanden ✓"
    assert payload["from"] == {"email": "juergen@example.com", "name": "Jürgen Müller"}
    assert payload["to"] == [{"email": "andre@example.net", "name": "André"}]
    assert payload["attachments"][0]["file_name"] == "Prüfung.pdf"


def test_latin1_body() -> None:
    assert one("latin1.eml")["text_content"] == "Grüße aus Köln, 10 £.\n"


def test_unknown_or_wrong_charset_is_decoded_best_effort() -> None:
    payload = one("unknown_charset.eml")
    assert payload["text_content"] == "café in utf-8"
    assert payload["html_content"] == "<p>café in latin-1 despite utf-8</p>"


def test_raw_8bit_headers_never_leak_surrogates() -> None:
    payload = one("eightbit_header.eml")
    assert payload["from"] == {"email": "rene@example.com", "name": "René"}
    assert payload["subject"] == "Café ÿ"
    assert payload["headers"] == {"X-Note": "café"}


def test_utf8_addresses_are_kept_as_they_are() -> None:
    payload = one("smtputf8.eml", rcpts=["zoë@bücher.example"])
    assert payload["from"] == {"email": "jöhn@exämple.com", "name": "Jöhn Dœ"}
    assert payload["to"] == [{"email": "zoë@bücher.example", "name": "Zoë"}]
    assert payload["subject"] == "Grüße 👋"


def test_multipart_without_boundary_keeps_its_text() -> None:
    assert one("no_boundary.eml")["text_content"] == "This text must not be lost.\n"


@pytest.mark.parametrize("name", ["empty_body.eml", "attachment_only.eml"])
def test_message_without_body_gets_the_placeholder_text(name: str) -> None:
    payload = one(name)
    assert payload["text_content"] == EMPTY_BODY == "\n"
    assert "html_content" not in payload


# -- attachments -------------------------------------------------------------------------


def test_inline_images_inside_related_inside_mixed() -> None:
    payload = one("related_inline.eml")
    assert payload["text_content"] == "See the logo."
    assert payload["html_content"].startswith('<p><img src="cid:logo@example.com">')
    logo, gif, pdf = payload["attachments"]
    assert logo == {
        "base64": True,
        "data": "iVBORw0KGgo=",
        "content_type": "image/png",
        "file_name": "logo.png",
        "content_id": "<logo@example.com>",
        "content_disposition": "inline",
    }
    assert gif["content_id"] == "<bare-id>"  # brackets added
    assert gif["file_name"] == "attachment-2.gif"
    assert pdf == {
        "base64": True,
        "data": "JVBERi0xLjQK",
        "content_type": "application/pdf",
        "file_name": "report.pdf",
        "content_disposition": "attachment",
    }  # a Content-ID on a real attachment is dropped so it stays downloadable


def test_rfc2231_file_names() -> None:
    pdf, csv = one("rfc2231_filename.eml")["attachments"]
    assert pdf["file_name"] == "€ rates 2026.pdf"
    assert csv["file_name"] == "résumé-part-two.csv"
    assert csv["content_type"] == "text/csv"
    assert attachment_bytes(csv) == b"a,b\r\n1,2"


def test_attachments_without_file_name_get_one_from_their_type() -> None:
    translated = run("attachment_only.eml")
    pdf, unknown = translated.payloads[0]["attachments"]
    assert translated.attachment_count == 2
    assert (pdf["file_name"], pdf["content_disposition"]) == ("attachment-1.pdf", "attachment")
    assert attachment_bytes(pdf) == b"%PDF-1.4\n"
    assert unknown["file_name"] == "attachment-2.bin"
    assert "content_disposition" not in unknown


def test_inline_text_parts_are_shown_in_order_and_named_parts_are_attachments() -> None:
    payload = one("extra_text_parts.eml")
    assert payload["text_content"] == (
        "First part is the body.\nFooter, inline text without a name.\nfirst html is still a body\n"
    )
    assert payload["html_content"] == (
        '<pre style="white-space: pre-wrap">First part is the body.</pre>\n'
        '<pre style="white-space: pre-wrap">Footer, inline text without a name.</pre>\n'
        "<p>first html is still a body</p>"
    )
    notes, photo = payload["attachments"]
    assert (notes["file_name"], attachment_bytes(notes)) == (
        "notes.txt",
        b"Named text is an attachment.",
    )
    assert photo["file_name"] == "photo of me.jpg"  # unquoted name with spaces


def test_attached_messages_become_eml_files() -> None:
    first, second = one("forwarded.eml")["attachments"]
    assert first["content_type"] == "message/rfc822"
    assert first["file_name"] == "Lunch_ Friday _ 12_30_.eml"
    inner = email.message_from_bytes(attachment_bytes(first), policy=email.policy.default)
    assert inner["Message-ID"] == "<inner@example.org>"
    assert inner.get_content().strip() == "Shall we?"
    assert b"\r\n" in attachment_bytes(first)
    assert (second["file_name"], second["content_disposition"]) == ("original.eml", "attachment")


def test_valid_base64_is_passed_on_untouched() -> None:
    # "QR==" is valid but not canonical: re-encoding would give "QQ==".
    (attachment,) = one("base64_reuse.eml")["attachments"]
    assert attachment["data"] == "QUJDREVGQR=="
    assert attachment["file_name"] == "a.bin"


def test_malformed_base64_is_decoded_leniently_and_re_encoded() -> None:
    (attachment,) = one("bad_base64.eml")["attachments"]
    assert attachment_bytes(attachment).startswith(b"ABC")
    assert attachment["file_name"] == "broken.bin"


# -- addresses ---------------------------------------------------------------------------


def test_to_cc_bcc_follow_the_envelope() -> None:
    payload = one(
        "to_cc_bcc.eml",
        rcpts=["BOB@example.net", "carol@example.net", "dave@example.net", "eve@example.net"],
    )
    assert payload["to"] == [{"email": "BOB@example.net", "name": "Bob"}]
    assert payload["cc"] == [{"email": "carol@example.net", "name": "Carol"}]
    assert payload["bcc"] == [{"email": "dave@example.net"}, {"email": "eve@example.net"}]
    assert "headers" not in payload  # the Bcc header is never forwarded


def test_duplicate_envelope_recipients_are_sent_once() -> None:
    payload = one("plain.eml", rcpts=["bob@example.net", "Bob@Example.net", "x@example.org"])
    assert payload["to"] == [{"email": "bob@example.net", "name": "Bob"}]
    assert payload["bcc"] == [{"email": "x@example.org"}]


def test_cc_is_promoted_when_no_recipient_is_in_to() -> None:
    payload = one("cc_promotion.eml", rcpts=["carol@example.net", "bob@example.net", "z@x.org"])
    assert payload["to"] == [
        {"email": "bob@example.net", "name": "Bob"},
        {"email": "carol@example.net", "name": "Carol"},
    ]
    assert "cc" not in payload
    assert payload["bcc"] == [{"email": "z@x.org"}]


def test_group_members_count_as_recipients() -> None:
    payload = one("group.eml", rcpts=["erin@example.net", "carol@example.net", "bob@example.net"])
    assert payload["to"] == [
        {"email": "bob@example.net", "name": "Bob"},
        {"email": "carol@example.net"},
        {"email": "erin@example.net"},
    ]
    assert "cc" not in payload
    assert "bcc" not in payload


def test_undisclosed_recipients_single() -> None:
    translated = run("undisclosed.eml", rcpts=["one@example.net"])
    assert [p["to"] for p in translated.payloads] == [[{"email": "one@example.net"}]]


def test_undisclosed_recipients_get_one_payload_each() -> None:
    rcpts = ["one@example.net", "two@example.net", "three@example.org"]
    translated = run("undisclosed.eml", rcpts=rcpts)
    assert [p["to"] for p in translated.payloads] == [[{"email": r}] for r in rcpts]
    for payload in translated.payloads:
        assert "cc" not in payload
        assert "bcc" not in payload
        assert payload["subject"] == "Hidden recipients"


def test_alias_in_to_with_expanded_envelope_splits_too() -> None:
    raw = b"From: a@example.com\r\nTo: all@lists.example.com\r\nSubject: s\r\n\r\nhi\r\n"
    translated = translate(raw, SENDER, ["m1@example.net", "m2@example.net"])
    assert [p["to"] for p in translated.payloads] == [
        [{"email": "m1@example.net"}],
        [{"email": "m2@example.net"}],
    ]


def test_several_from_mailboxes_use_the_sender_header() -> None:
    payload = one("multi_from.eml", rcpts=["carol@example.net"])
    assert payload["from"] == {"email": "secretary@example.com", "name": "Secretary"}


def test_several_from_mailboxes_without_sender_use_the_first_usable() -> None:
    payload = one("multi_from_no_sender.eml", rcpts=["carol@example.net"])
    assert payload["from"] == {"email": "alice@example.com", "name": "Alice"}


def test_missing_from_uses_the_envelope_sender() -> None:
    payload = one("missing_from.eml", rcpts=["carol@example.net"], sender="<env@example.com>")
    assert payload["from"] == {"email": "env@example.com"}


@pytest.mark.parametrize("sender", ["", "<>", "postmaster"])
def test_no_usable_sender_is_unparseable(sender: str) -> None:
    with pytest.raises(MessageUnparseable, match="sender"):
        translate(load("missing_from.eml"), sender, ["carol@example.net"])


@pytest.mark.parametrize("rcpts", [[], ["postmaster"], ["bob@example.net", "@x"]])
def test_unusable_recipients_are_unparseable(rcpts: list[str]) -> None:
    with pytest.raises(MessageUnparseable):
        translate(load("plain.eml"), SENDER, rcpts)


def test_reply_to_is_its_first_mailbox() -> None:
    payload = one("headers.eml")
    assert payload["reply_to"] == {"email": "support@example.com", "name": "Support Team"}


# -- headers -----------------------------------------------------------------------------


def test_forwarded_and_dropped_headers() -> None:
    payload = one("headers.eml")
    assert payload["headers"] == {
        "In-Reply-To": "<parent@example.com>",
        "References": "<root@example.com> <parent@example.com>",
        "List-Unsubscribe": "<mailto:unsub@example.com>, <https://example.com/unsub?u=1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "List-Id": "Example news <news.example.com>",
        "Auto-Submitted": "auto-generated",
        "Precedence": "bulk",
        "X-Mailer": "ExampleMailer 2.0",
        "X-Campaign": "Héllo",
        "Keywords": "alpha, beta",
        "Organization": "Example Corp",
        "Importance": "high",
    }
    assert payload["tags"] == ["t1"]


def test_header_values_are_single_lines() -> None:
    for value in one("headers.eml")["headers"].values():
        assert not re.search(r"[\x00-\x1f]", value)


def test_headers_are_omitted_when_none_is_forwarded() -> None:
    assert "headers" not in one("plain.eml")


# -- hostile input -----------------------------------------------------------------------


def test_deeply_nested_comments_in_address_headers_fall_back() -> None:
    raw = b"From: " + b"(" * 5000 + b"a@example.com\r\nTo: b@example.net\r\n\r\nx\r\n"
    (payload,) = translate(raw, "env@example.com", ["b@example.net"]).payloads
    assert payload["from"] == {"email": "env@example.com"}


@pytest.mark.parametrize("charset", ["punycode", "idna", "unicode_escape", "base64", "a\x00b"])
def test_charsets_that_are_no_mail_charsets_fall_back_to_utf8(charset: str) -> None:
    raw = (
        b'From: a@example.com\r\nTo: b@example.net\r\nContent-Type: text/plain; charset="'
        + charset.encode()
        + b'"\r\n\r\n\\ud800 caf\xc3\xa9'
    )
    (payload,) = translate(raw, SENDER, ["b@example.net"]).payloads
    assert payload["text_content"] == "\\ud800 café"


def test_a_punycode_bomb_is_not_decoded_with_punycode() -> None:
    bomb = b"abc-" + b"a\xc3\xa9" * 200_000
    raw = (
        b"From: a@example.com\r\nTo: b@example.net\r\nSubject: =?punycode?q?abc-aaa?=\r\n"
        b"Content-Type: text/plain; charset=punycode\r\n\r\n" + bomb
    )
    (payload,) = translate(raw, SENDER, ["b@example.net"]).payloads
    assert payload["subject"] == "=?punycode?q?abc-aaa?="
    assert payload["text_content"].startswith("abc-aé")


def test_nesting_deeper_than_the_parser_can_go_is_unparseable() -> None:
    raw = b"From: a@example.com\r\nTo: b@example.net\r\n"
    raw += b"Content-Type: message/rfc822\r\n\r\n" * 3000 + b"Subject: deep\r\n\r\nx\r\n"
    with pytest.raises(MessageUnparseable):
        translate(raw, SENDER, ["b@example.net"])


def test_control_characters_in_headers_become_spaces() -> None:
    raw = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: a\x00b\x1bc\r\n\r\nx"
    (payload,) = translate(raw, SENDER, ["b@example.net"]).payloads
    assert payload["subject"] == "a b c"
