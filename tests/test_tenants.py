"""Multi-tenant routing (RELAY_TENANTS_FILE): the file's rules, and each app's key and account.

End to end: a real relay with several tenants in front of the stand-in, which accepts each
tenant's scoped key for that tenant's account only; each message must arrive with its
tenant's ``Authorization`` and account path.
"""

from __future__ import annotations

import smtplib
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import structlog.testing

from relay.delivery.tenant_router import TenantRouter
from relay.delivery.tenants import Tenants, load_tenants
from relay.errors import ConfigError
from tests.harness import running_relay, settings_for
from tests.metrics_support import scrape
from tests.ops_support import run_cli, standin_env
from tests.security_support import Certs
from tests.standin import Scripted, StandIn
from tests.test_metrics import parse
from tests.test_metrics import value as sample

PASSWORD = "tenant-pa55word"
APPS = ("crm", "billing", "scanner")


@dataclass(frozen=True)
class App:
    name: str
    key: str
    account: str


def apps(n: int) -> list[App]:
    return [App(name, f"aha-sk-{name}-{uuid.uuid4().hex}", str(uuid.uuid4())) for name in APPS[:n]]


def granted(standin: StandIn, n: int) -> list[App]:
    """``apps(n)``, each key granted its account at the stand-in."""
    made = apps(n)
    for app in made:
        standin.grant(app.key, app.account)
    return made


def tenants_file(tmp_path: Path, *tenants: App) -> Path:
    """A tenants file with one plain table per app."""
    return write_tenants(tmp_path, [tenant_table(tmp_path, app) for app in tenants])


def write_users(path: Path, names: tuple[str, ...] = (*APPS, "stranger")) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text("".join(f"{name}:{hashed}\n" for name in names), encoding="utf-8")
    return path


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def tenant_table(tmp_path: Path, app: App, **fields: Any) -> str:
    key_file = tmp_path / f"{app.name}.key"
    key_file.write_text(app.key + "\n", encoding="utf-8")
    values: dict[str, Any] = {
        "name": app.name, "users": [app.name], "account_id": app.account,
        "api_key_file": str(key_file),
    } | fields  # fmt: skip
    lines = ["[[tenant]]"]
    for key, value in values.items():
        if isinstance(value, list):
            lines.append(f"{key} = {toml_list(value)}")
        elif isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        else:
            lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


def write_tenants(tmp_path: Path, tables: list[str]) -> Path:
    path = tmp_path / "tenants.toml"
    path.write_text("\n".join(tables), encoding="utf-8")
    return path


def send(port: int, user: str | None, sender: str = "app@example.com") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        if user is not None:
            client.login(user, PASSWORD)
        client.mail(sender)
        client.rcpt("ann@example.net")
        return client.data(
            f"From: {sender}\r\nTo: ann@example.net\r\nSubject: hi\r\n\r\nhello\r\n".encode()
        )


def relay_settings(standin: StandIn, certs: Certs, tmp_path: Path, tenants: Path, **more: Any):
    return settings_for(
        standin,
        relay_tls_cert=certs.cert,
        relay_tls_key=certs.key,
        relay_auth_file=write_users(tmp_path / "users"),
        relay_auth_allow_plaintext=True,
        relay_auth_failure_delay=0.0,
        relay_tenants_file=tenants,
        **more,
    )


# -- the file's rules ------------------------------------------------------------------


def load(tmp_path: Path, tables: list[str], users: tuple[str, ...] = APPS) -> Tenants:
    return load_tenants(write_tenants(tmp_path, tables), frozenset(users), lambda name: None)


def test_loads_every_field(tmp_path: Path) -> None:
    [crm] = apps(1)
    table = tenant_table(
        tmp_path, crm, networks=["10.1.0.0/16"], sender_domains=["CRM.example"],
        recipients=["*@Example.org"], tags=["crm"], sandbox=True,
    )  # fmt: skip
    [tenant] = load(tmp_path, [table]).tenants
    assert (tenant.name, tenant.account_id, tenant.api_key) == (crm.name, crm.account, crm.key)
    assert tenant.users == {"crm"}
    assert [str(n) for n in tenant.networks] == ["10.1.0.0/16"]
    assert tenant.sender_domains == {"crm.example"}
    assert tenant.recipients == ("*@example.org",)
    assert (tenant.tags, tenant.sandbox) == (("crm",), True)
    assert crm.key not in repr(tenant)


