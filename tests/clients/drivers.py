"""One driver per real SMTP client: send a ``Scenario`` to the relay at 127.0.0.1:port.

Each driver uses the client the way its users do (command-line flags, the library's
API) and raises if the client reports failure. Clients that compose MIME themselves
(smtplib, nodemailer, PHPMailer, mutt, s-nail, sendemail, swaks for most kinds) get
addresses, text and files; pure transports (curl, msmtp, Postfix) get ``scenario.mime()``.

The ``SECURE`` drivers send to a relay that requires AUTH over TLS (``Secure``): each
uses its client's own STARTTLS (or implicit TLS, on the SMTPS port), certificate check
against the test CA, and AUTH settings.

A client that is not installed is an error, never a skip: ``.ci/run`` installs them all.
"""

from __future__ import annotations

import json
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.clients.scenarios import CID, PNG, Scenario

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
PHPMAILER = Path("/usr/share/php/libphp-phpmailer/autoload.php")
TIMEOUT = 30


@dataclass(frozen=True)
class Client:
    """A client of the matrix: how to send, and whether it can set a part's Content-ID."""

    name: str
    send: Callable[[Scenario, int, Path], None]
    needs: tuple[str, ...]
    inline_cid: bool = True


def require(*tools: str) -> None:
    """Fail (not skip) when a client is missing: CI must install it (see .ci/run)."""
    missing = [t for t in tools if not Path(t).exists() and shutil.which(t) is None]
    if missing:
        raise AssertionError(f"client(s) not installed: {missing}; .ci/run installs them")


