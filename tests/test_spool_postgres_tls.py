"""The shared spool over TLS: a real relay process, a real cluster with ``ssl=on``.

The cluster (``tests.postgres``, ``ServerTls``) has a certificate for ``db.test`` only,
signed by a CA made here (trustme), and takes host connections on ``hostssl`` lines only.
The relay's libpq URL says ``sslmode=verify-full`` with that CA as ``sslrootcert`` and
reaches ``db.test`` at ``hostaddr=127.0.0.1``:

- a message spooled over that connection is stored and delivered, the shared pacing bucket
  is taken over it too, the queue tools work over it, and the server confirms that every
  connection of the relay's role was TLS (``pg_stat_ssl`` while it runs, its
  ``log_connections`` lines after);
- a CA that did not sign the server's certificate, a host name the certificate does not
  name, and ``sslmode=require`` against a server without TLS are each what any
  unreachable database is to the relay (README "Shared spool"): it serves on, logs
  ``spool_unavailable`` with libpq's reason, and stores nothing;
- the role's password, as given and as percent-encoded in the URL, is in no log line.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme

from tests.ops_support import RelayProcess, relay_process, run_cli, standin_env, wait_for_event
from tests.postgres import PgCluster, ServerTls, running_cluster
from tests.standin import Scripted, StandIn
from tests.test_e2e_shared_spool import send, subjects, wait_until

pytestmark = pytest.mark.e2e

SERVER_NAME = "db.test"
ROLE = "tls_relay"
ROLE_PASSWORD = "tls/Pa:ss@w%rd-3c9e"  # percent-encoded in the URL: not the same text
ENCODED_PASSWORD = quote(ROLE_PASSWORD, safe="")


@dataclass(frozen=True)
class Pki:
    """The CA that signed the server's certificate, and one that did not (PEM files)."""

    ca: Path
    other_ca: Path
    server: ServerTls


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pg-pki")
    ca, other = trustme.CA(), trustme.CA()
    issued = ca.issue_cert(SERVER_NAME)
    paths = {name: folder / name for name in ("ca.pem", "other.pem", "db.pem", "db.key")}
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    other.cert_pem.write_to_path(str(paths["other.pem"]))
    issued.cert_chain_pems[0].write_to_path(str(paths["db.pem"]))
    issued.private_key_pem.write_to_path(str(paths["db.key"]))
    return Pki(paths["ca.pem"], paths["other.pem"], ServerTls(paths["db.pem"], paths["db.key"]))


@pytest.fixture(scope="module")
def tls_cluster(pki: Pki) -> Iterator[PgCluster]:
    """A cluster that speaks TLS only, with the role ``tls_relay`` (a password that needs
    percent-encoding)."""
    with running_cluster(pki.server) as cluster:
        cluster.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
        yield cluster


def database(cluster: PgCluster, owner: str | None = ROLE) -> str:
    """A fresh database (owned by ``owner`` unless None); its name."""
    name = cluster.database().rsplit("/", 1)[1]
    if owner is not None:
        cluster.psql(f'ALTER DATABASE "{name}" OWNER TO {owner}')
    return name


def tls_url(cluster: PgCluster, name: str, *, host: str = SERVER_NAME, **params: str) -> str:
    """``tls_relay``'s URL of ``name`` at ``host`` (reached at 127.0.0.1) with ``params``."""
    query = "&".join(f"{key}={value}" for key, value in params.items())
    where = f"{host}:{cluster.port}/{name}?hostaddr=127.0.0.1&{query}"
    return f"postgresql://{ROLE}:{ENCODED_PASSWORD}@{where}"


@contextmanager
def started(tmp_path: Path, standin: StandIn, url: str) -> Iterator[RelayProcess]:
    """A relay process on the spool at ``url``: debug logs, one API attempt per message."""
    env = standin_env(standin, RELAY_SPOOL_URL=url, RELAY_SPOOL_RETRY_MIN="1",
                      RELAY_RETRY_DEADLINE="0", RELAY_LOG_LEVEL="debug")  # fmt: skip
    with relay_process(tmp_path, **env) as relay:
        yield relay


def assert_no_password(log: str) -> None:
    assert ROLE_PASSWORD not in log
    assert ENCODED_PASSWORD not in log