def test_key_from_environment(tmp_path: Path) -> None:
    [crm] = apps(1)
    table = f'[[tenant]]\nname = "crm"\naccount_id = "{crm.account}"\napi_key_env = "CRM_KEY"\n'
    path = write_tenants(tmp_path, [table])
    [tenant] = load_tenants(path, None, {"CRM_KEY": crm.key}.get).tenants
    assert tenant.api_key == crm.key


def broken(tmp_path: Path, app: App) -> dict[str, tuple[list[str], str]]:
    """Each broken file, and the exact error it must give."""
    good = tenant_table(tmp_path, app)
    where = "RELAY_TENANTS_FILE tenant 'crm'"
    missing = tmp_path / "absent.key"
    return {
        "user in two tenants": (
            [good, good.replace('"crm"', '"crm2"', 1).replace('["crm2"]', '["crm"]')],
            "RELAY_TENANTS_FILE tenant 'crm2': users: 'crm' is already in tenant 'crm'",
        ),
        "unknown user": (
            [tenant_table(tmp_path, app, users=["ghost"])],
            f"{where}: users: unknown AUTH user 'ghost' (not in RELAY_AUTH_FILE)",
        ),
        "missing key file": (
            [tenant_table(tmp_path, app).replace(str(tmp_path / "crm.key"), str(missing))],
            f"{where}: api_key_file: cannot read {missing}: FileNotFoundError",
        ),
        "bad account id": (
            [tenant_table(tmp_path, app, account_id="6f2b1c3e")],
            f"{where}: account_id: not a UUID: '6f2b1c3e'",
        ),
        "bad name": (
            [tenant_table(tmp_path, app, name="Billing App")],
            "RELAY_TENANTS_FILE tenant #1: name: expected [a-z0-9-]+, got 'Billing App'",
        ),
        "duplicate name": (
            [good, good.replace('["crm"]', "[]")],
            f"{where}: name: used twice",
        ),
        "unknown field": ([good + 'colour = "red"\n'], f"{where}: unknown field 'colour'"),
        "bad network": (
            [tenant_table(tmp_path, app, networks=["10.1.0.0/33"])],
            f"{where}: networks: not a network: '10.1.0.0/33'",
        ),
        "bad recipient": (
            [tenant_table(tmp_path, app, recipients=["example.org"])],
            f"{where}: recipients: expected local@domain (* allowed): 'example.org'",
        ),
        "sandbox not a bool": (
            [good + 'sandbox = "yes"\n'],
            f"{where}: sandbox: expected true or false, got 'yes'",
        ),
        "no key": (
            [good.replace(f'api_key_file = "{tmp_path / "crm.key"}"\n', "")],
            f"{where}: api_key_file: give exactly one of api_key_file or api_key_env",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["user in two tenants", "unknown user", "missing key file", "bad account id", "bad name",
     "duplicate name", "unknown field", "bad network", "bad recipient", "sandbox not a bool",
     "no key"],
)  # fmt: skip
def test_broken_file_names_tenant_and_field(tmp_path: Path, case: str) -> None:
    [crm] = apps(1)
    tables, expected = broken(tmp_path, crm)[case]
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, tables)
    assert str(caught.value) == expected
    assert crm.key not in str(caught.value)


def test_resolution_user_beats_network_most_specific_network_wins(tmp_path: Path) -> None:
    crm, billing, scanner = apps(3)
    tenants = load(
        tmp_path,
        [
            tenant_table(tmp_path, crm, networks=["10.0.0.0/8"]),
            tenant_table(tmp_path, billing, networks=["10.1.0.0/16"]),
            tenant_table(tmp_path, scanner, users=[], networks=["10.1.2.0/24", "::1/128"]),
        ],
    )

    def name(user: str | None, client: str) -> str | None:
        tenant = tenants.resolve(user, client)
        return tenant.name if tenant is not None else None

    assert name("crm", "10.1.2.3") == "crm"
    assert name(None, "10.1.2.3") == "scanner"
    assert name(None, "10.1.9.9") == "billing"
    assert name(None, "::ffff:10.9.9.9") == "crm"
    assert name("stranger", "10.9.9.9") == "crm"
    assert name(None, "::1") == "scanner"
    assert name(None, "192.0.2.1") is None
    assert name(None, "") is None