def run(argv: list[str], *, stdin: bytes | None = None, cwd: Path | None = None) -> str:
    """Run a client; its exit status must be 0. Returns its combined output."""
    done = subprocess.run(
        argv, input=stdin, check=False, capture_output=True, timeout=TIMEOUT, cwd=cwd
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, f"{argv[0]} exited {done.returncode}:\n{output[-3000:]}"
    return output


def _write_files(s: Scenario, work: Path) -> list[Path]:
    paths = []
    for name, data in s.files.items():
        (path := work / name).write_bytes(data)
        paths.append(path)
    if s.kind == "html_inline":
        (path := work / "logo.png").write_bytes(PNG)
        paths.append(path)
    return paths


def _spec(s: Scenario, port: int, work: Path, **extra: object) -> Path:
    """The scenario as JSON, for the Node and PHP drivers (``extra``: e.g. ``tls``)."""
    spec = extra | {
        "port": port, "from": s.sender, "to": s.to, "cc": list(s.cc), "bcc": list(s.bcc),
        "subject": s.subject, "text": s.text, "html": s.html if s.kind == "html_inline" else "",
        "cid": CID, "files": [str(p) for p in _write_files(s, work) if p.name != "logo.png"],
        "inline": str(work / "logo.png") if s.kind == "html_inline" else "",
    }  # fmt: skip
    (path := work / "spec.json").write_text(json.dumps(spec))
    return path


# -- composing clients ------------------------------------------------------------------


def send_smtplib(s: Scenario, port: int, work: Path) -> None:
    """Python's smtplib with an EmailMessage; send_message drops the Bcc header."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=TIMEOUT) as smtp:
        refused = smtp.send_message(s.message())
    assert not refused


def send_nodemailer(s: Scenario, port: int, work: Path) -> None:
    require("node", str(NODE_MODULES / "nodemailer"))
    run(["node", str(HERE / "send_nodemailer.js"), str(_spec(s, port, work))], cwd=HERE)


def send_phpmailer(s: Scenario, port: int, work: Path) -> None:
    require("php", str(PHPMAILER))
    run(["php", str(HERE / "send_phpmailer.php"), str(_spec(s, port, work))])


def send_swaks(s: Scenario, port: int, work: Path) -> None:
    require("swaks")
    argv = ["swaks", "--server", "127.0.0.1", "--port", str(port), "--helo", "client.test",
            "--from", s.sender, "--to", ",".join(s.recipients)]  # fmt: skip
    if s.kind == "html_inline":  # swaks cannot give a part a Content-ID: send the whole message
        (msg := work / "message.eml").write_bytes(s.mime())
        run([*argv, "--data", f"@{msg}"])
        return
    argv += ["--header", f"Subject: {s.subject}", "--header", f"To: {s.to}", "--body", s.text]
    if s.cc:
        argv += ["--header", f"Cc: {', '.join(s.cc)}"]
    for path in _write_files(s, work):
        argv += ["--attach-type", "application/pdf", "--attach-name", path.name,
                 "--attach", f"@{path}"]  # fmt: skip
    run(argv)


def send_mutt(s: Scenario, port: int, work: Path) -> None:
    require("mutt")
    settings = [
        f"set smtp_url=smtp://127.0.0.1:{port}/", f"set from='Matrix App <{s.sender}>'",
        "set use_from=yes", "set hostname=client.test", "set record=", "set copy=no",
        "set ssl_starttls=no", "set ssl_force_tls=no", "set charset=utf-8",
        "set send_charset=utf-8",
    ]  # fmt: skip
    if s.kind == "html_inline":
        settings.append("set content_type=text/html")
    argv = ["mutt", "-n", "-F", "/dev/null"]
    for setting in settings:
        argv += ["-e", setting]
    argv += ["-s", s.subject, *_flags("-c", s.cc), *_flags("-b", s.bcc)]
    files = [str(p) for p in _write_files(s, work)]
    argv += (["-a", *files] if files else []) + ["--", s.to]
    body = s.html if s.kind == "html_inline" else s.text
    run(argv, stdin=body.encode(), cwd=_home(work))


def send_s_nail(s: Scenario, port: int, work: Path) -> None:
    require("s-nail")
    argv = ["s-nail", "-:/", "-Sv15-compat", f"-Smta=smtp://127.0.0.1:{port}",
            "-Ssmtp-auth=none", "-Shostname=client.test", "-Ssendcharsets=utf-8",
            "-Sttycharset=utf-8", f"-r{s.sender}", "-s", s.subject,
            *_flags("-c", s.cc), *_flags("-b", s.bcc)]  # fmt: skip
    if s.kind == "html_inline":
        argv += ["-M", "text/html"]
    for path in _write_files(s, work):
        argv += ["-a", str(path)]
    body = s.html if s.kind == "html_inline" else s.text
    run([*argv, "-.", s.to], stdin=body.encode(), cwd=_home(work))


def send_sendemail(s: Scenario, port: int, work: Path) -> None:
    require("sendemail")
    body = s.html if s.kind == "html_inline" else s.text
    argv = ["sendemail", "-f", s.sender, "-t", s.to, "-u", s.subject, "-m", body,
            "-s", f"127.0.0.1:{port}", "-o", "tls=no", "-o", "message-charset=utf-8",
            "-o", "fqdn=client.test"]  # fmt: skip
    argv += ["-o", f"message-content-type={'html' if s.kind == 'html_inline' else 'text'}"]
    argv += [*_flags("-cc", s.cc), *_flags("-bcc", s.bcc)]
    files = [str(p) for p in _write_files(s, work)]
    run(argv + (["-a", *files] if files else []))


# -- transports of a finished message -----------------------------------------------------


def send_curl(s: Scenario, port: int, work: Path) -> None:
    require("curl")
    (msg := work / "message.eml").write_bytes(_without_bcc(s))
    argv = ["curl", "--silent", "--show-error", "--url", f"smtp://127.0.0.1:{port}/client.test",
            "--mail-from", s.sender, "--upload-file", str(msg)]  # fmt: skip
    for rcpt in s.recipients:
        argv += ["--mail-rcpt", rcpt]
    run(argv)


def send_msmtp(s: Scenario, port: int, work: Path) -> None:
    """``msmtp -t``: recipients from To/Cc/Bcc, and msmtp removes the Bcc header."""
    require("msmtp")
    run(["msmtp", "-C", "/dev/null", "--host=127.0.0.1", f"--port={port}", "--auth=off",
         "--tls=off", "--domain=client.test", f"--from={s.sender}", "-t"],
        stdin=s.mime())  # fmt: skip


def _without_bcc(s: Scenario) -> bytes:
    msg = s.message()
    del msg["Bcc"]
    return msg.as_bytes(policy=s.message().policy.clone(linesep="\r\n"))


def _flags(flag: str, values: tuple[str, ...]) -> list[str]:
    return [item for value in values for item in (flag, value)]


def _home(work: Path) -> Path:
    """An empty working directory for clients that may write files beside them."""
    (home := work / "home").mkdir(exist_ok=True)
    return home


COMPOSERS = [
    Client("smtplib", send_smtplib, ()),
    Client("nodemailer", send_nodemailer, ("node",)),
    Client("phpmailer", send_phpmailer, ("php",)),
    Client("swaks", send_swaks, ("swaks",)),
    Client("mutt", send_mutt, ("mutt",), inline_cid=False),
    Client("s-nail", send_s_nail, ("s-nail",), inline_cid=False),
    Client("sendemail", send_sendemail, ("sendemail",), inline_cid=False),
    Client("curl", send_curl, ("curl",)),
    Client("msmtp", send_msmtp, ("msmtp",)),
]


# -- with AUTH and TLS ------------------------------------------------------------------


@dataclass(frozen=True)
class Secure:
    """A relay requiring AUTH over TLS: STARTTLS on ``port``, implicit TLS on ``smtps_port``."""

    port: int
    smtps_port: int
    ca: Path
    user: str
    password: str


@dataclass(frozen=True)
class SecureClient:
    """A client of the AUTH/TLS matrix."""

    name: str
    send: Callable[[Scenario, Secure, Path], None]


MSMTPRC_SECURE = """\
account default
host 127.0.0.1
port {port}
from app@example.com
tls on
tls_starttls on
tls_trust_file {ca}
auth on
user {user}
password {password}
"""
"""The README's msmtp configuration for a relay with AUTH and TLS."""


def send_smtplib_secure(s: Scenario, sec: Secure, work: Path) -> None:
    """STARTTLS verified against the CA, then AUTH (smtplib picks PLAIN or LOGIN)."""
    context = ssl.create_default_context(cafile=str(sec.ca))
    with smtplib.SMTP("127.0.0.1", sec.port, local_hostname="client.test", timeout=TIMEOUT) as smtp:
        smtp.starttls(context=context)
        smtp.login(sec.user, sec.password)
        assert not smtp.send_message(s.message())


def send_nodemailer_secure(s: Scenario, sec: Secure, work: Path, implicit: bool = False) -> None:
    require("node", str(NODE_MODULES / "nodemailer"))
    tls = {"ca": str(sec.ca), "user": sec.user, "password": sec.password, "implicit": implicit}
    spec = _spec(s, sec.smtps_port if implicit else sec.port, work, tls=tls)
    run(["node", str(HERE / "send_nodemailer.js"), str(spec)], cwd=HERE)


def send_nodemailer_smtps(s: Scenario, sec: Secure, work: Path) -> None:
    send_nodemailer_secure(s, sec, work, implicit=True)


def send_phpmailer_secure(s: Scenario, sec: Secure, work: Path) -> None:
    require("php", str(PHPMAILER))
    tls = {"ca": str(sec.ca), "user": sec.user, "password": sec.password, "implicit": False}
    run(["php", str(HERE / "send_phpmailer.php"), str(_spec(s, sec.port, work, tls=tls))])


def send_swaks_secure(s: Scenario, sec: Secure, work: Path, implicit: bool = False) -> None:
    require("swaks")
    (msg := work / "message.eml").write_bytes(_without_bcc(s))
    tls = ["--tls-on-connect", "--port", str(sec.smtps_port)] if implicit else [
        "--tls", "--port", str(sec.port)]  # fmt: skip
    run(["swaks", "--server", "127.0.0.1", *tls, "--tls-verify", "--tls-ca-path", str(sec.ca),
         "--auth", "LOGIN", "--auth-user", sec.user, "--auth-password", sec.password,
         "--helo", "client.test", "--from", s.sender, "--to", ",".join(s.recipients),
         "--data", f"@{msg}"])  # fmt: skip


def send_swaks_smtps(s: Scenario, sec: Secure, work: Path) -> None:
    send_swaks_secure(s, sec, work, implicit=True)


def send_curl_secure(s: Scenario, sec: Secure, work: Path, implicit: bool = False) -> None:
    """curl with ``--ssl-reqd`` and ``--user``; over STARTTLS it also sends ``AUTH=<sender>``."""
    require("curl")
    (msg := work / "message.eml").write_bytes(_without_bcc(s))
    url = f"smtps://127.0.0.1:{sec.smtps_port}" if implicit else f"smtp://127.0.0.1:{sec.port}"
    argv = ["curl", "--silent", "--show-error", "--url", f"{url}/client.test", "--ssl-reqd",
            "--cacert", str(sec.ca), "--user", f"{sec.user}:{sec.password}",
            "--mail-from", s.sender, "--upload-file", str(msg)]  # fmt: skip
    if not implicit:
        argv += ["--mail-auth", s.sender]  # MAIL FROM:<...> AUTH=<sender> (RFC 4954 §5)
    for rcpt in s.recipients:
        argv += ["--mail-rcpt", rcpt]
    run(argv)


def send_curl_smtps(s: Scenario, sec: Secure, work: Path) -> None:
    send_curl_secure(s, sec, work, implicit=True)


def send_msmtp_secure(s: Scenario, sec: Secure, work: Path) -> None:
    """msmtp with the README's msmtprc (STARTTLS, CA file, AUTH); recipients from -t."""
    require("msmtp")
    rc = work / "msmtprc"
    rc.write_text(MSMTPRC_SECURE.format(port=sec.port, ca=sec.ca, user=sec.user,
                                        password=sec.password))  # fmt: skip
    rc.chmod(0o600)  # msmtp refuses a password in a file others can read
    run(["msmtp", "-C", str(rc), "--domain=client.test", "-t"], stdin=s.mime())


SECURE = [
    SecureClient("smtplib", send_smtplib_secure),
    SecureClient("nodemailer", send_nodemailer_secure),
    SecureClient("nodemailer-smtps", send_nodemailer_smtps),
    SecureClient("phpmailer", send_phpmailer_secure),
    SecureClient("swaks", send_swaks_secure),
    SecureClient("swaks-smtps", send_swaks_smtps),
    SecureClient("curl", send_curl_secure),
    SecureClient("curl-smtps", send_curl_smtps),
    SecureClient("msmtp", send_msmtp_secure),
]
