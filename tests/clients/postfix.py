"""A private Postfix instance that uses the relay as its ``relayhost``.

It has its own config_directory, queue and data directories in a fresh temporary
folder, listens on no network port at all (mail is injected with its ``sendmail -C``),
and forwards everything to ``[127.0.0.1]:<relay port>`` — exactly the "Postfix
forwards a whole host's mail" setup of the README. The system's Postfix (if any) is
neither used nor touched. Starting needs root (master runs as root, daemons as the
``postfix`` user), which CI and the dev machines have.

With ``secure=PostfixSecurity(...)`` it authenticates (SASL PLAIN/LOGIN, credentials in
a ``postmap``-ed ``sasl_passwd`` hash map in its config directory) over a mandatory,
STARTTLS session whose certificate must be issued by the test CA for the relayhost's name,
``localhost`` (``SECURE_MAIN_CF``: the README's AUTH/TLS lines, plus
``smtp_send_dummy_mail_auth = yes``: ``MAIL FROM:<...> AUTH=<>`` as Postfix before 2.9
always sent it).

The folder lives under /tmp with mode 0755, not in pytest's tmp_path: Postfix's daemons
run as ``postfix`` and must be able to enter the queue directory.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.client.test
mydomain = client.test
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
relayhost = [{host}]:{port}
smtputf8_enable = yes
smtp_tls_security_level = none
alias_maps =
alias_database =
local_transport = error:local delivery is disabled
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
smtp_connect_timeout = 5s
smtp_host_lookup = native
"""
SECURE_MAIN_CF = """\
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = hash:{conf}/sasl_passwd
smtp_sasl_security_options = noanonymous
smtp_tls_security_level = secure
smtp_tls_CAfile = {ca}
smtp_tls_loglevel = 1
smtp_send_dummy_mail_auth = yes
"""
SASL_PASSWD = "[{host}]:{port} {user}:{password}\n"


@dataclass(frozen=True)
class PostfixSecurity:
    """What Postfix needs to AUTH over STARTTLS: the CA to trust and one user."""

    ca: Path
    user: str
    password: str


class PrivatePostfix:
    """``start()`` a Postfix relaying to 127.0.0.1:``relay_port``; ``stop()`` removes it."""

    def __init__(self, relay_port: int, secure: PostfixSecurity | None = None) -> None:
        self.relay_port = relay_port
        self.secure = secure
        self.root = Path(tempfile.mkdtemp(prefix="relay-postfix-"))
        self.root.chmod(0o755)
        self.conf = self.root / "conf"

    @property
    def relay_host(self) -> str:
        """The relayhost's name: ``localhost`` (a name the certificate has) with TLS."""
        return "localhost" if self.secure is not None else "127.0.0.1"

    def start(self) -> PrivatePostfix:
        for tool in ("/usr/sbin/postfix", "/usr/sbin/postconf", "/usr/sbin/sendmail"):
            if not Path(tool).exists():
                raise AssertionError(f"{tool} missing: .ci/run installs the postfix package")
        self._configure()
        self._postfix("check")
        self._postfix("start")
        return self

    def _configure(self) -> None:
        self.conf.mkdir()
        (self.root / "queue").mkdir()
        (self.root / "data").mkdir()
        shutil.chown(self.root / "data", user="postfix")
        shutil.copy("/etc/postfix/master.cf", self.conf / "master.cf")
        main_cf = MAIN_CF.format(root=self.root, host=self.relay_host, port=self.relay_port)
        if self.secure is not None:
            main_cf = main_cf.replace("smtp_tls_security_level = none\n", "")
            ca = shutil.copy(self.secure.ca, self.conf / "ca.pem")  # readable by ``postfix``
            main_cf += SECURE_MAIN_CF.format(conf=self.conf, ca=ca)
        (self.conf / "main.cf").write_text(main_cf)
        if self.secure is not None:
            self._write_sasl_passwd(self.secure)
        # No SMTP listener at all, and no chroot (the private queue has no /etc inside).
        self._run(["postconf", "-c", str(self.conf), "-M#", "smtp/inet"])
        self._run(["postconf", "-c", str(self.conf), "-F", "*/*/chroot = n"])

    def _write_sasl_passwd(self, secure: PostfixSecurity) -> None:
        path = self.conf / "sasl_passwd"
        entry = SASL_PASSWD.format(host=self.relay_host, port=self.relay_port, user=secure.user,
                                   password=secure.password)  # fmt: skip
        path.write_text(entry)
        path.chmod(0o600)
        self._run(["postmap", "-c", str(self.conf), f"hash:{path}"])

    def sendmail(self, message: bytes, sender: str) -> None:
        """Inject ``message`` (recipients from its To/Cc/Bcc, which Postfix then removes)."""
        self._run(["sendmail", "-C", str(self.conf), "-f", sender, "-t", "-i"], stdin=message)

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        try:
            if (self.conf / "main.cf").exists():
                self._postfix("stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _postfix(self, command: str) -> None:
        done = subprocess.run(
            ["postfix", "-c", str(self.conf), command], check=False, capture_output=True, timeout=30
        )
        if done.returncode != 0:
            raise AssertionError(f"postfix {command} failed:\n{self.log()[-3000:]}")

    def _run(self, argv: list[str], stdin: bytes | None = None) -> None:
        done = subprocess.run(argv, input=stdin, check=False, capture_output=True, timeout=30)
        output = (done.stdout + done.stderr).decode(errors="replace")
        assert done.returncode == 0, f"{argv[0]} exited {done.returncode}: {output}"