def test_start_with_broken_file_exits_78_naming_tenant_and_field(tmp_path: Path) -> None:
    [crm] = apps(1)
    path = write_tenants(tmp_path, [tenant_table(tmp_path, crm, users=[], account_id="nope")])
    result = run_cli("--dry-run", RELAY_TENANTS_FILE=str(path))
    assert result.returncode == 78
    assert (
        "RELAY_TENANTS_FILE tenant 'crm': account_id: not a UUID: 'nope'"
        in result.stderr.strip().splitlines()[-1]
    )
    assert crm.key not in result.stderr + result.stdout


# -- each app's key and account, end to end ----------------------------------------------

Check = Callable[[list[App]], None]


@pytest.mark.e2e
@pytest.mark.parametrize("count", [2, 3])
def test_each_tenant_sends_with_its_own_key_and_account(
    standin: StandIn, certs: Certs, tmp_path: Path, count: int
) -> None:
    tenants = apps(count)
    for app in tenants:
        standin.grant(app.key, app.account)
    path = write_tenants(tmp_path, [tenant_table(tmp_path, app) for app in tenants])
    with running_relay(relay_settings(standin, certs, tmp_path, path)) as relay:
        for app in [*tenants, *reversed(tenants)]:
            code, _ = send(relay.port, app.name)
            assert code == 250
        standin.wait_for(2 * count)
    expected = [(f"Bearer {a.key}", f"/v2/accounts/{a.account}/messages/conversation")
                for a in [*tenants, *reversed(tenants)]]  # fmt: skip
    assert [(r.headers["authorization"], r.path) for r in standin.requests] == expected
    assert all(r.accepted and not r.problems for r in standin.requests)


@pytest.mark.e2e
def test_user_of_no_tenant_takes_the_global_key(
    standin: StandIn, certs: Certs, tmp_path: Path
) -> None:
    [crm] = apps(1)
    standin.grant(crm.key, crm.account)
    path = write_tenants(tmp_path, [tenant_table(tmp_path, crm)])
    with running_relay(relay_settings(standin, certs, tmp_path, path)) as relay:
        assert send(relay.port, "stranger")[0] == 250
        assert send(relay.port, "crm")[0] == 250
    assert [(r.headers["authorization"], r.path.split("/")[3]) for r in standin.requests] == [
        (f"Bearer {standin.api_key}", standin.account_id),
        (f"Bearer {crm.key}", crm.account),
    ]


@pytest.mark.e2e
def test_no_tenant_and_no_global_key_is_refused_before_any_api_call(
    standin: StandIn, certs: Certs, tmp_path: Path
) -> None:
    [crm] = apps(1)
    standin.grant(crm.key, crm.account)
    path = write_tenants(tmp_path, [tenant_table(tmp_path, crm)])
    settings = relay_settings(
        standin, certs, tmp_path, path, ahasend_api_key=None, ahasend_account_id=None
    )
    with running_relay(settings) as relay:
        assert send(relay.port, "stranger") == (
            550, b"5.7.1 Access denied: no tenant for this client"
        )  # fmt: skip
        assert standin.requests == []
        assert send(relay.port, "crm")[0] == 250
    [request] = standin.requests
    assert request.headers["authorization"] == f"Bearer {crm.key}"


