"""Mail fidelity through the real SMTP path: one test per numbered item of the issue.

Each message is sent with smtplib to a ``python -m relay`` process forwarding to the
stand-in AhaSend API (which validates every request against the spec); the test reads the
request the stand-in received. Corpus files are read in place from ../shared/corpus/.
"""

from __future__ import annotations

import base64
import re
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from tests.interop import Served, serving_process
from tests.paths import CORPUS

pytestmark = pytest.mark.e2e
RCPT = "alice@example.net"


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serving_process() as served:
        yield served


def crlf(raw: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", raw)


def deliver(served: Served, raw: bytes, subject: str, rcpts: list[str] | None = None) -> Any:
    """Send ``raw``; assert 250; the one request the stand-in got with ``subject``."""
    with smtplib.SMTP("127.0.0.1", served.port, timeout=10) as smtp:
        assert smtp.sendmail("app@example.com", rcpts or [RCPT], crlf(raw)) == {}
    [payload] = served.payloads(subject)
    return payload


def message(subject: str, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "App <app@example.com>"
    msg["To"] = RCPT
    msg["Subject"] = subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    return msg


def data(attachment: dict[str, Any]) -> bytes:
    return base64.b64decode(attachment["data"], validate=True)


def raw_message(head: str, body: bytes) -> bytes:
    """A message with ``head`` (CRLF-terminated header lines) and ``body``, ended by CRLF."""
    return f"From: app@example.com\r\nTo: {RCPT}\r\n{head}\r\n".encode() + body + b"\r\n"


# 1. No spaces inserted into folded subjects and names -------------------------------------

FOLDED = (
    "Ваш заказ номер 12345 поживаешь как дела у тебя сегодня утром 我把镜头拉近些我把镜头拉近些"  # noqa: RUF001
)


def test_1_a_subject_python_folded_into_encoded_words_arrives_whole(served: Served) -> None:
    msg = message(FOLDED)
    msg.replace_header(
        "From", "Иван Иванович Петров-Водкин из города Санкт-Петербург <i@example.com>"
    )
    msg.set_content("body")
    assert b"?=\n =?utf-8?" in msg.as_bytes()  # the generator really folded it
    payload = deliver(served, msg.as_bytes(), FOLDED)
    assert payload["from"]["name"] == "Иван Иванович Петров-Водкин из города Санкт-Петербург"


def test_1_a_yandex_subject_and_a_split_utf8_character(served: Served) -> None:
    raw = crlf((CORPUS / "imap_tools" / "base.eml").read_bytes())
    payload = deliver(served, raw, "Соберите всю почту в этот ящик")
    assert payload["from"] == {"email": "hello@yandex.ru", "name": "Яндекс"}
    # "拉" (e6 8b 89) split across two encoded words, with raw 8-bit bytes in the second
    head = "Subject: =?utf-8?b?5ouJ6L+R5Lqb5oiR5oqK6ZWc5aS05os=?=\r\n =?utf-8?q?=89?=\r\n"
    deliver(served, raw_message(head, b"x"), "拉近些我把镜头拉")


# 2. One bad byte garbles nothing else -----------------------------------------------------


def test_2_one_bad_byte_is_replaced_alone(served: Served) -> None:
    html = "<p>Здравствуйте, это письмо на русском языке</p>".encode()
    body = html.replace(b",", b"\xff,")
    head = "Subject: =?utf-8?q?bad_byte?=\r\nContent-Type: text/html; charset=utf-8\r\n"
    payload = deliver(served, raw_message(head, body), "bad byte")
    assert payload["html_content"] == body.decode("utf-8", "replace") + "\n"
    assert payload["html_content"].count("\ufffd") == 1


def test_2_one_bad_byte_in_a_raw_header_is_replaced_alone(served: Served) -> None:
    subject = "Счёт на оплату".encode()
    head = b"Subject: " + subject[:6] + b"\xff" + subject[6:] + b"\r\n"
    raw = f"From: app@example.com\r\nTo: {RCPT}\r\n".encode() + head + b"\r\nx\r\n"
    deliver(served, raw, subject[:6].decode() + "\ufffd" + subject[6:].decode())


# 3. Charset labels as mail clients read them ----------------------------------------------


@pytest.mark.parametrize(
    ("label", "text", "body"),
    [
        ("gb2312", "镕基 GBK only", "镕基 GBK only".encode("gb18030")),
        ("big5", "嘅 HKSCS, € cp950", "嘅 HKSCS, ".encode("big5hkscs") + "€ cp950".encode("cp950")),
        ("iso-8859-1", "“cp1252 quotes” \u2013", "“cp1252 quotes” \u2013".encode("cp1252")),
        ("us-ascii", "“smart” quotes", "“smart” quotes".encode("cp1252")),
        ("ks_c_5601-1987", "똠 UHC only", "똠 UHC only".encode("cp949")),
        ("shift_jis", "①髙 cp932 only", "①髙 cp932 only".encode("cp932")),
    ],
)
def test_3_charset_labels_read_as_clients_read_them(
    served: Served, label: str, text: str, body: bytes
) -> None:
    subject = f"charset {label}"
    head = f"Subject: {subject}\r\nContent-Type: text/plain; charset={label}\r\n"
    payload = deliver(served, raw_message(head, body), subject)
    assert payload["text_content"] == text + "\n"


def test_3_an_encoded_word_in_gb2312_with_a_gbk_character(served: Served) -> None:
    word = base64.b64encode("镕基".encode("gb18030")).decode()
    deliver(served, raw_message(f"Subject: =?gb2312?b?{word}?=\r\n", b"x"), "镕基")


# 4. Inline images keep their Content-ID ---------------------------------------------------


def test_4_python_add_related_with_a_file_name_stays_inline(served: Served) -> None:
    msg = message("related with filename")
    msg.set_content('<p><img src="cid:logo@example.com"></p>', subtype="html")
    msg.add_related(b"\x89PNG\r\n", "image", "png", cid="<logo@example.com>", filename="logo.png")
    assert b"Content-Disposition: attachment" in msg.as_bytes()
    (logo,) = deliver(served, msg.as_bytes(), "related with filename")["attachments"]
    assert logo["content_id"] == "<logo@example.com>"
    assert logo["content_disposition"] == "inline"
    assert data(logo) == b"\x89PNG\r\n"


def test_4_a_referenced_attachment_outside_related_is_inline_too(served: Served) -> None:
    msg = message("referenced cid")
    msg.set_content('<img src="cid:pic@x">', subtype="html")
    msg.add_attachment(b"GIF89a", "image", "gif", cid="<pic@x>", filename="pic.gif")
    msg.add_attachment(b"%PDF", "application", "pdf", cid="<doc@x>", filename="doc.pdf")
    pic, pdf = deliver(served, msg.as_bytes(), "referenced cid")["attachments"]
    assert (pic["content_id"], pic["content_disposition"]) == ("<pic@x>", "inline")
    assert pdf["content_disposition"] == "attachment"
    assert "content_id" not in pdf  # not referenced: stays a downloadable file


# 5. Broken-but-common messages keep headers, body and files -------------------------------


def test_5_a_bom_before_the_headers(served: Served) -> None:
    raw = (CORPUS / "mime-tools" / "utf8-bom-at-start.msg").read_bytes()
    payload = deliver(served, raw, "Invoice 548_KUFN530642878")
    assert "Invoice details as follows." in payload["text_content"]
    (doc,) = payload["attachments"]
    assert doc["file_name"] == "NO_B_548_KUFN530642878_09_15_2018.doc"
    assert data(doc) == b"REDACTED\n"


def test_5_a_junk_line_inside_the_header_block(served: Served) -> None:
    raw = (CORPUS / "imap_tools" / "plain_emails" / "raw_email_incorrect_header.eml").read_bytes()
    payload = deliver(served, raw, "Stop adware/spyware once and for all.", ["xxx@xxx.com"])
    assert payload["from"] == {"email": "xxx@xxx.xxx", "name": "xxx xxx"}
    assert payload["text_content"].startswith("You are infected with:")


def test_5_an_illegal_boundary(served: Served) -> None:
    path = CORPUS / "imap_tools" / "mime_emails" / "raw_email_with_illegal_boundary.eml"
    payload = deliver(served, path.read_bytes(), "Testing outlook", ["mikel@me.nowhere"])
    assert payload["text_content"] == "Hello\nThis is an outlook test\n\nSo there.\n\nMe.\n"
    assert "<DIV><FONT face=Arial size=2>Hello</FONT></DIV>" in payload["html_content"]


def test_5_base64_with_a_stray_character(served: Served) -> None:
    raw = (CORPUS / "enmime" / "parts" / "extra-base64-character.raw").read_bytes()
    payload = deliver(served, raw, "Each part contains 1 extra base64 character (4*n + 1)")
    assert payload["text_content"] == "Hello World!"
    assert payload["html_content"] == "<p>Hello World</p>"


# 6. A display name that looks like an address ---------------------------------------------


def test_6_the_angle_address_wins_over_an_address_like_name(served: Served) -> None:
    head = "Subject: angle wins\r\n"
    raw = (
        f"From: alice@example.com <bob@example.com>\r\nTo: Mikel@Lindsaar <{RCPT}>\r\n{head}\r\n"
    ).encode() + b"x\r\n"
    payload = deliver(served, raw, "angle wins", [RCPT])
    assert payload["from"] == {"email": "bob@example.com", "name": "alice@example.com"}
    assert payload["to"] == [{"email": RCPT, "name": "Mikel@Lindsaar"}]
    assert "bcc" not in payload


def test_6_the_corpus_message_keeps_mikel_in_to(served: Served) -> None:
    path = CORPUS / "imap_tools" / "plain_emails" / "raw_email_with_at_display_name.eml"
    payload = deliver(served, path.read_bytes(), "Testing 123", ["raasdnil@gmail.com"])
    assert payload["to"] == [{"email": "raasdnil@gmail.com", "name": "Mikel@Lindsaar"}]
    assert "bcc" not in payload


# 7. Several inline text parts are shown in order ------------------------------------------


def test_7_iphone_text_image_text(served: Served) -> None:
    msg = message("iphone parts")
    msg.set_content("Look at this:\n")
    msg.add_attachment(b"\xff\xd8\xff", "image", "jpeg", filename="IMG_1.jpg", disposition="inline")
    msg.add_attachment("Isn't it nice?\n", disposition="inline")
    payload = deliver(served, msg.as_bytes(), "iphone parts")
    assert payload["text_content"] == "Look at this:\nIsn't it nice?\n"
    (image,) = payload["attachments"]
    assert (image["file_name"], image.get("content_disposition")) == ("IMG_1.jpg", None)


def test_7_a_list_footer_after_an_alternative(served: Served) -> None:
    inner = message("list footer")
    inner.set_content("Hello list\n")
    inner.add_alternative("<p>Hello list</p>", subtype="html")
    inner.make_mixed()
    inner.attach(_text_part("--\nUnsubscribe: https://lists.example.com/\n"))
    payload = deliver(served, inner.as_bytes(), "list footer")
    assert payload["text_content"] == "Hello list\n--\nUnsubscribe: https://lists.example.com/\n"
    assert payload["html_content"] == (
        "<p>Hello list</p>\n\n"
        '<pre style="white-space: pre-wrap">--\nUnsubscribe: https://lists.example.com/\n</pre>'
    )
    assert "attachments" not in payload


def _text_part(text: str) -> EmailMessage:
    part = EmailMessage()
    part.set_content(text)
    return part


# 8. Calendar invites keep their method ----------------------------------------------------

ICS = (
    "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nSUMMARY:Sync\r\nEND:VEVENT\r\n"
    "END:VCALENDAR\r\n"
)


def test_8_a_calendar_request_keeps_its_full_content_type(served: Served) -> None:
    msg = message("invite")
    msg.set_content("You are invited.\n")
    msg.add_alternative("<p>You are invited.</p>", subtype="html")
    msg.add_alternative(ICS, subtype="calendar", params={"method": "REQUEST"})
    payload = deliver(served, msg.as_bytes(), "invite")
    assert payload["text_content"] == "You are invited.\n"
    assert payload["html_content"] == "<p>You are invited.</p>\n"
    (invite,) = payload["attachments"]
    assert invite["content_type"] == "text/calendar; charset=utf-8; method=REQUEST"
    assert invite["file_name"] == "invite.ics"
    assert data(invite).replace(b"\r\n", b"\n") == ICS.replace("\r\n", "\n").encode()


# 9. Signed and encrypted mail -------------------------------------------------------------


def _signed(subject: str, protocol: str, signature_type: str) -> bytes:
    return (
        f"From: app@example.com\r\nTo: {RCPT}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/signed; protocol="{protocol}"; micalg=sha-256; boundary=s\r\n'
        "\r\n--s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSigned text\r\n"
        f"--s\r\nContent-Type: {signature_type}; name=sig\r\n\r\nSIGNATURE\r\n--s--\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("kind", "protocol"),
    [("smime", "application/pkcs7-signature"), ("pgp", "application/pgp-signature")],
)
def test_9_signed_mail_is_delivered_without_its_signature_and_logged(
    served: Served, kind: str, protocol: str
) -> None:
    subject = f"signed {kind}"
    payload = deliver(served, _signed(subject, protocol, protocol), subject)
    assert payload["text_content"] == "Signed text"
    assert "attachments" not in payload
    [request] = [r for r in served.standin.requests if r.json.get("subject") == subject]
    key = request.headers["idempotency-key"]
    assert served.log_lines('"signature_removed"', key)  # on this message's own line


@pytest.mark.parametrize(
    ("content_type", "detail"),
    [
        (
            'multipart/encrypted; protocol="application/pgp-encrypted"; boundary=e',
            "PGP/MIME encrypted (multipart/encrypted)",
        ),
        (
            "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m",
            "S/MIME encrypted (application/pkcs7-mime)",
        ),
        (
            "application/pkcs7-mime; smime-type=signed-data; name=smime.p7m",
            "S/MIME opaque-signed (application/pkcs7-mime)",
        ),
    ],
    ids=["pgp", "smime-enveloped", "smime-opaque-signed"],
)
def test_9_encrypted_mail_is_refused_with_554_5_6_1(
    served: Served, content_type: str, detail: str
) -> None:
    body = (
        b"--e\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        b"--e\r\nContent-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n"
        b"--e--\r\n"
        if content_type.startswith("multipart")
        else b"MIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n"
    )
    raw = raw_message(f"Subject: encrypted\r\nContent-Type: {content_type}\r\n", body)
    with (
        smtplib.SMTP("127.0.0.1", served.port, timeout=10) as smtp,
        pytest.raises(smtplib.SMTPDataError) as refused,
    ):
        smtp.sendmail("app@example.com", [RCPT], raw)
    assert refused.value.smtp_code == 554
    assert refused.value.smtp_error.decode() == (
        "5.6.1 Encrypted mail cannot be relayed: the API rebuilds MIME, send it unencrypted: "
        + detail
    )


# 10. Attached messages byte for byte ------------------------------------------------------

INNER = (
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; c=simple/simple;\r\n"
    b"\th=from:subject; bh=abc=; b=def=\r\n"
    b"From:   Carol  <carol@example.org>\r\n"
    b"Subject: a subject that is long enough to be refolded by a generator that refolds,"
    b" which it must not be\r\n"
    b"X-Odd:no space after the colon\r\n"
    b"\r\n"
    b"Forwarded body\r\n"
)


def test_10_an_attached_message_is_sent_byte_for_byte(served: Served) -> None:
    raw = raw_message(
        "Subject: forward\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=f\r\n",
        b"--f\r\nContent-Type: text/plain\r\n\r\nSee below.\r\n"
        b"--f\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n"
        + INNER
        + b"--f--\r\n",
    )
    (forwarded,) = deliver(served, raw, "forward")["attachments"]
    assert forwarded["content_type"] == "message/rfc822"
    assert data(forwarded) == INNER.removesuffix(b"\r\n")  # the CRLF before --f is the boundary's
