"""Health, from both sides: the readiness rule the relay applies to itself (``/readyz``),
and the probe that ``ahasend-relay healthcheck`` runs against a running relay.

Readiness: the relay is ready when it listens and mail it accepts can go somewhere:
AhaSend answered the last request (any HTTP status counts as reachable; nothing sent
yet counts as reachable too, since probing AhaSend on every scrape would be a load and
a failure amplifier), or the spool reports itself healthy and will hold mail until
AhaSend is back. A spool that cannot be read (the shared database down) while AhaSend is
reachable leaves the relay ready, and the body says ``spool unavailable (degraded)``.
In dry-run mode nothing goes upstream, so listening is enough.

The probe: an SMTP greeting (``220``) from the relay's port, then, when the metrics
port is configured, ``200`` from ``/healthz``. Both with a short timeout.
"""

from __future__ import annotations

import http.client
import smtplib
from dataclasses import dataclass

from relay.ops.metrics import RelayMetrics

__all__ = ["Probe", "connect_host", "probe", "readiness"]

GREETING = 220


def readiness(listening: bool, dry_run: bool, metrics: RelayMetrics) -> tuple[bool, str]:
    """(ready, reason) for ``/readyz``."""
    if not listening:
        return False, "not ready: SMTP listener is not accepting connections"
    if dry_run:
        return True, "ready: listening (dry run)"
    degraded = ", spool unavailable (degraded)" if metrics.spool_healthy is False else ""
    if metrics.upstream_reachable is None:
        return True, f"ready: listening, AhaSend not contacted yet{degraded}"
    if metrics.upstream_reachable:
        return True, f"ready: listening, AhaSend reachable{degraded}"
    if metrics.spool_healthy:
        return True, "ready: listening, AhaSend unreachable, spool healthy"
    return False, "not ready: AhaSend unreachable at the last request"


@dataclass(frozen=True, slots=True)
class Probe:
    """The outcome of one healthcheck: ``ok`` and one line per check made."""

    ok: bool
    lines: tuple[str, ...]


def probe(
    smtp_host: str, smtp_port: int, metrics_port: int | None, metrics_host: str, timeout: float
) -> Probe:
    """Check the SMTP greeting, then ``/healthz`` when ``metrics_port`` is given."""
    ok, line = _probe_smtp(smtp_host, smtp_port, timeout)
    lines = [line]
    if ok and metrics_port is not None:
        ok, line = _probe_http(metrics_host, metrics_port, timeout)
        lines.append(line)
    return Probe(ok, tuple(lines))


def _probe_smtp(host: str, port: int, timeout: float) -> tuple[bool, str]:
    where = f"smtp {host}:{port}"
    try:
        with smtplib.SMTP(timeout=timeout) as client:
            code, banner = client.connect(host, port)
            client.quit()
    except (OSError, smtplib.SMTPException) as exc:
        return False, f"{where}: {_why(exc)}"
    text = banner.decode("utf-8", "replace")
    return code == GREETING, f"{where}: {code} {text}"


def _probe_http(host: str, port: int, timeout: float) -> tuple[bool, str]:
    where = f"http://{host}:{port}/healthz"
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{where}: {_why(exc)}"
    finally:
        connection.close()
    return status == http.HTTPStatus.OK, f"{where}: {status}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def connect_host(listen_host: str) -> str:
    """Where to connect to reach a listener bound to ``listen_host`` on this machine."""
    if listen_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if listen_host == "::":
        return "::1"
    return listen_host