@pytest.mark.e2e
def test_network_tenant_without_auth_and_user_beats_network(
    standin: StandIn, tmp_path: Path
) -> None:
    crm, scanner = granted(standin, 2)
    path = write_tenants(
        tmp_path,
        [
            tenant_table(tmp_path, scanner, users=[], networks=["127.0.0.0/8"]),
            tenant_table(tmp_path, crm, users=[], networks=["127.0.0.1/32"]),
        ],
    )
    settings = settings_for(standin, relay_tenants_file=path, ahasend_api_key=None,
                            ahasend_account_id=None)  # fmt: skip
    with running_relay(settings) as relay:
        assert send(relay.port, None)[0] == 250
    [request] = standin.requests
    assert request.headers["authorization"] == f"Bearer {crm.key}"
    assert request.path == f"/v2/accounts/{crm.account}/messages/conversation"


# -- each tenant's policy ------------------------------------------------------------------


def policy_relay(standin: StandIn, certs: Certs, tmp_path: Path, **fields: Any) -> Any:
    """A relay with tenants crm (``fields`` added) and billing; their keys granted."""
    crm, billing = granted(standin, 2)
    tables = [tenant_table(tmp_path, crm, **fields),
              tenant_table(tmp_path, billing, sender_domains=["billing.example"])]  # fmt: skip
    settings = relay_settings(standin, certs, tmp_path, write_tenants(tmp_path, tables))
    return running_relay(settings), crm


def login(port: int, user: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.ehlo("client.test")
    client.login(user, PASSWORD)
    return client


@pytest.mark.e2e
def test_recipient_outside_the_tenants_patterns_is_refused_at_rcpt_others_accepted(
    standin: StandIn, certs: Certs, tmp_path: Path
) -> None:
    running, crm = policy_relay(
        standin, certs, tmp_path, recipients=["*@example.org", "ops@partner.example"]
    )
    with running as relay, login(relay.port, "crm") as client:
        assert client.mail("app@example.com") == (250, b"2.1.0 Sender OK")
        assert client.rcpt("ann@example.net") == (550, b"5.7.1 Recipient not allowed")
        assert client.rcpt("Bob@Example.ORG")[0] == 250
        assert client.rcpt("ops@partner.example")[0] == 250
        assert client.rcpt("dev@partner.example") == (550, b"5.7.1 Recipient not allowed")
        message = b"From: app@example.com\r\nTo: Bob@Example.ORG\r\nSubject: s\r\n\r\nhi\r\n"
        assert client.data(message)[0] == 250
    [request] = standin.requests
    assert request.headers["authorization"] == f"Bearer {crm.key}"
    sent_to = [r["email"] for k in ("to", "cc", "bcc") for r in request.json.get(k) or []]
    assert sorted(sent_to) == ["Bob@Example.ORG", "ops@partner.example"]


@pytest.mark.e2e
def test_a_user_cannot_send_as_another_tenants_domain(
    standin: StandIn, certs: Certs, tmp_path: Path
) -> None:
    running, _ = policy_relay(standin, certs, tmp_path, sender_domains=["crm.example"])
    with running as relay:
        with login(relay.port, "crm") as client:
            assert client.mail("bills@billing.example") == (
                550,
                b"5.7.1 Sender address not allowed",
            )
            assert client.mail("sales@crm.example")[0] == 250
            client.rcpt("ann@example.net")
            code, text = client.data(
                b"From: bills@billing.example\r\nTo: ann@example.net\r\nSubject: s\r\n\r\nhi\r\n"
            )
            assert (code, text) == (550, b"5.7.1 Sender address not allowed: billing.example")
        with login(relay.port, "billing") as client:
            assert client.mail("sales@crm.example") == (550, b"5.7.1 Sender address not allowed")
    assert standin.requests == []


@pytest.mark.e2e
def test_tags_are_the_union_and_a_forced_sandbox_beats_the_header(
    standin: StandIn, certs: Certs, tmp_path: Path
) -> None:
    running, _ = policy_relay(standin, certs, tmp_path, tags=["crm", "shared"], sandbox=True)
    with running as relay:
        for user in ("crm", "billing"):
            with login(relay.port, user) as client:
                client.mail("app@example.com" if user == "crm" else "bills@billing.example")
                client.rcpt("ann@example.net")
                code, _ = client.data(
                    b"From: app@example.com\r\nTo: ann@example.net\r\nSubject: s\r\n"
                    b"AhaSend-Tags: own, shared\r\nAhaSend-Sandbox: false\r\n\r\nhi\r\n"
                    if user == "crm"
                    else b"From: bills@billing.example\r\nTo: ann@example.net\r\nSubject: s\r\n"
                    b"AhaSend-Sandbox: false\r\n\r\nhi\r\n"
                )
                assert code == 250
    crm_request, billing_request = standin.requests
    assert crm_request.json["tags"] == ["own", "shared", "crm"]
    assert crm_request.json["sandbox"] is True
    assert billing_request.json.get("sandbox") is False
    assert "tags" not in billing_request.json


@pytest.mark.e2e
def test_a_tenants_network_sends_without_auth_outside_the_allowed_networks(
    standin: StandIn, certs: Certs, tmp_path: Path
) -> None:
    crm, scanner = granted(standin, 2)
    tables = [tenant_table(tmp_path, crm),
              tenant_table(tmp_path, scanner, users=[], networks=["127.0.0.2/32"])]  # fmt: skip
    settings = relay_settings(
        standin, certs, tmp_path, write_tenants(tmp_path, tables),
        relay_allowed_networks="192.0.2.0/24",
    )  # fmt: skip
    message = b"From: app@example.com\r\nTo: ann@example.net\r\nSubject: s\r\n\r\nhi\r\n"
    with running_relay(settings) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.ehlo("client.test")
            assert client.mail("app@example.com") == (530, b"5.7.0 Authentication required")
        source = ("127.0.0.2", 0)
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10, source_address=source) as client:
            client.ehlo("client.test")
            assert client.mail("app@example.com")[0] == 250
            assert client.rcpt("ann@example.net")[0] == 250
            assert client.data(message)[0] == 250
        with login(relay.port, "crm") as client:
            client.sendmail("app@example.com", ["ann@example.net"], message)
    assert [r.headers["authorization"] for r in standin.requests] == [
        f"Bearer {scanner.key}", f"Bearer {crm.key}",
    ]  # fmt: skip


