"""The shared PostgreSQL spool end to end: a real relay, the stand-in API, a real cluster.

- The database stops mid-run: a message the API takes still gets ``250``; one that needs
  the spool gets ``451 4.3.0`` within the transaction time (never a ``250`` without a
  row); an open circuit breaker does not stop the API from being tried; ``/readyz`` stays
  200 naming the degraded spool; the ``spool_available`` gauge says 0. The database comes
  back: the relay spools again without a restart and the worker delivers what it held.
- The database is down when the relay process starts: it listens anyway, and once the
  database is up it migrates, spools and delivers; the password appears in no log line.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.harness import RunningRelay, running_relay, settings_for
from tests.ops_support import relay_process, run_cli, standin_env, wait_for_event
from tests.postgres import PASSWORD, PgCluster, running_cluster
from tests.standin import Scripted, StandIn
from tests.test_metrics import value
from tests.test_ops_e2e import admin_port, get

pytestmark = pytest.mark.e2e

SPOOLED = "2.0.0 Queued for delivery: spool id "
SPOOL_DOWN = (451, "4.3.0 Spool unavailable, try again later")


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """A cluster of its own: these tests stop and start it."""
    with running_cluster() as own:
        yield own


def message(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "app@example.com", "user@example.org", subject
    msg.set_content(f"Body of {subject}\n")
    return msg.as_bytes()


def send(port: int, subject: str) -> tuple[int, str]:
    """One message in its own session; the DATA reply's (code, text)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail("app@example.com")
        client.rcpt("user@example.org")
        try:
            code, text = client.data(message(subject))
        except smtplib.SMTPDataError as exc:
            code, text = exc.smtp_code, exc.smtp_error
        return code, text.decode()


def spooled(reply: tuple[int, str]) -> bool:
    return reply[0] == 250 and reply[1].startswith(SPOOLED)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def subjects(standin: StandIn) -> list[str]:
    return [str(r.json["subject"]) for r in standin.accepted if isinstance(r.json, dict)]


def spool_rows(cluster: PgCluster, url: str) -> int:
    return int(cluster.psql("SELECT count(*) FROM relay_spool", url.rsplit("/", 1)[1]))


def test_database_outage_mid_run(cluster: PgCluster, standin: StandIn) -> None:
    url = cluster.database()
    settings = settings_for(standin, relay_spool_url=url, relay_metrics_port=0,
                            relay_spool_retry_min=1.0)  # fmt: skip
    with running_relay(settings) as relay:
        standin.script(Scripted(503))
        assert spooled(send(relay.port, "spooled before"))
        cluster.stop()
        try:
            assert _sent_now(send(relay.port, "api up"), standin, "api up")
            _degraded_but_ready(relay)  # AhaSend works: mail goes straight on
            standin.script(Scripted(503))
            started = time.monotonic()
            assert send(relay.port, "needs the spool") == SPOOL_DOWN
            assert time.monotonic() - started < 15.0  # the pool's timeout, not the client's
            _degraded_but_ready(relay)  # one 503 is no outage
            _open_the_breaker(relay, standin)
            _degraded_but_ready(relay)  # AhaSend answers: mail is sent past the breaker
            assert _sent_now(send(relay.port, "past the breaker"), standin, "past the breaker")
        finally:
            cluster.start()
        standin.script(Scripted(503))
        wait_until(lambda: spooled(send(relay.port, "spooled after")), timeout=60)
        wait_until(lambda: {"spooled before", "spooled after"} <= set(subjects(standin)), 60)
        listing = run_cli("queue", "list", "--spool-url", url)  # while the relay runs
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.splitlines()[-1] == "-- 0 queued, 0 dead, 2 delivered"
    assert "needs the spool" not in subjects(standin)
    assert spool_rows(cluster, url) == 2  # nothing stored for the 451s


def _sent_now(reply: tuple[int, str], standin: StandIn, subject: str) -> bool:
    """``reply`` is the ``250`` of a message the API took in the transaction (not spooled)."""
    [record] = [r for r in standin.accepted if r.json["subject"] == subject]
    return reply == (250, f"2.0.0 Queued: {record.message_ids[0]}")


def _degraded_but_ready(relay: RunningRelay) -> None:
    status, body, _ = get(admin_port(relay), "/readyz")
    assert status == 200
    assert "spool unavailable (degraded)" in body
    _, metrics, _ = get(admin_port(relay), "/metrics")
    assert value(metrics, "ahasend_relay_spool_available") == 0


def _open_the_breaker(relay: RunningRelay, standin: StandIn) -> None:
    """Three 503s in a row (each a 451: the spool is down) open the circuit breaker."""
    standin.script(Scripted(503), Scripted(503), Scripted(503))
    for n in range(3):
        assert send(relay.port, f"breaker {n}") == SPOOL_DOWN
    _, metrics, _ = get(admin_port(relay), "/metrics")
    assert value(metrics, "ahasend_relay_circuit_open") == 1


def test_database_down_at_start_then_up_without_restart(
    cluster: PgCluster, standin: StandIn, tmp_path: Path
) -> None:
    url = cluster.database()
    cluster.stop()
    try:
        with relay_process(tmp_path, **standin_env(
            standin, RELAY_SPOOL_URL=url, RELAY_METRICS_PORT="0", RELAY_SPOOL_RETRY_MIN="1",
        )) as relay:  # fmt: skip
            admin = relay.wait_admin()
            wait_for_event(relay.log, "spool_unavailable", relay.proc)
            status, body, _ = get(admin, "/readyz")
            assert (status, "spool unavailable (degraded)" in body) == (200, True)
            assert send(relay.port, "api up while down")[0] == 250
            cluster.start()
            standin.script(Scripted(503))
            wait_until(lambda: send(relay.port, "spooled")[0] == 250, timeout=60)
            wait_until(lambda: "spooled" in subjects(standin), timeout=60)
            wait_for_event(relay.log, "spool_recovered", relay.proc)
            assert relay.stop() == 0
            events = [e["event"] for e in relay.events()]
    finally:
        if not _running(cluster):
            cluster.start()
    assert "spool_migrated" in events
    log = relay.log.read_text()
    assert PASSWORD not in log
    assert url.replace(PASSWORD, "***") in log


def _running(cluster: PgCluster) -> bool:
    try:
        cluster.psql("SELECT 1")
    except Exception:
        return False
    return True
