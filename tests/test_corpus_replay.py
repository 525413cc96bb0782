"""Replay of the shared real-world MIME corpus (``tests.paths.CORPUS``) through a real relay.

Every message must get 250 or a clean 5xx — never a 4xx, which would mean an internal
error (the client would retry the same bytes forever) — and the relay must still answer
afterwards. The files are read in place, never copied into the project; bare-LF files are
sent with CRLF line ends, as any real client does.

It is replayed twice: with smtplib (raw bytes, smtplib dot-stuffs), one connection for the
whole corpus (RSET between transactions, as smtplib does after a refusal), and with
Postfix's own load generator ``smtp-source -F``, one session per file.
"""

from __future__ import annotations

import re
import smtplib
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.interop import Served
from tests.paths import CORPUS

pytestmark = pytest.mark.e2e
SMTP_SOURCE = "/usr/sbin/smtp-source"


def corpus_files() -> list[Path]:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".md")
    assert len(files) > 200, f"the corpus at {CORPUS} looks incomplete"
    return files


def as_crlf(raw: bytes) -> bytes:
    """``raw`` with every line ending (LF, CRLF) written as CRLF."""
    return re.sub(rb"\r?\n", b"\r\n", raw)


def send(smtp: smtplib.SMTP, raw: bytes) -> tuple[int, str]:
    """Send one message; its final reply (code, text)."""
    try:
        smtp.sendmail("corpus@example.com", ["alice@example.net"], as_crlf(raw))
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code, exc.smtp_error.decode(errors="replace")
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        return code, text.decode(errors="replace")
    return 250, "OK"


def test_every_corpus_message_gets_250_or_a_clean_5xx_with_smtplib(served: Served) -> None:
    outcomes: dict[str, tuple[int, str]] = {}
    with smtplib.SMTP("127.0.0.1", served.port, local_hostname="corpus.test", timeout=30) as smtp:
        for path in corpus_files():
            outcomes[str(path.relative_to(CORPUS))] = send(smtp, path.read_bytes())
        assert smtp.noop()[0] == 250
    transient = {name: o for name, o in outcomes.items() if not (o[0] == 250 or o[0] >= 500)}
    assert transient == {}, f"4xx (internal errors?) for {len(transient)} messages"
    accepted = sum(1 for code, _ in outcomes.values() if code == 250)
    assert accepted >= len(outcomes) * 0.9, f"only {accepted} of {len(outcomes)} accepted"
    # Every 250 stands for at least one request answered 2xx (idempotent replays included:
    # the corpus holds a few identical messages).
    answered = [r for r in served.standin.requests if 200 <= r.response_status < 300]
    assert len(answered) >= accepted


def smtp_source(path: Path, port: int) -> str | None:
    """Send ``path`` with ``smtp-source -F``; None on success, else its error line."""
    done = subprocess.run(
        [SMTP_SOURCE, "-F", str(path), "-f", "corpus@example.com", "-t", "alice@example.net",
         "-M", "corpus.test", f"127.0.0.1:{port}"],
        check=False, capture_output=True, timeout=30,
    )  # fmt: skip
    return None if done.returncode == 0 else done.stderr.decode(errors="replace").strip()


def test_every_corpus_message_gets_250_or_a_clean_5xx_with_smtp_source(served: Served) -> None:
    assert Path(SMTP_SOURCE).exists(), "smtp-source missing: .ci/run installs postfix"
    files = corpus_files()
    # smtp-source sleeps a second before exiting on a refusal: run a few at once.
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = pool.map(lambda p: smtp_source(p, served.port), files)
        errors = dict(zip(files, outcomes, strict=True))
    failures = {str(p.relative_to(CORPUS)): why for p, why in errors.items() if why}
    transient = {n: why for n, why in failures.items() if not re.search(r"\b5\d\d\b", why)}
    assert transient == {}, "smtp-source got something other than 250 or 5xx"
    assert len(failures) <= len(files) * 0.1, f"{len(failures)} refused: {failures}"
    with smtplib.SMTP("127.0.0.1", served.port, timeout=10) as smtp:
        assert smtp.noop()[0] == 250