@pytest.mark.e2e
def test_reload_adds_a_tenant_rotates_a_key_and_keeps_the_old_file_when_broken(
    standin: StandIn, certs: Certs, tmp_path: Path
) -> None:
    crm, billing = granted(standin, 2)
    path = write_tenants(tmp_path, [tenant_table(tmp_path, crm)])
    settings = relay_settings(
        standin, certs, tmp_path, path, ahasend_api_key=None, ahasend_account_id=None
    )
    with running_relay(settings) as relay, structlog.testing.capture_logs() as logged:
        assert relay.server is not None
        assert send(relay.port, "billing") == (
            550,
            b"5.7.1 Access denied: no tenant for this client",
        )
        rotated = App(crm.name, f"aha-sk-crm-rotated-{uuid.uuid4().hex}", crm.account)
        standin.grant(rotated.key, rotated.account)
        standin.revoke(crm.key)
        write_tenants(tmp_path, [tenant_table(tmp_path, rotated), tenant_table(tmp_path, billing)])
        relay.reload()
        assert send(relay.port, "billing")[0] == 250
        assert send(relay.port, "crm")[0] == 250
        path.write_text("[[tenant]]\nname = 'crm'\naccount_id = 'broken'\n", encoding="utf-8")
        relay.reload()
        assert send(relay.port, "crm")[0] == 250
    assert [r.headers["authorization"] for r in standin.requests] == [
        f"Bearer {billing.key}", f"Bearer {rotated.key}", f"Bearer {rotated.key}",
    ]  # fmt: skip
    assert all(r.accepted for r in standin.requests)
    events = [e for e in logged if e["event"] in {"tenants_reloaded", "reload_failed"}]
    assert [e["event"] for e in events] == ["tenants_reloaded", "reload_failed"]
    assert events[0]["tenants"] == 2
    assert events[1]["error"] == (
        "RELAY_TENANTS_FILE tenant 'crm': account_id: not a UUID: 'broken'"
    )
    assert not any(rotated.key in str(e) or crm.key in str(e) for e in logged)


