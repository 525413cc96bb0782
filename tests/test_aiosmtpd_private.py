"""The private aiosmtpd names the relay relies on: still there, all listed, no others.

``relay.smtp.session.RelaySession`` touches a few private aiosmtpd attributes where
aiosmtpd has no public hook (``PRIVATE_AIOSMTPD_NAMES``, explained in its docstring).
pyproject pins ``aiosmtpd<1.5``; these tests make an upgrade that drops or renames one
fail with the name, and make any new private name in the package fail until it is listed.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiosmtpd
from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.smtp.session import PRIVATE_AIOSMTPD_NAMES, RelaySession
from tests.paths import REPO

_PRIVATE = re.compile(r"^_[a-z]\w*$")
_REFERENCE = re.compile(r"\.(_[a-z]\w*)|\bdef (_[a-z]\w*)")
_DEFINITION = re.compile(r"self\.(_[a-z]\w*)\s*(?::[^=\n]+)?=(?!=)|\bdef (_[a-z]\w*)")
_KINDS: dict[str, Callable[[object], bool]] = {
    "_handle_client": inspect.iscoroutinefunction,  # wrapped: the whole connection
    "_reader": lambda value: isinstance(value, asyncio.StreamReader),  # DATA is read from it
    "_timeout_cb": callable,  # the idle timer's expiry
    "_timeout_handle": lambda value: isinstance(value, asyncio.TimerHandle),  # paused in DATA
    "_reset_timeout": callable,  # re-arms the idle timer after the DATA reply
    "_getaddr": callable,  # the MAIL/RCPT address parse (the plain form done quickly)
}


@asynccontextmanager
async def connected(factory: Callable[[], asyncio.Protocol]) -> AsyncIterator[asyncio.Protocol]:
    """A protocol from ``factory`` with a live connection (a socket pair), as a server has it."""
    ours, theirs = socket.socketpair()
    protocol = factory()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, ours)
    await asyncio.sleep(0.01)  # let aiosmtpd's connection task start
    try:
        yield protocol
    finally:
        transport.close()
        theirs.close()
        await asyncio.sleep(0.01)


def private_names(*objects: object) -> set[str]:
    return {n for o in objects for n in [*dir(o), *vars(o)] if _PRIVATE.match(n)}


async def aiosmtpd_private_names() -> set[str]:
    """Private names aiosmtpd itself defines on a connected SMTP, its Session and Envelope."""
    async with connected(lambda: SMTP(object())) as smtp:
        assert isinstance(smtp, SMTP)
        on_smtp = private_names(SMTP, smtp)
    async with connected(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(), lambda r, w: None)
    ) as base:
        inherited = private_names(asyncio.StreamReaderProtocol, base)
    return (on_smtp - inherited) | private_names(Session(asyncio.get_running_loop()), Envelope())


def referenced_private_names() -> dict[str, set[str]]:
    """Every ``._name`` / ``def _name`` in the package, with the files that use it."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "relay").rglob("*.py")):
        for match in _REFERENCE.finditer(path.read_text(encoding="utf-8")):
            name = match.group(1) or match.group(2)
            found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


async def test_every_listed_private_name_still_exists() -> None:
    async with connected(lambda: SMTP(object())) as smtp:
        for name in PRIVATE_AIOSMTPD_NAMES:
            assert hasattr(smtp, name), (
                f"aiosmtpd {aiosmtpd.__version__} has no SMTP.{name}: RelaySession relies on it"
                " (see relay/smtp/session.py); adapt the session before upgrading"
            )
        for name, expected in _KINDS.items():
            assert expected(getattr(smtp, name)), f"aiosmtpd's SMTP.{name} changed kind"


async def test_the_package_touches_only_the_listed_private_names() -> None:
    aiosmtpd_names = await aiosmtpd_private_names()
    used = {n: files for n, files in referenced_private_names().items() if n in aiosmtpd_names}
    assert set(used) == set(PRIVATE_AIOSMTPD_NAMES), (
        f"private aiosmtpd names used: {used}; list each in PRIVATE_AIOSMTPD_NAMES and the"
        " RelaySession docstring, or use a public hook"
    )
    assert len(PRIVATE_AIOSMTPD_NAMES) <= 6
    assert {f for files in used.values() for f in files} == {"relay/smtp/session.py"}


def test_the_session_docstring_lists_each_name() -> None:
    doc = RelaySession.__doc__ or ""
    for name in PRIVATE_AIOSMTPD_NAMES:
        assert f"``{name}``" in doc, f"RelaySession's docstring does not list {name}"


async def test_the_session_shadows_no_private_attribute_of_its_bases() -> None:
    """A private name of ours that a base also has would silently override it."""
    source = (REPO / "relay" / "smtp" / "session.py").read_text(encoding="utf-8")
    ours = {a or d for a, d in _DEFINITION.findall(source)}
    async with connected(lambda: SMTP(object())) as smtp:
        bases = private_names(SMTP, smtp)
    assert (ours & bases) - set(PRIVATE_AIOSMTPD_NAMES) == set(), "a base attribute is shadowed"


def test_the_pin_keeps_aiosmtpd_below_1_5() -> None:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert '"aiosmtpd>=1.4.6,<1.5"' in pyproject
    assert aiosmtpd.__version__.startswith("1.4."), "installed aiosmtpd is outside the pin"
