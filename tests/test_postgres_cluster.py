"""The private PostgreSQL cluster the shared-spool tests stand on really behaves like one."""

from __future__ import annotations

import subprocess

from tests.postgres import PgCluster


def tcp_query(cluster: PgCluster, url: str, sql: str) -> subprocess.CompletedProcess[str]:
    """Run ``sql`` over TCP with the URL's credentials (what the relay does)."""
    return subprocess.run(
        [str(cluster.bin / "psql"), url, "-XAtq", "-c", sql],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_a_fresh_database_answers_over_tcp_with_the_password(pg_cluster: PgCluster) -> None:
    url = pg_cluster.database()
    done = tcp_query(pg_cluster, url, "SELECT current_user, current_database()")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"relay|{url.rsplit('/', 1)[1]}"


def test_a_wrong_password_is_refused(pg_cluster: PgCluster) -> None:
    url = pg_cluster.database()
    done = tcp_query(pg_cluster, url.replace("pg-Secret-7f3a", "wrong"), "SELECT 1")
    assert done.returncode != 0
    assert "password authentication failed" in done.stderr


def test_stop_and_start_keep_the_port_and_the_data(pg_cluster: PgCluster) -> None:
    url = pg_cluster.database()
    assert (
        tcp_query(
            pg_cluster, url, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)"
        ).returncode
        == 0
    )
    pg_cluster.stop()
    assert tcp_query(pg_cluster, url, "SELECT 1").returncode != 0
    pg_cluster.start()
    assert tcp_query(pg_cluster, url, "SELECT n FROM kept").stdout.strip() == "7"
