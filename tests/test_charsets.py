"""relay.translate.charsets: WHATWG labels, and decoding that replaces only what it must."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from relay.translate.charsets import WHATWG_LABELS, codec_for, decode_text
from relay.translate.headers import decode_text_header

LABELS = {label: name for name, labels in WHATWG_LABELS.items() for label in labels.split()}
# The standard's "replacement" labels the relay decodes with Python's codecs, for mail.
KEPT_FOR_MAIL = {"csiso2022kr", "iso-2022-kr", "hz-gb-2312"}


def test_every_label_has_a_codec_that_decodes() -> None:
    for label in LABELS:
        codec = codec_for(label)
        assert codec is not None, label
        assert decode_text(b"plain ascii", label) == "plain ascii"


def test_the_table_agrees_with_nodes_textdecoder() -> None:
    """node's TextDecoder implements the WHATWG Encoding Standard (ICU lacks a few)."""
    node = shutil.which("node")
    assert node, "node missing: .ci/run installs nodejs"
    script = (
        "const out = {}; for (const l of JSON.parse(process.argv[1])) {"
        " try { out[l] = new TextDecoder(l).encoding } catch (e) { out[l] = null } }"
        " console.log(JSON.stringify(out))"
    )
    labels = sorted(set(LABELS) - KEPT_FOR_MAIL)
    done = subprocess.run(
        [node, "-e", script, json.dumps(labels)], capture_output=True, text=True, check=True
    )
    known = {k: v for k, v in json.loads(done.stdout).items() if v is not None}
    assert len(known) > 200
    assert {label: LABELS[label] for label in known} == known


@pytest.mark.parametrize(
    ("label", "data", "text"),
    [
        ("us-ascii", b"\x93q\x94", "\u201cq\u201d"),
        ("iso-8859-1", b"caf\xe9 \x80", "caf\u00e9 \u20ac"),
        ("windows-1252", b"\x81", "\x81"),  # undefined byte: the C1 control, as browsers
        ("gb2312", "\u9555".encode("gb18030"), "\u9555"),
        ("big5", "\u5605".encode("big5hkscs") + "\u20ac".encode("cp950"), "\u5605\u20ac"),
        ("shift_jis", "\u2460".encode("cp932"), "\u2460"),
        ("ks_c_5601-1987", "\ub620".encode("cp949"), "\ub620"),
        ("iso-8859-9", b"\xd0", "\u011e"),
        ("x-user-defined", b"a\x80\xff", "a\uf780\uf7ff"),
        ("utf-7", b"+AOk-", "\u00e9"),
        ("utf-16", "h\u00e9".encode("utf-16-le"), "h\u00e9"),
        ("utf-8*en", b"caf\xc3\xa9", "caf\u00e9"),
    ],
)
def test_labels_read_as_clients_read_them(label: str, data: bytes, text: str) -> None:
    assert decode_text(data, label) == text


def test_only_the_undecodable_byte_is_replaced() -> None:
    text = "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440"
    assert decode_text(text.encode() + b"\xff", "utf-8") == text + "\ufffd"
    assert decode_text(b"\x98" + text.encode("cp1251"), "windows-1251") == "\x98" + text


@pytest.mark.parametrize(
    ("label", "data", "text"),
    [
        ("iso-8859-1", "caf\u00e9".encode(), "caf\u00e9"),  # UTF-8 under a single-byte label
        ("utf-8", b"caf\xe9 cr\xe8me", "caf\u00e9 cr\u00e8me"),  # mostly not UTF-8
        (None, b"caf\xe9", "caf\u00e9"),  # no label, not UTF-8: windows-1252
        ("x-bogus", "caf\u00e9".encode(), "caf\u00e9"),  # unknown: UTF-8
        ("punycode", b"abc-aaa", "abc-aaa"),  # no mail charset: unknown
        ("base64", b"SGk=", "SGk="),
        ("big5", "\u4e2d".encode(), "\u4e2d"),  # strict big5 fails, valid UTF-8
    ],
)
def test_another_charset_only_when_the_declared_one_is_clearly_wrong(
    label: str | None, data: bytes, text: str
) -> None:
    assert decode_text(data, label) == text


def test_a_byte_order_mark_decides_and_is_removed() -> None:
    assert decode_text(b"\xef\xbb\xbfcaf\xc3\xa9", "iso-8859-1") == "caf\u00e9"
    assert decode_text(b"\xff\xfeh\x00i\x00", "utf-8") == "hi"


def test_a_byte_order_mark_is_removed_only_where_a_run_of_encoded_words_starts() -> None:
    """Adjacent words are one stream, as in Thunderbird (a TextDecoder per run of words)."""
    assert decode_text_header("=?utf-8?b?77u/QW5u?=") == "Ann"
    assert decode_text_header("=?utf-8?b?QW5u?= =?utf-8?b?77u/?=") == "Ann\ufeff"
    assert decode_text_header("Ann =?utf-8?b?77u/Qg==?=") == "Ann B"
