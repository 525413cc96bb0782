"""tree.feed's single-part way gives the tree the full feed parse gives, whenever it is taken."""

from __future__ import annotations

import email.feedparser
from email.message import Message

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.translate import tree

_PIECES = [
    b"From: a@example.com\r\n", b"Subject: x\r\n", b"Content-Type: text/plain; charset=utf-8\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: message/rfc822\r\n",
    b"Content-Type:\r\n multipart/alternative\r\n", b"Content-Type: multipart\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"\r\n", b"\n", b"\r", b" folded\r\n",
    b"junk line\r\n", b"body text\r\n", b"\xc3\xa9\xff\r\n", b"--b\r\n", b"X: y", b"From me\r\n",
    b":\r\n", b"\t\r\n",
]  # fmt: skip


def full_parse(raw: bytes) -> Message:
    parser = email.feedparser.BytesFeedParser(policy=tree.POLICY)
    parser.feed(raw)
    return parser.close()


def assert_same_tree(quick: Message, full: Message) -> None:
    ours, theirs = tree.raw_payload(quick), tree.raw_payload(full)
    if isinstance(theirs, list):
        assert isinstance(ours, list)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert_same_tree(a, b)
    else:
        assert ours == theirs
    assert list(quick.raw_items()) == list(full.raw_items())
    assert [type(d) for d in quick.defects] == [type(d) for d in full.defects]
    assert quick.get_unixfrom() == full.get_unixfrom()
    assert quick.get_content_type() == full.get_content_type()


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12))
def test_whenever_the_single_part_way_is_taken_the_tree_is_the_same(pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    quick = tree._single_part(raw)
    if quick is not None:
        assert_same_tree(quick, full_parse(raw))
    assert_same_tree(tree.feed(raw), full_parse(raw))


def test_a_plain_text_message_takes_it() -> None:
    raw = b"From: a@example.com\r\nSubject: hi\r\n\r\nline one\r\n.dot\r\n\xe9 8-bit\r\n"
    quick = tree._single_part(raw)
    assert quick is not None
    assert tree.raw_payload(quick) == "line one\r\n.dot\r\n\udce9 8-bit\r\n"


def test_multipart_message_and_odd_headers_take_the_full_parse() -> None:
    for raw in (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
        b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nx\r\n",
        b"From: a@example.com\nSubject: lf only\r\n\r\nbody\r\n",
        b"From: a@example.com\r\njunk line\r\nSubject: x\r\n\r\nbody\r\n",
        b"no header block at all",
    ):
        assert tree._single_part(raw) is None, raw
