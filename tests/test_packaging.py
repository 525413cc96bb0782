"""The systemd unit (verified by systemd-analyze), the Dockerfile's properties, the examples."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dockerfile import healthcheck_command, parse
from tests.paths import REPO

UNIT = REPO / "systemd" / "ahasend-relay.service"
PORT_25 = REPO / "systemd" / "ahasend-relay.service.d" / "port-25.conf"
EXAMPLES = REPO / "examples"


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, values of repeated keys in order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: .ci/run installs the systemd package"
    return tool


def verify_in_root(
    tmp_path: Path, unit_text: str, drop_in: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of ``unit_text`` (and ``drop_in``) in a root holding
    systemd's own units and an executable where ExecStart=/ExecReload= point (the relay is not
    installed here)."""
    root = tmp_path / "root"
    system_units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                        if p.is_dir())  # fmt: skip
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    settings = unit_settings(unit_text)
    for command in settings["ExecStart"] + settings.get("ExecReload", []):
        binary = root / command.split()[0].lstrip("/")
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / UNIT.name).write_text(unit_text)
    if drop_in is not None:
        (root / "etc/systemd/system" / f"{UNIT.name}.d").mkdir()
        (root / "etc/systemd/system" / f"{UNIT.name}.d" / PORT_25.name).write_text(drop_in)
    return subprocess.run(
        [systemd_analyze(), "verify", f"--root={root}", UNIT.name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = verify_in_root(tmp_path, UNIT.read_text())
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_unit_with_the_port_25_drop_in_passes_verify(tmp_path: Path) -> None:
    result = verify_in_root(tmp_path, UNIT.read_text(), PORT_25.read_text())
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    broken = verify_in_root(tmp_path / "b", UNIT.read_text(), "[Service]\nPrivateUsers=maybe\n")
    assert "maybe" in broken.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("ProtectHome=yes", "ProtectHome=perhaps")
    broken = broken.replace("Restart=on-failure", "Restart=on-failure\nRestartt=always")
    result = verify_in_root(tmp_path, broken)
    assert "perhaps" in result.stderr
    assert "Restartt" in result.stderr


def exposure(tmp_path: Path, *files: tuple[str, str]) -> float:
    """systemd's own sandboxing score of the unit (with drop-ins: (relative path, text))."""
    for name, text in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", str(tmp_path / UNIT.name)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for .*: (\d+\.\d) ", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found[1])


def test_unit_exposure_is_at_most_1_2(tmp_path: Path) -> None:
    assert exposure(tmp_path / "unit", (UNIT.name, UNIT.read_text())) <= 1.2
    with_drop_in = exposure(
        tmp_path / "port25", (UNIT.name, UNIT.read_text()),
        (f"{UNIT.name}.d/{PORT_25.name}", PORT_25.read_text()),
    )  # fmt: skip
    assert 1.2 < with_drop_in <= 1.6  # the drop-in costs what port 25 needs, no more


def test_port_25_drop_in_grants_only_the_bind_capability() -> None:
    drop_in = unit_settings(PORT_25.read_text())
    assert drop_in == {
        "CapabilityBoundingSet": ["CAP_NET_BIND_SERVICE"],
        "AmbientCapabilities": ["CAP_NET_BIND_SERVICE"],
        "PrivateUsers": ["no"],
    }


def test_unit_has_the_required_properties() -> None:
    unit = unit_settings(UNIT.read_text())
    expected = {
        "Type": ["notify"], "EnvironmentFile": ["/etc/ahasend-relay/relay.env"],
        "StateDirectory": ["ahasend-relay"], "DynamicUser": ["yes"],
        "NoNewPrivileges": ["yes"], "ProtectSystem": ["strict"], "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"], "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
        "CapabilityBoundingSet": [""], "Restart": ["on-failure"],
        "RestartPreventExitStatus": ["78"], "KillSignal": ["SIGTERM"],
        "PrivateUsers": ["yes"], "PrivateMounts": ["yes"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "LoadCredential": ["ahasend_api_key:/etc/ahasend-relay/api-key"],
        "Environment": ["MALLOC_MMAP_THRESHOLD_=131072",
                        "RELAY_SPOOL_DIR=/var/lib/ahasend-relay/spool"],
    }  # fmt: skip
    for key, value in expected.items():
        assert unit.get(key) == value, key
    assert unit["SystemCallFilter"][0] == "@system-service"
    assert "AmbientCapabilities" not in unit
    assert int(unit["WatchdogSec"][0]) > 0


def unit_environment() -> dict[str, str]:
    unit = unit_settings(UNIT.read_text())
    return dict(item.partition("=")[::2] for item in unit["Environment"])


def test_unit_spools_inside_its_state_directory() -> None:
    """The one writable place under ProtectSystem=strict, owned by the dynamic user; a
    subdirectory, so the relay creates it 0700 itself."""
    unit = unit_settings(UNIT.read_text())
    state = Path("/var/lib") / unit["StateDirectory"][0]
    spool = Path(unit_environment()["RELAY_SPOOL_DIR"])
    assert spool.parent == state
    assert unit["StateDirectoryMode"] == ["0700"]
    assert unit["ProtectSystem"] == ["strict"]
    assert not any(key == "ReadWritePaths" for key in unit)  # nothing else is writable


def test_the_example_env_spool_dir_works_under_the_unit() -> None:
    """config.example.env's RELAY_SPOOL_DIR is the unit's (the old /var/spool one was
    read-only under ProtectSystem=strict: exit 73 and a restart loop)."""
    text = (REPO / "config.example.env").read_text()
    [example] = re.findall(r"^#RELAY_SPOOL_DIR=(.*)$", text, flags=re.MULTILINE)
    assert example == unit_environment()["RELAY_SPOOL_DIR"]


# -- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_is_a_multi_stage_build_on_python_slim() -> None:
    stages = parse()
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.1[1-9]-slim", stage.base), stage.base
    build, final = stages[0], stages[-1]
    assert build.name is not None
    copies = [i.args for i in final.all("COPY")]
    assert any(args.startswith(f"--from={build.name} ") for args in copies)
    assert final.all("RUN")[0].args.startswith("groupadd --system --gid 10001 relay")


def test_dockerfile_user_is_numeric_with_a_matching_group() -> None:
    final = parse()[-1]
    assert final.all("USER")[-1].args == "10001:10001"
    [setup] = final.all("RUN")
    assert "groupadd --system --gid 10001 relay" in setup.args
    assert "useradd --system --uid 10001 --gid 10001 " in setup.args
    assert "install -d -o 10001 -g 10001 -m 0700 /var/lib/ahasend-relay" in setup.args


def test_dockerfile_runtime_stage_drops_pip_and_installs_from_the_lock() -> None:
    build, final = parse()[0], parse()[-1]
    [setup] = final.all("RUN")
    assert "python -m pip uninstall --yes pip setuptools wheel" in setup.args
    assert "rm -rf /usr/local/lib/python3*/ensurepip" in setup.args
    runs = [r.args for r in build.all("RUN")]
    assert "pip install --require-hashes --no-deps -r requirements/image.lock" in runs[0]
    assert "pip install --no-deps --no-build-isolation ." in runs[1]
    assert runs[1].endswith("python -m pip uninstall --yes setuptools pip")
    assert final.env()["MALLOC_MMAP_THRESHOLD_"] == "131072"


def test_dockerfile_runs_unprivileged_with_the_cli() -> None:
    final = parse()[-1]
    user = final.all("USER")[-1].args.split(":")[0]
    assert user not in ("root", "0")
    assert final.one("ENTRYPOINT").exec_form() == ["ahasend-relay"]
    assert final.one("CMD").exec_form() == ["serve"]
    assert healthcheck_command(final) == ["ahasend-relay", "healthcheck"]
    assert final.one("STOPSIGNAL").args == "SIGTERM"


def test_dockerfile_exposes_the_configured_ports_and_a_state_volume() -> None:
    final = parse()[-1]
    env = final.env()
    assert final.one("EXPOSE").args.split() == [env["RELAY_PORT"], env["RELAY_METRICS_PORT"]]
    [volume] = final.one("VOLUME").exec_form()
    assert final.one("WORKDIR").args == volume == "/var/lib/ahasend-relay"
    # The spool is on, in a subdirectory of the volume (the relay creates it 0700).
    assert Path(env["RELAY_SPOOL_DIR"]).parent == Path(volume)


def test_dockerfile_bakes_in_no_secret_or_config_file() -> None:
    stages = parse()
    for stage in stages:
        assert not any(key.startswith("AHASEND_") for key in stage.env())
        for copy in stage.all("COPY"):
            assert ".env" not in copy.args
    assert "relay.env" not in (REPO / "Dockerfile").read_text()


# -- examples ----------------------------------------------------------------------------


COMPOSE = EXAMPLES / "docker-compose" / "docker-compose.yml"
KUBERNETES = EXAMPLES / "kubernetes" / "relay-sidecar.yaml"


def test_compose_example_puts_app_and_relay_on_one_network() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    app, relay = compose["services"]["app"], compose["services"]["relay"]
    assert app["networks"] == relay["networks"] == ["mail"]
    assert app["environment"]["SMTP_HOST"] == "relay"
    assert app["environment"]["SMTP_PORT"] == relay["environment"]["RELAY_PORT"] == "2525"
    assert app["depends_on"]["relay"]["condition"] == "service_healthy"
    assert relay["volumes"] == ["relay-state:/var/lib/ahasend-relay"]
    assert "ports" not in relay


def test_compose_example_spools_on_its_volume_and_keeps_the_key_in_a_secret() -> None:
    relay = yaml.safe_load(COMPOSE.read_text())["services"]["relay"]
    volume = relay["volumes"][0].split(":")[1]
    assert relay["environment"]["RELAY_SPOOL_DIR"].startswith(volume + "/")
    assert relay["secrets"] == ["ahasend_api_key"]
    assert relay["environment"]["AHASEND_API_KEY_FILE"] == "/run/secrets/ahasend_api_key"
    # on-failure with a bound: a config error (exit 78) is not restarted forever, and
    # SIGTERM's exit 0 is not restarted at all ("always"/"unless-stopped" would loop).
    assert re.fullmatch(r"on-failure:[1-5]", relay["restart"])


def test_compose_example_passes_docker_compose_config(tmp_path: Path) -> None:
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is missing: .ci/run installs the docker-compose package"
    shutil.copy(COMPOSE, tmp_path)
    (tmp_path / "relay.env").write_text("AHASEND_ACCOUNT_ID=00000000-0000-0000-0000-000000000000\n")
    (tmp_path / "api-key").write_text("aha-sk-x\n")
    result = subprocess.run([tool, "-f", COMPOSE.name, "config", "-q"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = COMPOSE.read_text().replace("    secrets: [ahasend_api_key]", "    secretz: [x]")
    (tmp_path / COMPOSE.name).write_text(text)
    broken = subprocess.run([tool, "-f", COMPOSE.name, "config", "-q"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert "secretz" in broken.stderr


def pod_spec() -> dict[str, Any]:
    deployment = yaml.safe_load(KUBERNETES.read_text())
    assert deployment["kind"] == "Deployment"
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def test_kubernetes_example_runs_the_relay_as_a_native_sidecar_on_localhost() -> None:
    spec = pod_spec()
    [relay] = spec["initContainers"]
    [app] = spec["containers"]
    assert relay["name"] == "relay"
    assert relay["restartPolicy"] == "Always"  # a native sidecar (Kubernetes 1.29+)
    app_env = {e["name"]: e.get("value") for e in app["env"]}
    relay_env = {e["name"]: e for e in relay["env"]}
    assert app_env == {"SMTP_HOST": "localhost", "SMTP_PORT": "2525"}
    assert relay_env["RELAY_HOST"]["value"] == "127.0.0.1"
    assert relay_env["RELAY_PORT"]["value"] == "2525"
    ref = relay_env["AHASEND_ACCOUNT_ID"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "ahasend-relay", "key": "account-id"}
    key_file = Path(relay_env["AHASEND_API_KEY_FILE"]["value"])
    [secret_mount] = [m for m in relay["volumeMounts"] if m["name"] == "relay-secret"]
    assert key_file.parent == Path(secret_mount["mountPath"])
    [secret] = [v for v in spec["volumes"] if v["name"] == "relay-secret"]
    assert secret["secret"]["secretName"] == "ahasend-relay"
    assert secret["secret"]["items"] == [{"key": "api-key", "path": key_file.name}]
    assert "AHASEND_API_KEY" not in relay_env
    metrics_port = relay_env["RELAY_METRICS_PORT"]["value"]
    assert relay["ports"] == [{"name": "metrics", "containerPort": int(metrics_port)}]
    assert relay["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The sidecar's readiness would gate the application's pod: no readiness probe.
    assert "readinessProbe" not in relay
    assert relay["startupProbe"]["httpGet"]["path"] == "/healthz"
    state = {m["name"]: m["mountPath"] for m in relay["volumeMounts"]}["relay-state"]
    assert relay_env["RELAY_SPOOL_DIR"]["value"].startswith(state + "/")


def test_kubernetes_example_hardens_each_container_and_sizes_the_relay() -> None:
    spec = pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    for container in spec["initContainers"] + spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["runAsUser"] > 0
    [relay] = spec["initContainers"]
    user = parse()[-1].all("USER")[-1].args.split(":")
    assert [relay["securityContext"]["runAsUser"], relay["securityContext"]["runAsGroup"]] == [
        int(u) for u in user
    ]
    assert relay["securityContext"]["readOnlyRootFilesystem"] is True
    # Measured: 50 MiB idle, 129 MiB peak for one 19 MiB message, 199 MiB for four at once;
    # the limit must hold RELAY_MAX_CONNECTIONS (4) messages, the request one.
    env = {e["name"]: e.get("value") for e in relay["env"]}
    assert env["RELAY_MAX_CONNECTIONS"] == "4"
    assert relay["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"},
                                  "limits": {"memory": "256Mi"}}  # fmt: skip


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_kubernetes_example_passes_schema_validation(version: str) -> None:
    """kubernetes-validate, offline, against the API schemas it ships (strict: no
    unknown fields); 1.29 is the first release with native sidecars on by default."""
    tool = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert tool
    result = subprocess.run([tool, "--strict", "-k", version, str(KUBERNETES)],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout + result.stderr


def test_postfix_example_relays_to_the_relay_port() -> None:
    text = (EXAMPLES / "postfix" / "main.cf").read_text()
    assert re.search(r"^relayhost = \[127\.0\.0\.1\]:2525$", text, flags=re.MULTILINE)


@pytest.mark.parametrize("variable", ["RELAY_METRICS_PORT", "RELAY_METRICS_HOST"])
def test_new_settings_are_documented(variable: str) -> None:
    assert f"#{variable}=" in (REPO / "config.example.env").read_text()
