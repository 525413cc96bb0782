"""``check-config --online`` with RELAY_TENANTS_FILE: every tenant's key and account proven.

One line per tenant (stdout when it is OK, stderr when not), in the file's order; the exit
status is the worst one: 0 all OK, 69 AhaSend unreachable or failing, 78 a key refused or
an account unknown to its key. A key without the ``accounts:read`` scope is OK (sending
needs only ``messages:send``), and its line says the account was not verified.
"""

from __future__ import annotations

import asyncio
import sys

from relay.assembly import load_tenants_of, tenant_sender
from relay.config import Settings
from relay.delivery.api import AhaSendClient
from relay.delivery.tenants import Tenant
from relay.errors import RelayError, RelayMisconfigured, UpstreamForbidden
from relay.ops.metrics import RelayMetrics
from relay.smtp.guard import Guard

__all__ = ["check_tenants_online"]

EX_OK, EX_UNAVAILABLE, EX_CONFIG = 0, 69, 78


def check_tenants_online(settings: Settings) -> int:
    """Check each tenant in turn; print its line; return the worst exit status."""
    tenants = load_tenants_of(settings, Guard.from_settings(settings)).tenants
    return asyncio.run(_check_all(settings, tenants))


async def _check_all(settings: Settings, tenants: tuple[Tenant, ...]) -> int:
    worst = EX_OK
    metrics = RelayMetrics()
    for tenant in tenants:
        client = tenant_sender(settings, tenant, metrics)
        assert isinstance(client, AhaSendClient)
        try:
            status, line = await _check(client, tenant)
        finally:
            await client.aclose()
        print(f"tenant {tenant.name}: {line}", file=sys.stdout if status == EX_OK else sys.stderr)
        worst = max(worst, status)
    return worst


async def _check(client: AhaSendClient, tenant: Tenant) -> tuple[int, str]:
    """(exit status, what to print) for one tenant: ping, then the account read."""
    step = "key"
    try:
        await client.ping()
        step = "account"
        account = await client.get_account()
    except UpstreamForbidden:
        return EX_OK, (f"API key accepted; no accounts:read scope, account "
                       f"{tenant.account_id} not verified")  # fmt: skip
    except RelayMisconfigured as exc:
        what = "API key refused" if step == "key" else (
            f"account {tenant.account_id} unknown to this key")  # fmt: skip
        return EX_CONFIG, f"{what} ({exc.detail})"
    except RelayError as exc:
        return EX_UNAVAILABLE, f"{type(exc).__name__}: {exc.detail}"
    return EX_OK, f"API key accepted, account {tenant.account_id} ({account.get('name') or '?'}) OK"
