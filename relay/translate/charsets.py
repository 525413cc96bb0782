"""Charset labels read the way mail clients read them, and text decoded with them.

Labels map as the WHATWG Encoding Standard maps them (what browsers and the mail clients
built on them do): ``us-ascii`` and ``iso-8859-1`` are windows-1252, ``gb2312`` and ``gbk``
are gb18030, ``big5`` is Big5-HKSCS (with cp950's extra characters), ``shift_jis`` is
cp932, ``euc-kr`` / ``ks_c_5601-1987`` are cp949, ``iso-8859-9`` is windows-1254, and so
on (``_WHATWG``). A label the standard does not know is looked up in Python's codecs and
its codec name mapped the same way (``latin-1`` is windows-1252 too). Deviations, for mail:
``utf-7`` (not in the standard, still sent by old clients) is decoded as UTF-7, and
``iso-2022-kr`` / ``hz-gb-2312`` (the standard's "replacement") with Python's codecs.
Escape, IDNA and binary codecs are no mail charsets: such a label counts as unknown.

``decode_text(data, label)`` decodes with the label's encoding and replaces only what cannot
be decoded (U+FFFD; C1 controls for the undefined bytes of windows-125x, as browsers do). It
falls back to another charset only when the declared one is clearly wrong for the text:

- no label, an unknown one: UTF-8 when most non-ASCII sequences are valid UTF-8 (the
  others replaced), else windows-1252;
- a single-byte label on bytes that are valid UTF-8 with non-ASCII characters (UTF-8 text
  mislabelled by its sender; real single-byte text is almost never valid UTF-8): UTF-8;
- UTF-8 on bytes most of whose non-ASCII sequences are invalid UTF-8: windows-1252;
- any other label whose strict decoding fails, on bytes that are valid UTF-8: UTF-8.

A byte-order mark decides over the label (as in the standard) and is removed.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Final

__all__ = ["WHATWG_LABELS", "codec_for", "decode_text", "refused"]

WHATWG_LABELS: Final[dict[str, str]] = {
    "utf-8": "unicode-1-1-utf-8 unicode11utf8 unicode20utf8 utf-8 utf8 x-unicode20utf8",
    "ibm866": "866 cp866 csibm866 ibm866",
    "iso-8859-2": "csisolatin2 iso-8859-2 iso-ir-101 iso8859-2 iso88592 iso_8859-2 "
    "iso_8859-2:1987 l2 latin2",
    "iso-8859-3": "csisolatin3 iso-8859-3 iso-ir-109 iso8859-3 iso88593 iso_8859-3 "
    "iso_8859-3:1988 l3 latin3",
    "iso-8859-4": "csisolatin4 iso-8859-4 iso-ir-110 iso8859-4 iso88594 iso_8859-4 "
    "iso_8859-4:1988 l4 latin4",
    "iso-8859-5": "csisolatincyrillic cyrillic iso-8859-5 iso-ir-144 iso8859-5 iso88595 "
    "iso_8859-5 iso_8859-5:1988",
    "iso-8859-6": "arabic asmo-708 csiso88596e csiso88596i csisolatinarabic ecma-114 "
    "iso-8859-6 iso-8859-6-e iso-8859-6-i iso-ir-127 iso8859-6 iso88596 iso_8859-6 "
    "iso_8859-6:1987",
    "iso-8859-7": "csisolatingreek ecma-118 elot_928 greek greek8 iso-8859-7 iso-ir-126 "
    "iso8859-7 iso88597 iso_8859-7 iso_8859-7:1987 sun_eu_greek",
    "iso-8859-8": "csiso88598e csisolatinhebrew hebrew iso-8859-8 iso-8859-8-e iso-ir-138 "
    "iso8859-8 iso88598 iso_8859-8 iso_8859-8:1988 visual",
    "iso-8859-8-i": "csiso88598i iso-8859-8-i logical",
    "iso-8859-10": "csisolatin6 iso-8859-10 iso-ir-157 iso8859-10 iso885910 l6 latin6",
    "iso-8859-13": "iso-8859-13 iso8859-13 iso885913",
    "iso-8859-14": "iso-8859-14 iso8859-14 iso885914",
    "iso-8859-15": "csisolatin9 iso-8859-15 iso8859-15 iso885915 iso_8859-15 l9",
    "iso-8859-16": "iso-8859-16",
    "koi8-r": "cskoi8r koi koi8 koi8-r koi8_r",
    "koi8-u": "koi8-ru koi8-u",
    "macintosh": "csmacintosh mac macintosh x-mac-roman",
    "windows-874": "dos-874 iso-8859-11 iso8859-11 iso885911 tis-620 windows-874",
    "windows-1250": "cp1250 windows-1250 x-cp1250",
    "windows-1251": "cp1251 windows-1251 x-cp1251",
    "windows-1252": "ansi_x3.4-1968 ascii cp1252 cp819 csisolatin1 ibm819 iso-8859-1 "
    "iso-ir-100 iso8859-1 iso88591 iso_8859-1 iso_8859-1:1987 l1 latin1 us-ascii "
    "windows-1252 x-cp1252",
    "windows-1253": "cp1253 windows-1253 x-cp1253",
    "windows-1254": "cp1254 csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 iso_8859-9 "
    "iso_8859-9:1989 l5 latin5 windows-1254 x-cp1254",
    "windows-1255": "cp1255 windows-1255 x-cp1255",
    "windows-1256": "cp1256 windows-1256 x-cp1256",
    "windows-1257": "cp1257 windows-1257 x-cp1257",
    "windows-1258": "cp1258 windows-1258 x-cp1258",
    "x-mac-cyrillic": "x-mac-cyrillic x-mac-ukrainian",
    "gbk": "chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk iso-ir-58 x-gbk",
    "gb18030": "gb18030",
    "big5": "big5 big5-hkscs cn-big5 csbig5 x-x-big5",
    "euc-jp": "cseucpkdfmtjapanese euc-jp x-euc-jp",
    "iso-2022-jp": "csiso2022jp iso-2022-jp",
    "shift_jis": "csshiftjis ms932 ms_kanji shift-jis shift_jis sjis windows-31j x-sjis",
    "euc-kr": "cseuckr csksc56011987 euc-kr iso-ir-149 korean ks_c_5601-1987 "
    "ks_c_5601-1989 ksc5601 ksc_5601 windows-949",
    "iso-2022-kr": "csiso2022kr iso-2022-kr",
    "hz-gb-2312": "hz-gb-2312",
    "utf-16be": "unicodefffe utf-16be",
    "utf-16le": "csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff utf-16 utf-16le",
    "x-user-defined": "x-user-defined",
}
"""Each WHATWG encoding (and the two kept for mail) with its labels, space-separated."""

_CODEC: Final = {
    "utf-8": "utf-8",
    "ibm866": "cp866",
    "iso-8859-8-i": "iso8859-8",
    "koi8-r": "koi8-r",
    "koi8-u": "koi8-u",
    "macintosh": "mac-roman",
    "x-mac-cyrillic": "mac-cyrillic",
    "windows-874": "cp874",
    "gbk": "gb18030",
    "gb18030": "gb18030",
    "big5": "big5hkscs",
    "euc-jp": "euc_jp",
    "iso-2022-jp": "iso2022_jp",
    "shift_jis": "cp932",
    "euc-kr": "cp949",
    "iso-2022-kr": "iso2022_kr",
    "hz-gb-2312": "hz",
    "utf-16be": "utf-16-be",
    "utf-16le": "utf-16-le",
    "x-user-defined": "x-user-defined",
}
"""Python's codec for a WHATWG encoding whose name Python does not know as it is."""


