"""The README's "Configure your app" snippets, run for real against a relay.

Each test runs the snippet as the README prints it (only the port differs: tests use an
ephemeral one) and asserts what the stand-in API received. PHPMailer, nodemailer and
Postfix ``relayhost`` are covered by the client matrix (test_client_matrix.py), whose
drivers use the same settings as the README.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop import Served

pytestmark = pytest.mark.e2e


def run(argv: list[str]) -> None:
    done = subprocess.run(argv, check=False, capture_output=True, timeout=60)
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, f"{argv[0]} exited {done.returncode}:\n{output[-3000:]}"


def assert_delivered(served: Served, subject: str, sender: str, body: str) -> None:
    [payload] = served.payloads(subject)
    assert payload["from"]["email"] == sender
    assert [a["email"] for a in payload["to"]] == ["alice@example.net"]
    assert body in str(payload.get("text_content", ""))


MSMTPRC = """\
account default
host 127.0.0.1
port {port}
from app@example.com
auth off
tls off
"""


def test_php_mail_through_msmtp(served: Served, tmp_path: Path) -> None:
    assert Path("/usr/bin/msmtp").exists(), "msmtp missing: see .ci/run"
    assert Path("/usr/bin/php").exists(), "php-cli missing: see .ci/run"
    (rc := tmp_path / "msmtprc").write_text(MSMTPRC.format(port=served.port))
    rc.chmod(0o600)
    code = (
        'mail("alice@example.net", "PHP mail() snippet", "Sent by mail().",'
        ' "From: app@example.com");'
    )
    run(["php", "-d", f"sendmail_path=/usr/bin/msmtp -C {rc} -t", "-r", code])
    assert_delivered(served, "PHP mail() snippet", "app@example.com", "Sent by mail().")


DJANGO = """\
import django
from django.conf import settings

settings.configure(
    EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
    EMAIL_HOST="127.0.0.1",
    EMAIL_PORT={port},
    EMAIL_USE_TLS=False,
    EMAIL_TIMEOUT=30,
    DEFAULT_FROM_EMAIL="app@example.com",
)
django.setup()
from django.core.mail import send_mail

send_mail("Django snippet", "Sent by Django.", None, ["alice@example.net"])
"""


def test_django_email_settings(served: Served) -> None:
    run([sys.executable, "-c", DJANGO.format(port=served.port)])
    assert_delivered(served, "Django snippet", "app@example.com", "Sent by Django.")


RAILS = """\
require "action_mailer"

ActionMailer::Base.delivery_method = :smtp
ActionMailer::Base.smtp_settings = {
  address: "127.0.0.1",
  port: %d,
  domain: "app.example.com",
  enable_starttls_auto: false,
}

class Notifier < ActionMailer::Base
  def hello
    mail(from: "app@example.com", to: "alice@example.net", subject: "Rails snippet",
         body: "Sent by ActionMailer.")
  end
end

Notifier.hello.deliver_now
"""


def test_rails_smtp_settings(served: Served, tmp_path: Path) -> None:
    assert Path("/usr/bin/ruby").exists(), "ruby-actionmailer missing: see .ci/run"
    (script := tmp_path / "mailer.rb").write_text(RAILS % served.port)
    run(["ruby", str(script)])
    assert_delivered(served, "Rails snippet", "app@example.com", "Sent by ActionMailer.")


def test_scanner_on_port_25_style_helo_only_client(served: Served) -> None:
    """A scanner: plain SMTP, HELO, no AUTH, no TLS — as swaks can imitate it."""
    run(["swaks", "--server", "127.0.0.1", "--port", str(served.port), "--protocol", "SMTP",
         "--helo", "scanner", "--from", "scanner@example.com", "--to", "alice@example.net",
         "--header", "Subject: Scan", "--body", "Scanned document attached."])  # fmt: skip
    assert_delivered(served, "Scan", "scanner@example.com", "Scanned document attached.")