@pytest.mark.e2e
def test_spooled_mail_takes_the_key_current_at_delivery_and_a_removed_tenants_dies(
    standin: StandIn, certs: Certs, tmp_path: Path
) -> None:
    crm, billing = granted(standin, 2)
    path = tenants_file(tmp_path, crm, billing)
    settings = relay_settings(
        standin, certs, tmp_path, path, ahasend_api_key=None, ahasend_account_id=None,
        relay_spool_dir=tmp_path / "spool", relay_spool_retry_min=1.0,
        relay_spool_retry_max=1.0,
    )  # fmt: skip
    standin.script(Scripted(503), Scripted(503))
    with running_relay(settings) as relay:
        assert relay.server is not None
        spool = relay.server.spool
        assert spool is not None
        assert send(relay.port, "crm") == (250, b"2.0.0 Queued for delivery: spool id 1")
        assert send(relay.port, "billing") == (250, b"2.0.0 Queued for delivery: spool id 2")
        rotated = App(crm.name, f"aha-sk-crm-rotated-{uuid.uuid4().hex}", crm.account)
        standin.grant(rotated.key, rotated.account)
        standin.revoke(crm.key)
        write_tenants(tmp_path, [tenant_table(tmp_path, rotated)])
        relay.reload()
        standin.wait_for(3, timeout=15)
        deadline = time.monotonic() + 15
        while (entry := relay.call(spool.get(2))).state != "dead":
            assert time.monotonic() < deadline, entry
            time.sleep(0.1)
        delivered = relay.call(spool.get(1))
    assert [r.headers["authorization"] for r in standin.requests] == [
        f"Bearer {crm.key}", f"Bearer {billing.key}", f"Bearer {rotated.key}",
    ]  # fmt: skip
    assert standin.requests[2].accepted
    assert (delivered.state, delivered.route) == ("delivered", "crm")
    assert (entry.route, entry.last_error) == (
        "billing", "tenant 'billing' is no longer in RELAY_TENANTS_FILE",
    )  # fmt: skip
    stored = b"".join(f.read_bytes() for f in (tmp_path / "spool").iterdir())
    assert all(app.key.encode() not in stored for app in (crm, billing, rotated))


@pytest.mark.e2e
def test_tenants_sharing_an_account_share_its_pacing_bucket(
    standin: StandIn, certs: Certs, tmp_path: Path
) -> None:
    crm, billing, scanner = apps(3)
    billing = App(billing.name, billing.key, crm.account)  # a second key on crm's account
    for app in (crm, billing, scanner):
        standin.grant(app.key, app.account)
    path = write_tenants(tmp_path, [tenant_table(tmp_path, app) for app in (crm, billing, scanner)])
    settings = relay_settings(
        standin, certs, tmp_path, path, relay_api_rate=0.25, relay_api_burst=1
    )  # one request per 4 s per account
    with running_relay(settings) as relay, structlog.testing.capture_logs() as logged:
        took = {}
        for app in (crm, scanner, billing):
            started = time.monotonic()
            assert send(relay.port, app.name)[0] == 250
            took[app.name] = time.monotonic() - started
    assert took["scanner"] < 3.0, took  # its own account: a token at once
    assert took["billing"] > 3.0, took  # crm's account: waits for crm's bucket to refill
    assert [r.path.split("/")[3] for r in standin.requests] == [
        crm.account, scanner.account, crm.account,
    ]  # fmt: skip
    lines = [e for e in logged if e["event"] == "message"]
    assert [e["tenant"] for e in lines] == ["crm", "scanner", "billing"]