def test_a_cluster_with_tls_required_refuses_a_connection_without_it(
    tls_cluster: PgCluster, pki: Pki
) -> None:
    name = database(tls_cluster)
    for sslmode, refused in (("disable", True), ("verify-full", False)):
        url = tls_url(tls_cluster, name, sslmode=sslmode, sslrootcert=str(pki.ca))
        done = subprocess.run(
            [str(tls_cluster.bin / "psql"), url, "-XAtqc", "SELECT current_user"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert (done.returncode != 0, done.stdout) == (refused, "" if refused else f"{ROLE}\n")
        if refused:
            assert done.stderr.rstrip().endswith(
                f'no pg_hba.conf entry for host "127.0.0.1", user "{ROLE}", database "{name}", '
                "no encryption"
            )


def test_verify_full_spools_delivers_and_paces_over_tls(
    tls_cluster: PgCluster, pki: Pki, standin: StandIn, tmp_path: Path
) -> None:
    name = database(tls_cluster)
    url = tls_url(tls_cluster, name, sslmode="verify-full", sslrootcert=str(pki.ca))
    with started(tmp_path, standin, url) as relay:
        wait_for_event(relay.log, "spool_migrated", relay.proc)
        standin.script(Scripted(503))
        assert send(relay.port, "over tls") == (250, "2.0.0 Queued for delivery: spool id 1")
        wait_until(lambda: "over tls" in subjects(standin))
        listing = run_cli("queue", "list", "--spool-url", url)
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.splitlines()[-1] == "-- 0 queued, 0 dead, 1 delivered"
        live = tls_cluster.psql(
            "SELECT count(*), bool_and(s.ssl), min(s.version) FROM pg_stat_ssl s "
            f"JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{name}'"
        )
        assert relay.stop() == 0
    count, all_tls, version = live.split("|")
    assert int(count) >= 2, live  # the spool's pool and the pacing bucket's connection
    assert (all_tls, version) == ("t", "TLSv1.3")
    authorized = [line for line in tls_cluster.server_log().splitlines()
                  if f"connection authorized: user={ROLE} database={name}" in line]  # fmt: skip
    assert len(authorized) >= 3  # the relay's two, the queue tool's
    assert all(" SSL enabled (protocol=TLSv1.3" in line for line in authorized), authorized
    bucket = tls_cluster.psql("SELECT account FROM relay_api_bucket", name)
    assert bucket == standin.account_id.lower()
    log = relay.log.read_text()
    assert_no_password(log)
    assert url.replace(ENCODED_PASSWORD, "***") in log


@dataclass(frozen=True)
class Refusal:
    """A TLS connection that must not be made, and libpq's reason for refusing it."""

    tls_server: bool
    url_params: dict[str, str]
    host: str
    reason: str


REFUSALS = {
    "wrong-ca": Refusal(True, {"sslmode": "verify-full", "sslrootcert": "OTHER"}, SERVER_NAME,
                        "SSL error: certificate verify failed"),
    "wrong-host-name": Refusal(True, {"sslmode": "verify-full", "sslrootcert": "CA"},
                               "127.0.0.1",
                               f'server certificate for "{SERVER_NAME}" does not match host '
                               'name "127.0.0.1"'),
    "require-without-tls": Refusal(False, {"sslmode": "require"}, SERVER_NAME,
                                   "server does not support SSL, but SSL was required"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_server_that_fails_the_tls_check_is_an_unavailable_spool(
    case: str, tls_cluster: PgCluster, pg_cluster: PgCluster, pki: Pki, standin: StandIn,
    tmp_path: Path,
) -> None:  # fmt: skip
    refusal = REFUSALS[case]
    cluster = tls_cluster if refusal.tls_server else pg_cluster
    name = database(cluster, ROLE if refusal.tls_server else None)
    files = {"CA": str(pki.ca), "OTHER": str(pki.other_ca)}
    params = {key: files.get(value, value) for key, value in refusal.url_params.items()}
    url = tls_url(cluster, name, host=refusal.host, **params)
    reason = (
        f'connection failed: connection to server at "127.0.0.1", port {cluster.port} '
        f"failed: {refusal.reason}"
    )
    with started(tmp_path, standin, url) as relay:
        event = wait_for_event(relay.log, "spool_unavailable", relay.proc)
        assert (event["spool"], event["error"]) == (url.replace(ENCODED_PASSWORD, "***"), reason)
        assert relay.proc.poll() is None  # serving on: the database may be fixed meanwhile
        pool_said = {e["event"] for e in relay.events() if e.get("logger_name") == "psycopg.pool"}
    assert cluster.psql("SELECT to_regclass('relay_spool') IS NULL", name) == "t"
    assert f"error connecting in 'relay-spool': {reason}" in pool_said  # the pool's own line
    assert_no_password(relay.log.read_text())
