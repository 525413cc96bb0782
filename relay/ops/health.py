"""Health, from both sides: the readiness rule the relay applies to itself (``/readyz``),
and the probe that ``ahasend-relay healthcheck`` runs against a running relay.

Readiness means "can accept mail now", judged from what the relay already knows (the
last upstream request, the circuit breaker, the spool's last stats read; probing
AhaSend on every check would be a load and a failure amplifier):

- not listening: not ready. Dry run: listening is enough.
- a refused key (AhaSend answered 401 to the last request, the start-up account read
  included), a wrong account (404) or an egress proxy refusing the relay's credentials
  (407): not ready in every mode, since every message would
  only be deferred. The body names the reason. With tenants, each route (tenant, or the
  global key's) counts on its own: the relay is unready only when every route that has
  been used is refused; otherwise it stays ready and the body names the refused tenants.
- an outage (the last request refused, reset or timed out, or the circuit breaker open:
  consecutive failures, 5xx included): with a healthy spool still ready, since the spool
  takes the mail and delivers it later (its depth and age are metrics and alerts);
  without a spool, or with one that does not answer, not ready. One 5xx with the breaker
  closed is no outage: readiness does not flap with AhaSend's occasional errors, and
  replicas behind a balancer are not all taken out at once when only some requests fail.
- a spool that cannot be read (the shared database down) while AhaSend answers (even
  with the breaker open: mail is then sent past it) leaves the relay ready, the body
  saying ``spool unavailable (degraded)``; unready when AhaSend is unreachable too.
- anything else is ready, a 403 included: it is usually about one message (an
  unverified sender domain, a key without a scope), not the relay.

The probe: an SMTP greeting (``220``) from the relay's port, then, when the metrics
port is configured, ``200`` from ``/healthz``. Both with a short timeout.
"""

from __future__ import annotations

import http.client
import smtplib
from dataclasses import dataclass
from typing import Final

from relay.ops.metrics import DEFAULT_TENANT, RelayMetrics

__all__ = ["REFUSED", "Probe", "connect_host", "probe", "readiness"]

GREETING = 220


def readiness(listening: bool, dry_run: bool, metrics: RelayMetrics) -> tuple[bool, str]:
    """(ready, reason) for ``/readyz``; see the module docstring for the rule."""
    if not listening:
        return False, "not ready: SMTP listener is not accepting connections"
    if dry_run:
        return True, "ready: listening (dry run)"
    refused = _refusals(metrics.upstream_last_by_tenant)
    if refused and len(refused) == len(metrics.upstream_last_by_tenant):
        return False, "not ready: " + "; ".join(refused)
    outage = _outage(metrics)
    if outage is not None:
        ready, reason = _through_outage(outage, metrics)
    elif metrics.upstream_last is None:
        ready, reason = True, f"ready: listening, AhaSend not contacted yet{_degraded(metrics)}"
    else:
        ready, reason = True, f"ready: listening, {_answered(metrics)}{_degraded(metrics)}"
    return ready, "; ".join([reason, *refused])


def _refusals(last_by_tenant: dict[str, str]) -> list[str]:
    """The reason of each route whose key or account AhaSend refused at its last request
    (named after its tenant when there are tenants)."""
    named = len(last_by_tenant) > 1 or DEFAULT_TENANT not in last_by_tenant
    return [
        f"tenant {tenant!r}: {REFUSED[status]}" if named else REFUSED[status]
        for tenant, status in last_by_tenant.items()
        if status in REFUSED
    ]


def _through_outage(outage: str, metrics: RelayMetrics) -> tuple[bool, str]:
    """Ready during ``outage`` when a healthy spool takes the mail; with a spool that is
    down, also while AhaSend still answers (messages are then sent past the open breaker,
    ``relay.delivery.dispatch``): unready when neither works."""
    if metrics.spool_healthy:
        return True, f"ready: listening, {outage}, spool healthy"
    if metrics.spool_healthy is None:
        return False, f"not ready: {outage}"
    if metrics.upstream_last not in _UNREACHABLE:
        return True, f"ready: listening, {outage}, tried anyway: spool unavailable (degraded)"
    return False, f"not ready: {outage}, spool unavailable"


REFUSED: Final = {
    "401": "AhaSend refused the API key (401 at the last request): check AHASEND_API_KEY",
    "404": "AhaSend does not know the account (404 at the last request):"
    " check AHASEND_ACCOUNT_ID and AHASEND_API_BASE_URL",
    "407": "the egress proxy refused the relay's credentials (407 at the last request):"
    " check AHASEND_API_PROXY or HTTPS_PROXY",
}
"""Upstream statuses that make the relay unready in every mode, with the reason shown."""


def _outage(metrics: RelayMetrics) -> str | None:
    """What shows AhaSend is unavailable now, or None."""
    if metrics.circuit_is_open:
        return "AhaSend circuit open"
    if metrics.upstream_last in _UNREACHABLE:
        return "AhaSend unreachable at the last request"
    return None


_UNREACHABLE = ("unreachable", "timeout")


def _answered(metrics: RelayMetrics) -> str:
    """How AhaSend answered, for a ready relay: a 5xx with the breaker closed is named but
    is no outage (the next request may pass; three in a row open the breaker)."""
    last = metrics.upstream_last or ""
    if last.isdigit() and int(last) >= 500:
        return f"AhaSend answered {last} at the last request (circuit closed)"
    return "AhaSend reachable"


def _degraded(metrics: RelayMetrics) -> str:
    """What a ready relay adds when its spool does not answer (mail goes straight on)."""
    return ", spool unavailable (degraded)" if metrics.spool_healthy is False else ""


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