def test_check_config_online_proves_every_tenant_one_line_each(
    standin: StandIn, tmp_path: Path
) -> None:
    crm, billing, scanner = apps(3)
    standin.grant(crm.key, crm.account)
    standin.grant(scanner.key, str(uuid.uuid4()))  # scoped to another account
    tables = [tenant_table(tmp_path, app, users=[]) for app in (crm, billing, scanner)]
    env = standin_env(standin, RELAY_TENANTS_FILE=str(write_tenants(tmp_path, tables)))
    del env["AHASEND_API_KEY"], env["AHASEND_ACCOUNT_ID"]
    result = run_cli("check-config", "--online", **env)
    assert result.returncode == 78
    out = [line for line in result.stdout.splitlines() if line.startswith("tenant ")]
    assert out == [f"tenant crm: API key accepted, account {crm.account} (Stand-in Account) OK"]
    assert result.stderr.splitlines() == [
        "tenant billing: API key refused (401 invalid API key)",
        f"tenant scanner: account {scanner.account} unknown to this key (404 account not found)",
    ]
    assert not any(a.key in result.stdout + result.stderr for a in (crm, billing, scanner))


@pytest.mark.e2e
def test_message_and_upstream_counters_carry_the_tenant(
    standin: StandIn, certs: Certs, tmp_path: Path
) -> None:
    crm, billing = granted(standin, 2)
    path = tenants_file(tmp_path, crm, billing)
    settings = relay_settings(standin, certs, tmp_path, path, relay_metrics_port=0)
    standin.script(Scripted(202), Scripted(202), Scripted(422))
    with running_relay(settings) as relay:
        assert [send(relay.port, user)[0] for user in ("crm", "crm", "billing", "stranger")] == [
            250, 250, 554, 250,
        ]  # fmt: skip
        text = scrape(relay)
    for tenant, result, code, count in (
        ("crm", "accepted", "250", 2), ("billing", "rejected", "554", 1),
        ("default", "accepted", "250", 1),
    ):  # fmt: skip
        name = "ahasend_relay_messages_total"
        messages = sample(text, name, tenant=tenant, result=result, code=code)
        assert (messages, sample(text, name, tenant=tenant)) == (
            count, count,
        ), tenant  # fmt: skip
    upstream = "ahasend_relay_upstream_responses_total"
    assert sample(text, upstream, tenant="crm", status="202") == 2
    assert sample(text, upstream, tenant="billing", status="422") == 1
    assert sample(text, upstream, tenant="default", status="202") == 1
    assert sample(text, "ahasend_relay_messages_accepted_total", tenant="crm", route="sent") == 2
    tenants = {labels["tenant"] for labels in labelsets(text) if "tenant" in labels}
    assert tenants == {"crm", "billing", "default"}


@pytest.mark.e2e
def test_a_rotated_keys_old_client_closes_once_its_request_in_flight_is_answered(
    standin: StandIn, certs: Certs, tmp_path: Path
) -> None:
    [crm] = apps(1)
    standin.grant(crm.key, crm.account)
    path = write_tenants(tmp_path, [tenant_table(tmp_path, crm)])
    standin.script(Scripted(202, delay=3.0))  # under the relay's 5 s API timeout
    with running_relay(relay_settings(standin, certs, tmp_path, path)) as relay:
        assert relay.server is not None
        router = relay.server.relay.router
        assert isinstance(router, TenantRouter)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(send, relay.port, "crm")
            # The request is at the stand-in, unanswered: it took its scripted answer on
            # arrival (wait_for would return only once the answer is sent, 3 s later).
            deadline = time.monotonic() + 10
            while standin.pending_script:
                assert time.monotonic() < deadline, "the request never reached the stand-in"
                time.sleep(0.01)
            rotated = App(crm.name, f"aha-sk-crm-rotated-{uuid.uuid4().hex}", crm.account)
            standin.grant(rotated.key, rotated.account)
            write_tenants(tmp_path, [tenant_table(tmp_path, rotated)])
            relay.reload()
            assert router.retiring == 1  # the old client waits for its request
            assert in_flight.result(timeout=15)[0] == 250
        deadline = time.monotonic() + 5
        while router.retiring:
            assert time.monotonic() < deadline, "the replaced client was never closed"
            time.sleep(0.05)
        assert send(relay.port, "crm")[0] == 250
    assert [r.headers["authorization"] for r in standin.requests] == [
        f"Bearer {crm.key}", f"Bearer {rotated.key}",
    ]  # fmt: skip


def labelsets(text: str) -> list[dict[str, str]]:
    return [dict(labels) for _, labels in parse(text)]
