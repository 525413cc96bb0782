"""The common SMTP path, parsed without the email header parser.

aiosmtpd parses the address of every MAIL and RCPT with ``email``'s header value parser
(a token tree per call, and a ``typing.Protocol`` class built anew in each call): ~10 % of
the relay's CPU per small message. Nearly every client sends the plain form
``<local@domain>`` with ASCII dot-atoms, optionally followed by parameters; ``simple_path``
answers that form exactly as aiosmtpd's ``_getaddr`` does and declines everything else
(quoted local parts, source routes, address literals, comments, non-ASCII, ``<>``), which
then goes through aiosmtpd's own parse. ``tests/test_smtp_paths.py`` checks the two agree.
"""

from __future__ import annotations

import re

__all__ = ["simple_path"]

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
    r"(?:[ \t]+([^ \t(].*)?)?",
    re.ASCII | re.DOTALL,
)


def simple_path(arg: str, local_part_limit: int = 0) -> tuple[str | None, str | None] | None:
    """(address, rest) for a plain ``<local@domain> [rest]``, as aiosmtpd's ``_getaddr``
    returns it ((None, None) past ``local_part_limit``); None for any other form."""
    match = _SIMPLE.fullmatch(arg)
    if match is None:
        return None
    local, domain, rest = match.groups()
    if local_part_limit and len(local) > local_part_limit:
        return None, None
    return f"{local}@{domain}", rest or ""