def _python_name(encoding: str) -> str:
    """The canonical Python codec name for WHATWG ``encoding``."""
    codec = _CODEC.get(encoding, encoding.replace("windows-", "cp"))
    return codec if codec == "x-user-defined" else codecs.lookup(codec).name


_LABEL_CODEC: Final = {
    label: _python_name(name) for name, labels in WHATWG_LABELS.items() for label in labels.split()
}
_EXTRA_LABELS: Final = {"utf-7": "utf-7", "unicode-1-1-utf-7": "utf-7", "csunicode11utf7": "utf-7"}
_NOT_MAIL: Final = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape"})
_SINGLE_BYTE: Final = re.compile(r"cp12\d\d|cp874|cp866|iso8859-\d+|koi8-[ru]|mac-[a-z]+")
_FALLBACK: Final = {"big5hkscs": "cp950", "euc_jp": "euc_jis_2004", "cp932": "shift_jis_2004"}
"""Where a multi-byte decoder looks up a pair of bytes it cannot decode (superset tables)."""
_WHOLE_FALLBACK: Final = {"iso2022_jp": ("iso2022_jp_2004", "iso2022_jp_ext")}
"""Stateful codecs: whole-text alternatives tried before replacing (NEC/JIS X 0213 marks)."""
_NOT_ASCII_COMPATIBLE: Final = ("utf-16", "utf-7", "iso2022", "hz", "x-user-defined")
_BOMS: Final = ((codecs.BOM_UTF8, "utf-8"), (b"\xfe\xff", "utf-16-be"), (b"\xff\xfe", "utf-16-le"))


@lru_cache(maxsize=256)
def codec_for(label: str | None) -> str | None:
    """The Python codec that decodes text labelled ``label``; None when unknown."""
    if not label:
        return None
    key = label.strip().strip("\"'").lower()
    if codec := _LABEL_CODEC.get(key) or _EXTRA_LABELS.get(key):
        return codec
    if "*" in key:  # RFC 2231 language suffix: utf-8*en
        return codec_for(key.split("*", 1)[0])
    try:
        name = codecs.lookup(key).name
    except (LookupError, ValueError):  # unknown; or a NUL in the name
        return None
    if name in _NOT_MAIL or not _is_text_codec(name):
        return None
    return _LABEL_CODEC.get(name, _LABEL_CODEC.get(name.replace("_", "-"), name))


