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
    result = compose_config(tool, COMPOSE.name, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    text = COMPOSE.read_text().replace("    secrets: [ahasend_api_key]", "    secretz: [x]")
    (tmp_path / COMPOSE.name).write_text(text)
    broken = compose_config(tool, COMPOSE.name, tmp_path)
    assert "secretz" in broken.stderr


def compose_config(tool: str, name: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f NAME config -q`` in ``folder``: validates the file offline."""
    return subprocess.run([tool, "-f", name, "config", "-q"], cwd=folder,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


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
    # Measured: 71 MiB idle, 90 MiB peak for one 19 MiB message, 135 MiB for four at once;
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


@pytest.mark.parametrize("variable", ["RELAY_METRICS_PORT", "RELAY_METRICS_HOST", "RELAY_REPLICAS"])
def test_new_settings_are_documented(variable: str) -> None:
    assert f"#{variable}=" in (REPO / "config.example.env").read_text()


# -- the shared-spool (high availability) examples ------------------------------------------

COMPOSE_PG = EXAMPLES / "docker-compose" / "docker-compose.postgres.yml"
KUBERNETES_SHARED = EXAMPLES / "kubernetes" / "relay-shared.yaml"
HAPROXY = EXAMPLES / "haproxy" / "haproxy.cfg"
SECRET_URL = "postgresql://relay:pw@db.example:5432/relay"


def settings_from(env: dict[str, str], files: dict[str, str], tmp_path: Path) -> Any:
    """The relay's Settings from an example's environment, its secret files written under
    ``tmp_path`` (``files``: path in the example -> content): the example must start."""
    from relay.config import load_settings  # noqa: PLC0415 - only these tests need it

    environ = dict(env)
    for name, value in env.items():
        if name.endswith("_FILE"):
            local = tmp_path / Path(value).name
            local.write_text(files[value] + "\n")
            environ[name] = str(local)
    return load_settings(environ=environ)


def test_compose_postgres_example_runs_three_equal_replicas_on_the_shared_spool(
    tmp_path: Path,
) -> None:
    compose = yaml.safe_load(COMPOSE_PG.read_text())
    services = compose["services"]
    replicas = [services[name] for name in ("relay1", "relay2", "relay3")]
    assert replicas[0] == replicas[1] == replicas[2]
    relay = replicas[0]
    env = relay["environment"]
    assert "RELAY_SPOOL_DIR" not in env
    assert "RELAY_SPOOL_URL" not in env
    assert env["RELAY_SPOOL_URL_FILE"] == "/run/secrets/spool_url"
    assert relay["secrets"] == ["ahasend_api_key", "spool_url"]
    assert env["RELAY_REPLICAS"] == str(len(replicas))
    assert relay["depends_on"]["postgres"]["condition"] == "service_healthy"
    haproxy_address = services["haproxy"]["networks"]["mail"]["ipv4_address"]
    assert env["RELAY_PROXY_TRUSTED_NETWORKS"] == f"{haproxy_address}/32"
    assert services["app"]["environment"]["SMTP_HOST"] == "haproxy"
    [mount] = services["haproxy"]["volumes"]
    assert (COMPOSE_PG.parent / mount.split(":")[0]).resolve() == HAPROXY
    assert sorted(haproxy_servers(HAPROXY.read_text()).values()) == [
        f"{name}:{env['RELAY_PORT']}" for name in ("relay1", "relay2", "relay3")
    ]
    settings = settings_from(
        env | {"AHASEND_ACCOUNT_ID": "00000000-0000-0000-0000-000000000000"},
        {"/run/secrets/spool_url": SECRET_URL, "/run/secrets/ahasend_api_key": "aha-sk-x"},
        tmp_path,
    )
    assert settings.spool_url == SECRET_URL
    assert settings.relay_proxy_protocol is True


def test_compose_postgres_example_passes_docker_compose_config(tmp_path: Path) -> None:
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is missing: .ci/run installs the docker-compose package"
    (tmp_path / "docker-compose").mkdir()
    (tmp_path / "haproxy").mkdir()
    shutil.copy(HAPROXY, tmp_path / "haproxy")
    folder = tmp_path / "docker-compose"
    shutil.copy(COMPOSE_PG, folder)
    for name in ("relay.env", "api-key", "spool-url", "db-password"):
        (folder / name).write_text("x\n")
    result = compose_config(tool, COMPOSE_PG.name, folder)
    assert result.returncode == 0, result.stdout + result.stderr
    text = COMPOSE_PG.read_text().replace("  relay3: *relay", "  relay3: *relais")
    (folder / COMPOSE_PG.name).write_text(text)
    broken = compose_config(tool, COMPOSE_PG.name, folder)
    assert broken.returncode != 0
    assert "relais" in broken.stdout + broken.stderr


def shared_documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(KUBERNETES_SHARED.read_text())}


def test_kubernetes_shared_example_spreads_three_replicas_behind_a_service(
    tmp_path: Path,
) -> None:
    docs = shared_documents()
    assert set(docs) == {"Deployment", "Service", "PodDisruptionBudget"}
    deployment = docs["Deployment"]
    replicas = deployment["spec"]["replicas"]
    assert replicas == 3
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    spec = deployment["spec"]["template"]["spec"]
    [term] = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {"topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": labels}}  # fmt: skip
    service, budget = docs["Service"], docs["PodDisruptionBudget"]
    assert service["spec"]["selector"] == labels
    assert budget["spec"]["selector"]["matchLabels"] == labels
    assert 0 < budget["spec"]["minAvailable"] < replicas
    [relay] = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in relay["ports"]}
    [smtp] = service["spec"]["ports"]
    assert ports[smtp["targetPort"]] == 2525
    env = {e["name"]: e for e in relay["env"]}
    assert env["RELAY_REPLICAS"]["value"] == str(replicas)
    assert "RELAY_SPOOL_URL" not in env
    assert "RELAY_SPOOL_DIR" not in env
    url_file = Path(env["RELAY_SPOOL_URL_FILE"]["value"])
    [mount] = [m for m in relay["volumeMounts"] if m["name"] == "relay-secret"]
    assert url_file.parent == Path(mount["mountPath"])
    [secret] = spec["volumes"]
    assert {"key": "spool-url", "path": url_file.name} in secret["secret"]["items"]
    assert relay["readinessProbe"]["httpGet"]["path"] == "/readyz"
    plain = {name: e["value"] for name, e in env.items() if "value" in e}
    settings = settings_from(
        plain | {"AHASEND_ACCOUNT_ID": "00000000-0000-0000-0000-000000000000"},
        {str(url_file): SECRET_URL, plain["AHASEND_API_KEY_FILE"]: "aha-sk-x"},
        tmp_path,
    )
    assert settings.spool_url == SECRET_URL
    assert settings.relay_replicas == replicas


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_kubernetes_shared_example_passes_schema_validation(version: str) -> None:
    tool = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert tool
    result = subprocess.run([tool, "--strict", "-k", version, str(KUBERNETES_SHARED)],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).count("passed") == 3


def haproxy_servers(text: str) -> dict[str, str]:
    """``server NAME ADDRESS`` lines of a HAProxy config: name -> address."""
    return dict(re.findall(r"^\s*server\s+(\S+)\s+(\S+)", text, flags=re.MULTILINE))


def test_haproxy_example_balances_tcp_and_sends_the_proxy_header() -> None:
    text = HAPROXY.read_text()
    assert re.search(r"^\s*mode tcp$", text, flags=re.MULTILINE)
    [defaults] = re.findall(r"^\s*default-server (.*)$", text, flags=re.MULTILINE)
    assert "send-proxy-v2" in defaults.split()
    assert "port 9125" in defaults  # the checks ask /readyz on the metrics port
    assert "uri /readyz" in text
    assert len(haproxy_servers(text)) == 3
    timeouts = dict(re.findall(r"^\s*timeout (client|server) (\d+)s$", text, flags=re.MULTILINE))
    assert int(timeouts["client"]) > 300
    assert int(timeouts["server"]) > 300


def test_haproxy_example_passes_haproxy_check(tmp_path: Path) -> None:
    tool = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(tool).exists(), "haproxy is missing: .ci/run installs the haproxy package"
    result = subprocess.run([tool, "-c", "-f", str(HAPROXY)],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(HAPROXY.read_text().replace("send-proxy-v2", "send-proxy-v9"))
    refused = subprocess.run([tool, "-c", "-f", str(broken)],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert refused.returncode != 0
    assert "send-proxy-v9" in refused.stdout + refused.stderr
