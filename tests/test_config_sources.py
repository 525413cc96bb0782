"""Where settings come from: typos refused, the env file read as systemd reads it, secrets
from files and systemd credentials. Each configuration error: its exit status and message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay.config import known_names, load_settings
from relay.envfile import parse, read_env_file
from relay.errors import ConfigError
from tests.ops_support import run_cli
from tests.paths import REPO

ACCOUNT = "7b0ef6a2-6a4c-4b1e-9d4e-2a6f0b8c1d11"
KEY = "aha-sk-" + "k" * 57
BASE = {"AHASEND_ACCOUNT_ID": ACCOUNT, "RELAY_DRY_RUN": "true"}
PREFIX = "ahasend-relay: configuration error: "


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.env"
    path.write_text(text, encoding="utf-8")
    return path


# -- unknown names -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_a_typo_in_the_environment_stops_the_command(command: str) -> None:
    result = run_cli(command, RELAY_DRY_RUN="true", RELAY_PROT="25", RELAY_LOG_FORMAT="json")
    assert result.returncode == 78
    assert result.stderr == f"{PREFIX}unknown setting RELAY_PROT (did you mean RELAY_PORT?)\n"
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_a_typo_in_the_env_file_names_file_and_line(command: str, tmp_path: Path) -> None:
    path = env_file(tmp_path, f"# key\nAHASEND_APIKEY={KEY}\nRELAY_DRY_RUN=true\n")
    result = run_cli(command, "--env-file", str(path))
    assert result.returncode == 78
    assert result.stderr == (
        f"{PREFIX}{path}:2: unknown setting AHASEND_APIKEY (did you mean AHASEND_API_KEY?)\n"
    )
    assert KEY not in result.stdout + result.stderr


def test_every_unknown_name_is_listed_and_far_ones_get_no_guess() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"RELAY_PROT": "1", "RELAY_ZZZZZZZZZZZZ": "2", "HOME": "/"})
    assert str(info.value) == (
        "unknown setting RELAY_PROT (did you mean RELAY_PORT?); unknown setting RELAY_ZZZZZZZZZZZZ"
    )


def test_other_variables_and_known_names_pass() -> None:
    environ = {"PATH": "/bin", "MALLOC_MMAP_THRESHOLD_": "131072", "RELAY_DRY_RUN": "true",
               "relay_port": "2600"}  # fmt: skip
    assert load_settings(environ=environ).relay_port == 2600
    assert {"AHASEND_API_KEY_FILE", "RELAY_AUTH_PASSWORD_FILE", "RELAY_PORT"} <= known_names()
    assert "NOTIFY_SOCKET" not in known_names()


# -- the env file, as systemd reads it -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1\n", {"A": "1"}),
        ("  A = 1  \n", {"A": "1"}),  # whitespace around key and value dropped
        ("A='x # y'\n", {"A": "x # y"}),
        ('A="x # y"\n', {"A": "x # y"}),
        ("A=x#y\n", {"A": "x#y"}),
        ("A=2526 # comment\n", {"A": "2526 # comment"}),  # systemd keeps the comment
        ('A="a" # b\n', {"A": "a# b"}),  # text after the quote is appended
        ("A=a\\\nb\n", {"A": "ab"}),  # continuation
        ("A=a\\ b\n", {"A": "a b"}),
        ('A="a\\"b\\x"\n', {"A": 'a"b\\x'}),  # shell escapes in double quotes only
        ("A=1\nA=2\n", {"A": "2"}),  # the last one wins
        ("# c\n; c\n\nA=1\r\nB=2", {"A": "1", "B": "2"}),
        ("A=\n", {"A": ""}),
        ("A='it''s'\n", {"A": "its"}),
    ],
)
def test_values_are_what_systemd_reads(text: str, expected: dict[str, str]) -> None:
    assignments, _ = parse(text)
    assert {a.key: a.value for a in assignments} == expected


def test_lines_systemd_ignores_are_found() -> None:
    _, ignored = parse("JUSTANAME\nA=1\n# ends \\\nB=2\nTRAILING")
    assert [line for line, _ in ignored] == [1, 3, 5]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "RELAY_PORT=2526 # test\n",
            "2: RELAY_PORT: an inline comment: systemd keeps it in the "
            "value; put comments on lines of their own",
        ),
        ('RELAY_HOSTNAME="a" b\n', "2: RELAY_HOSTNAME: text after the closing quote"),
        ("RELAY_AUTH_PASSWORD=a\\b\n", "2: RELAY_AUTH_PASSWORD: a backslash: systemd removes it"),
        ("RELAY_AUTH_PASSWORD=pa$HOME\n", "2: RELAY_AUTH_PASSWORD: '$' outside single quotes"),
        ('RELAY_AUTH_PASSWORD="pa$x"\n', "2: RELAY_AUTH_PASSWORD: '$' outside single quotes"),
        ("RELAY_HOSTNAME='a\nb'\n", "2: RELAY_HOSTNAME: a value spanning lines"),
        ("RELAY_DRY_RUN\n", "2: 'RELAY_DRY_RUN' has no '='"),
        ("export RELAY_PORT=25\n", "2: 'export RELAY_PORT' is not a variable name"),
        ("RELAY-PORT=25\n", "2: 'RELAY-PORT' is not a variable name"),
        ("# note \\\n", "2: a comment ending in a backslash"),
        ("RELAY_HOSTNAME='open\n", "2: RELAY_HOSTNAME: an unterminated quote"),
    ],
)
def test_what_systemd_and_others_read_differently_is_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = env_file(tmp_path, "RELAY_DRY_RUN=true\n" + text)
    with pytest.raises(ConfigError) as info:
        read_env_file(path)
    assert f"{path}:{message}" in str(info.value)


def test_single_quotes_keep_dollar_hash_and_spaces(tmp_path: Path) -> None:
    path = env_file(tmp_path, "RELAY_AUTH_PASSWORD='p$ss #1 x'\n")
    assert read_env_file(path) == {"RELAY_AUTH_PASSWORD": ("p$ss #1 x", 1)}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"RELAY_PORT=\xff\n", "1: not UTF-8 (systemd ignores such lines)"),
        (b"RELAY_PORT=1\0\n", " contains a NUL byte"),
        ("\ufeffRELAY_PORT=1\n".encode(), " starts with a byte order mark"),
    ],
)
def test_bytes_systemd_cannot_read_are_refused(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "relay.env"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_env_file(path)
    assert str(info.value).startswith(f"{path}:{message}")


def test_check_config_refuses_an_inline_comment(tmp_path: Path) -> None:
    path = env_file(tmp_path, "RELAY_DRY_RUN=true\nRELAY_PORT=2526 # comment\n")
    result = run_cli("check-config", "--env-file", str(path))
    assert result.returncode == 78
    assert result.stderr == (
        f"{PREFIX}{path}:2: RELAY_PORT: an inline comment: systemd keeps it in the value; "
        "put comments on lines of their own\n"
    )


def test_the_example_file_reads_the_same_everywhere() -> None:
    values = read_env_file(REPO / "config.example.env")
    assert set(values) == {"AHASEND_API_KEY", "AHASEND_ACCOUNT_ID"}


# -- secrets from files and systemd credentials -----------------------------------------------


def test_api_key_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "api-key"
    secret.write_text(KEY + "\n")
    result = run_cli("check-config", AHASEND_API_KEY_FILE=str(secret), **BASE)
    assert result.returncode == 0, result.stderr
    assert "AHASEND_API_KEY=[set]" in result.stdout.splitlines()
    assert "AHASEND_API_KEY_FILE" not in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_secrets_from_systemd_credentials(tmp_path: Path) -> None:
    (tmp_path / "ahasend_api_key").write_text(KEY)
    (tmp_path / "relay_auth_password").write_text("s3cret-pw\r\n")
    settings = load_settings(
        environ={"CREDENTIALS_DIRECTORY": str(tmp_path), "AHASEND_ACCOUNT_ID": ACCOUNT,
                 "RELAY_AUTH_USER": "app", "RELAY_AUTH_ALLOW_PLAINTEXT": "true"},
    )  # fmt: skip
    assert settings.ahasend_api_key is not None
    assert settings.ahasend_api_key.get_secret_value() == KEY
    assert settings.relay_auth_password is not None
    assert settings.relay_auth_password.get_secret_value() == "s3cret-pw"


def test_auth_password_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    settings = load_settings(
        environ={"RELAY_AUTH_PASSWORD_FILE": str(tmp_path / "pw"), "RELAY_AUTH_USER": "app",
                 "RELAY_AUTH_ALLOW_PLAINTEXT": "true", "RELAY_DRY_RUN": "true"},
    )  # fmt: skip
    assert settings.relay_auth_password is not None
    assert settings.relay_auth_password.get_secret_value() == "from-file"


def test_a_missing_secret_file_exits_78(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = run_cli("serve", AHASEND_API_KEY_FILE=str(missing), **BASE)
    assert result.returncode == 78
    assert result.stderr == (
        f"{PREFIX}AHASEND_API_KEY_FILE: cannot read {missing}: No such file or directory\n"
    )


@pytest.mark.parametrize("content", ["", "\n", "one\ntwo\n"])
def test_a_secret_file_must_hold_one_line(tmp_path: Path, content: str) -> None:
    secret = tmp_path / "pw"
    secret.write_text(content)
    result = run_cli("check-config", RELAY_AUTH_PASSWORD_FILE=str(secret), **BASE)
    assert result.returncode == 78
    assert result.stderr == (
        f"{PREFIX}RELAY_AUTH_PASSWORD_FILE: {secret} must hold the secret alone on one line\n"
    )
    assert "two" not in result.stderr


def test_two_sources_for_one_secret_exit_78(tmp_path: Path) -> None:
    (tmp_path / "ahasend_api_key").write_text(KEY)
    result = run_cli("check-config", AHASEND_API_KEY="aha-sk-other",
                     CREDENTIALS_DIRECTORY=str(tmp_path), **BASE)  # fmt: skip
    assert result.returncode == 78
    assert result.stderr == (
        f"{PREFIX}AHASEND_API_KEY is given twice (AHASEND_API_KEY and systemd credential "
        "ahasend_api_key): keep one\n"
    )
    assert KEY not in result.stderr
    assert "aha-sk-other" not in result.stderr


def test_file_variable_in_the_env_file_and_key_in_the_environment(tmp_path: Path) -> None:
    (tmp_path / "k").write_text(KEY)
    path = env_file(tmp_path, f"AHASEND_API_KEY_FILE={tmp_path / 'k'}\n")
    with pytest.raises(ConfigError, match=r"AHASEND_API_KEY is given twice \(AHASEND_API_KEY "
                                          r"and AHASEND_API_KEY_FILE\)"):  # fmt: skip
        load_settings(path, environ={"AHASEND_API_KEY": "x", **BASE})


# -- serve --help ------------------------------------------------------------------------------


def test_serve_help_names_sources_example_and_exit_codes() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    text = result.stdout
    for needle in ("config.example.env", "--env-file", "EnvironmentFile=", "AHASEND_API_KEY_FILE",
                   "LoadCredential=", "check-config"):  # fmt: skip
        assert needle in text, needle
    codes = [line.split()[0] for line in text.split("exit status:")[1].splitlines() if line.strip()]
    assert [c for c in codes if c.isdigit()] == ["0", "71", "73", "78"]


# -- exit 73: the spool -------------------------------------------------------------------------


def test_serve_with_an_unusable_spool_exits_73(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "spool"
    not_a_directory.write_text("a file where the spool directory should be\n")
    result = run_cli("serve", "--port", "0", RELAY_DRY_RUN="true", RELAY_LOG_FORMAT="json",
                     RELAY_SPOOL_DIR=str(not_a_directory))  # fmt: skip
    assert result.returncode == 73
    failed = json.loads(result.stderr.splitlines()[-1])
    assert (failed["event"], failed["exit_status"]) == ("startup_failed", 73)
    assert str(not_a_directory) in failed["error"]
