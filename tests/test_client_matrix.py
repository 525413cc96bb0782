"""The client matrix: every real SMTP client our users run, through a real relay.

Each client sends the four scenarios of ``tests.clients.scenarios`` (plain text, HTML with
an inline image, an attachment, cc + bcc) to one relay forwarding to the stand-in API,
and the test asserts the payload the stand-in received. Postfix takes part as a whole
MTA: a private instance with the relay as its ``relayhost``.

No client is ever skipped: a missing one fails its tests with the package to install
(``.ci/run`` installs them all).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.drivers import COMPOSERS, Client
from tests.clients.postfix import PrivatePostfix
from tests.clients.scenarios import KINDS, check, scenario
from tests.interop import Served

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def postfix(served: Served) -> Iterator[PrivatePostfix]:
    instance = PrivatePostfix(served.port)
    try:
        yield instance.start()
    finally:
        instance.stop()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("client", COMPOSERS, ids=lambda c: c.name)
def test_client(served: Served, client: Client, kind: str, tmp_path: Path) -> None:
    s = scenario(kind, client.name)
    client.send(s, served.port, tmp_path)
    check(s, served.payloads(s.subject), inline_cid=client.inline_cid)


@pytest.mark.parametrize("kind", KINDS)
def test_postfix_relayhost(served: Served, postfix: PrivatePostfix, kind: str) -> None:
    s = scenario(kind, "postfix")
    postfix.sendmail(s.mime(), s.sender)
    payloads = served.payloads(s.subject, timeout=20)
    assert payloads, f"Postfix did not deliver to the relay; its log:\n{postfix.log()[-3000:]}"
    check(s, payloads)