def refused(label: str) -> bool:
    """Whether ``label`` names a codec that is no mail charset (punycode, escapes...)."""
    try:
        return codecs.lookup(label.strip().lower()).name in _NOT_MAIL
    except (LookupError, ValueError):
        return False


def _is_text_codec(name: str) -> bool:
    """Whether codec ``name`` turns bytes into text (not base64, zlib, rot13...)."""
    try:
        return isinstance(b"a".decode(name), str)
    except (LookupError, ValueError, TypeError):
        return False


def decode_text(data: bytes, label: str | None) -> str:
    """``data`` as the text a mail client shows for charset ``label`` (see the module doc)."""
    codec = codec_for(label)
    if data.isascii() and not _needs_codec(codec):
        return data.decode("ascii")
    for bom, bom_codec in _BOMS:
        if data.startswith(bom):
            return _decode(data[len(bom) :], bom_codec)
    if codec is None:
        return _utf8_or_1252(data)
    try:
        text = _strict(data, codec)
    except UnicodeDecodeError:
        return _lenient(data, codec)
    if _SINGLE_BYTE.fullmatch(codec) and not data.isascii():
        return _utf8_strict(data) or text
    return text


def _needs_codec(codec: str | None) -> bool:
    """Whether ASCII bytes may still mean something else in ``codec`` (escapes, UTF-16)."""
    return codec is not None and codec.startswith(_NOT_ASCII_COMPATIBLE)


def _strict(data: bytes, codec: str) -> str:
    """``data`` decoded with ``codec``, raising on any undecodable byte."""
    if codec == "x-user-defined":
        return _x_user_defined(data)
    return data.decode(codec)


def _lenient(data: bytes, codec: str) -> str:
    """``data`` whose strict decoding with ``codec`` failed: the best reading (module doc)."""
    if codec == "utf-8":
        return data.decode("utf-8", "replace") if _mostly_utf8(data) else _decode(data, "cp1252")
    if (utf8 := _utf8_strict(data)) is not None:
        return utf8
    for alternative in _WHOLE_FALLBACK.get(codec, ()):
        try:
            return data.decode(alternative)
        except UnicodeDecodeError:
            continue
    return _decode(data, codec)


def _decode(data: bytes, codec: str) -> str:
    """``data`` decoded with ``codec``, undecodable bytes replaced (module doc)."""
    return data.decode(codec, _ERROR_HANDLER.get(codec, "replace"))


def _utf8_strict(data: bytes) -> str | None:
    """``data`` as UTF-8 when it is valid UTF-8, else None."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _utf8_or_1252(data: bytes) -> str:
    """Unlabelled text: UTF-8 when mostly valid UTF-8, else windows-1252 (western default)."""
    text = _utf8_strict(data)
    if text is not None:
        return text
    return data.decode("utf-8", "replace") if _mostly_utf8(data) else _decode(data, "cp1252")


_VALID_UTF8_SEQUENCE: Final = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}"
)
_HIGH_BYTE: Final = re.compile(rb"[\x80-\xff]")


def _mostly_utf8(data: bytes) -> bool:
    """Whether most non-ASCII bytes of ``data`` form valid UTF-8 sequences."""
    valid = sum(len(m) for m in _VALID_UTF8_SEQUENCE.findall(data))
    return valid * 2 >= len(_HIGH_BYTE.findall(data))


def _x_user_defined(data: bytes) -> str:
    """WHATWG x-user-defined: ASCII, and bytes 0x80-0xFF as U+F780-U+F7FF."""
    return "".join(chr(b) if b < 0x80 else chr(0xF700 + b) for b in data)


def _c1_or_replace(error: UnicodeError) -> tuple[str, int]:
    """Undefined windows-125x bytes 0x80-0x9F become C1 controls (as browsers read them)."""
    assert isinstance(error, UnicodeDecodeError)
    byte = error.object[error.start]
    return (chr(byte) if 0x80 <= byte <= 0x9F else "\ufffd"), error.start + 1


def _superset_handler(superset: str) -> Callable[[UnicodeError], tuple[str, int]]:
    """An error handler that reads an undecodable pair of bytes with ``superset``."""

    def handler(error: UnicodeError) -> tuple[str, int]:
        assert isinstance(error, UnicodeDecodeError)
        pair = error.object[error.start : error.start + 2]
        try:
            return pair.decode(superset), error.start + 2
        except UnicodeDecodeError:
            return "\ufffd", error.end

    return handler


codecs.register_error("relay-c1", _c1_or_replace)
for _codec, _superset in _FALLBACK.items():
    codecs.register_error(f"relay-{_codec}", _superset_handler(_superset))
_ERROR_HANDLER: Final = {f"cp125{n}": "relay-c1" for n in range(9)} | {
    codec: f"relay-{codec}" for codec in _FALLBACK
}
