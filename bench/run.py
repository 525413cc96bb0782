"""The benchmark, in one run: the relay, its two limits and a peer, side by side.

Every part is its own process on loopback, so CPU and memory are per process:

- ``bench.standin``  — the stand-in AhaSend API (canned 202, optional fixed delay);
- ``relay``          — ``python -m relay``, configured by environment, forwarding to it;
- ``bench.sink``     — bare aiosmtpd that accepts and discards: the SMTP ingest limit;
- mailrise           — the peer (aiosmtpd → Apprise ``json://``), from its own venv;
- ``bench.loadgen``  — the SMTP load (C connections, N messages) for relay, sink, mailrise;
- ``bench.direct``   — the relay's request bodies POSTed with httpx: the upstream limit.

Scenarios run in rounds, each target in turn, so that a noisy machine hits all of them
alike; the figures are medians over rounds. CPU is read from /proc right before and after
each load, peak RSS is VmHWM reset before each load. The report is a table on stdout and
JSON in ``bench/results/latest.json``; ``bench/README.md`` explains how to read it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench import procstat
from bench.direct import ACCOUNT_ID, API_KEY
from bench.messages import MIB
from relay.config import Settings

DEFAULT_API_RATE = float(Settings.model_fields["relay_api_rate"].default)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PEER_VENV = ROOT / "bench" / ".venv-mailrise"
PEER_VERSION = "1.4.0"
RELAY_RCPT = "someone@recipient.example"
PEER_RCPT = "bench@mailrise.xyz"


@dataclass
class Child:
    """A started helper process and the port it serves on."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    api_rate: float | None = None
    """A relay's effective RELAY_API_RATE, as its ``listening`` log event states it."""

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Options:
    quick: bool = False
    rounds: int = 3
    conns: int = 50
    small: int = 2000
    mix: int = 300
    mix_conns: int = 10
    latency: int = 300
    big_size: int = 20 * MIB
    big_together: int = 20
    """Big messages sent at once for the concurrent memory row (issue 15: ~1.8x each before)."""
    growth: int = 10_000
    delay_ms: float = 0.0
    relay_loop: str = "auto"
    relay_transport: str = "auto"
    relay_env: dict[str, str] = field(default_factory=dict)
    mailrise: str | None = None
    out: Path = RESULTS / "latest.json"


# -- processes ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int, child: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"process {child.args!r} exited with {child.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def _log(name: str) -> IO[bytes]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return (RESULTS / f"{name}.log").open("wb")


def _python_child(name: str, module: str, *args: str) -> Child:
    """Start ``python -m module``, which prints ``{"port": N}`` once it listens."""
    popen = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=_log(name)
    )
    assert popen.stdout is not None
    line = popen.stdout.readline()
    if not line:
        raise RuntimeError(f"{module} did not start; see bench/results/{name}.log")
    return Child(name, popen, json.loads(line)["port"])


UNPACED = {"RELAY_API_RATE": "1000000", "RELAY_API_BURST": "1000000"}
"""Unpaced: the pacing that keeps one account under AhaSend's 100 requests/s, lifted."""


def start_relay(api_port: int, opts: Options, paced: bool = False) -> Child:
    """The relay; ``paced`` keeps its default outbound pacing (RELAY_API_RATE=90/s).

    The relay's settings come from here only (no RELAY_*/AHASEND_* variable of the
    calling shell leaks in); its effective pacing is read back from its ``listening``
    event, and a relay that does not run at the pacing asked for stops the run.
    """
    port = _free_port()
    # Unpaced, lift the pacing: the benchmark measures what one instance can carry.
    # --relay-env applies to both relays, but never paces the unpaced one.
    unpaced = {} if paced else UNPACED
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "AHASEND_"))}
    env = inherited | {
        "AHASEND_API_BASE_URL": f"http://127.0.0.1:{api_port}",
        "AHASEND_API_KEY": API_KEY,
        "AHASEND_ACCOUNT_ID": ACCOUNT_ID,
        "RELAY_HOST": "127.0.0.1",
        "RELAY_PORT": str(port),
        "RELAY_HOSTNAME": "relay.bench",
        "RELAY_LOG_FORMAT": "json",
        "RELAY_LOG_LEVEL": "info",
        "RELAY_EVENT_LOOP": opts.relay_loop,
        "AHASEND_API_TRANSPORT": opts.relay_transport,
        **opts.relay_env,
        **unpaced,
    }
    popen = subprocess.Popen(
        [sys.executable, "-m", "relay"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=_log("relay-paced" if paced else "relay"),
    )
    _wait_port(port, popen)
    name = "relay-paced" if paced else "relay"
    rate = _logged_api_rate(RESULTS / f"{name}.log")
    asked = opts.relay_env.get("RELAY_API_RATE", DEFAULT_API_RATE) if paced else None
    expected = float(asked or UNPACED["RELAY_API_RATE"])
    if rate != expected:
        popen.kill()
        raise RuntimeError(f"{name} paces at {rate} requests/s, not {expected}: see {name}.log")
    return Child(name, popen, port, api_rate=rate)


def _logged_api_rate(log: Path, timeout: float = 10.0) -> float | None:
    """``api_rate`` of the relay's ``listening`` JSON event in ``log`` (None if never seen)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"listening"' in line:
                rate = json.loads(line).get("api_rate")
                return None if rate is None else float(rate)
        time.sleep(0.05)
    return None


def find_mailrise(explicit: str | None) -> str | None:
    """The mailrise executable: ``--mailrise``, $BENCH_MAILRISE, or bench/.venv-mailrise."""
    for candidate in (
        explicit,
        os.environ.get("BENCH_MAILRISE"),
        str(PEER_VENV / "bin" / "mailrise"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def setup_peer() -> str:
    """Install mailrise (it pins its dependencies) into a venv of its own: bench/.venv-mailrise."""
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run(
        [
            str(PEER_VENV / "bin" / "pip"),
            "install",
            "-q",
            "--disable-pip-version-check",
            f"mailrise=={PEER_VERSION}",
        ],
        check=True,
    )
    return str(PEER_VENV / "bin" / "mailrise")


def start_mailrise(executable: str, api_port: int) -> Child:
    port = _free_port()
    config = RESULTS / "mailrise.yaml"
    config.write_text(
        f"listen:\n  host: 127.0.0.1\n  port: {port}\n"
        f"configs:\n  bench:\n    urls:\n      - json://127.0.0.1:{api_port}/mailrise\n"
    )
    popen = subprocess.Popen(
        [executable, str(config)], cwd=RESULTS, stdout=subprocess.DEVNULL, stderr=_log("mailrise")
    )
    _wait_port(port, popen)
    return Child("mailrise", popen, port)


def stop(child: Child) -> None:
    if child.popen.poll() is None:
        child.popen.terminate()
        try:
            child.popen.wait(10)
        except subprocess.TimeoutExpired:
            child.popen.kill()
            child.popen.wait()


# -- loads ------------------------------------------------------------------------------


def _drive(args: list[str], target_pid: int | None) -> dict[str, Any]:
    """Run one load process; measure ``target_pid`` across exactly its load."""
    load = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=_log("load"),
    )
    assert load.stdin is not None
    assert load.stdout is not None
    try:
        if json.loads(load.stdout.readline() or b"{}").get("ready") is not True:
            raise RuntimeError("load process failed to start; see bench/results/load.log")
        pid = target_pid if target_pid is not None else load.pid
        procstat.reset_peak(pid)
        cpu0 = procstat.cpu_seconds(pid)
        load.stdin.write(b"go\n")
        load.stdin.flush()
        result: dict[str, Any] = json.loads(load.stdout.readline() or b"{}")
        if not result:
            raise RuntimeError("load process failed; see bench/results/load.log")
        cpu = procstat.cpu_seconds(pid) - cpu0 if target_pid is not None else None
        result["cpu_s"] = round(result["generator_cpu_s"] if cpu is None else cpu, 3)
        result["peak_rss_bytes"] = procstat.peak_rss_bytes(pid)
        result["rss_bytes"] = procstat.rss_bytes(pid)
    finally:
        load.stdin.close()
        load.wait(30)
    sent = result["sent"]
    result["cpu_s_per_1000"] = round(result["cpu_s"] / sent * 1000, 3) if sent else None
    return result


def smtp_load(
    target: Child, rcpt: str, kinds: str, conns: int, count: int, opts: Options
) -> dict[str, Any]:
    return _drive(
        [
            "-m",
            "bench.loadgen",
            "--port",
            str(target.port),
            "--conns",
            str(conns),
            "--count",
            str(count),
            "--kinds",
            kinds,
            "--rcpt",
            rcpt,
            "--big-size",
            str(opts.big_size),
        ],
        target.pid,
    )


def direct_load(
    standin: Child, kinds: str, conns: int, count: int, transport: str, loop: str
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{standin.port}"
    return _drive(
        [
            "-m",
            "bench.direct",
            "--base-url",
            url,
            "--conns",
            str(conns),
            "--count",
            str(count),
            "--kinds",
            kinds,
            "--transport",
            transport,
            "--loop",
            loop,
        ],
        None,
    )


# -- scenarios --------------------------------------------------------------------------


@dataclass
class Lab:
    """The running processes of one benchmark run."""

    opts: Options
    standin: Child
    sink: Child
    relay: Child
    peer: Child | None
    paced: Child | None = None

    def targets(
        self, reference: bool = False, paced: bool = False
    ) -> Iterator[tuple[str, Child | str, str]]:
        """(label, process or direct transport, recipient) of each target, limits first.

        ``reference`` adds plain httpx POSTing (httpx's own transport) as a reference row;
        ``paced`` the relay at its default pacing next to the unpaced one.
        """
        yield f"upstream (a): httpx[{self.opts.relay_transport}] → stand-in", "relay", ""
        if reference:
            yield "reference: plain httpx → stand-in", "httpx", ""
        yield "smtp ingest (b): aiosmtpd sink", self.sink, RELAY_RCPT
        yield "relay", self.relay, RELAY_RCPT
        if paced and self.paced is not None:
            yield _paced_label(self.paced.api_rate), self.paced, RELAY_RCPT
        if self.peer is not None:
            yield f"mailrise {PEER_VERSION}", self.peer, PEER_RCPT

    def load(
        self, target: Child | str, rcpt: str, kinds: str, conns: int, count: int
    ) -> dict[str, Any]:
        if isinstance(target, str):
            transport = self.opts.relay_transport if target == "relay" else target
            return direct_load(self.standin, kinds, conns, count, transport, self.opts.relay_loop)
        return smtp_load(target, rcpt, kinds, conns, count, self.opts)


def _paced_label(rate: float | None) -> str:
    """The paced relay's row: ``relay, default pacing (90/s)`` (``relay, paced (N/s)``)."""
    kind = "default pacing" if rate == DEFAULT_API_RATE else "paced"
    return f"relay, {kind} ({rate:g}/s)"


_MEDIAN_KEYS = ("msgs_per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms", "cpu_s_per_1000")


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: _med([r[k] for r in runs]) for k in _MEDIAN_KEYS}
    merged["sent"] = sum(r["sent"] for r in runs)
    merged["errors"] = sum(r["errors"] for r in runs)
    merged["error_samples"] = next((r["error_samples"] for r in runs if r["errors"]), {})
    merged["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
    merged["rounds"] = runs
    return merged


def _med(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def scenario(
    lab: Lab,
    key: str,
    kinds: str,
    conns: int,
    count: int,
    rounds: int,
    reference: bool = False,
    paced: bool = False,
) -> list[dict[str, Any]]:
    """Every target under the same load, ``rounds`` times interleaved; medians per target."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for label, target, rcpt in lab.targets(reference, paced):
            runs.setdefault(label, []).append(lab.load(target, rcpt, kinds, conns, count))
    rows = []
    for label, results in runs.items():
        row = {
            "key": key,
            "scenario": f"{key}, C={conns}",
            "target": label,
            "kinds": kinds,
            "conns": conns,
            "count": count,
        } | _median(results)
        rows.append(row)
        _progress(row)
    return rows


def memory_big(lab: Lab, together: int = 1) -> list[dict[str, Any]]:
    """Peak RSS above idle while taking ``together`` ``big`` messages at once (one per
    connection): sink (ingest alone), relay, peer. ``rise_over_size`` is per message."""
    rows = []
    size = lab.opts.big_size
    for label, target, rcpt in lab.targets():
        if not isinstance(target, Child):
            continue
        time.sleep(0.5)
        idle = procstat.rss_bytes(target.pid)
        result = smtp_load(target, rcpt, "big", together, together, lab.opts)
        rise = result["peak_rss_bytes"] - idle
        row = {
            "key": "big" if together == 1 else "big-together",
            "scenario": "one big message" if together == 1 else f"{together} big messages at once",
            "target": label,
            "kinds": "big",
            "conns": together,
            "count": together,
            "message_bytes": size,
            "idle_rss_bytes": idle,
            "rss_rise_bytes": rise,
            "rise_over_size": round(rise / (together * size), 2),
            **result,
        }
        rows.append(row)
        _progress(row)
    return rows


def rss_growth(lab: Lab, total: int, batches: int = 10) -> dict[str, Any]:
    """The relay's RSS after each of ``batches`` loads of small messages (``total`` in all)."""
    per = max(1, total // batches)
    series = []
    for _ in range(batches):
        result = smtp_load(lab.relay, RELAY_RCPT, "small", lab.opts.conns, per, lab.opts)
        time.sleep(0.2)
        series.append(
            {
                "messages": per * (len(series) + 1),
                "errors": result["errors"],
                "rss_bytes": procstat.rss_bytes(lab.relay.pid),
            }
        )
    base = series[1] if len(series) > 2 else series[0]  # the first batch warms caches up
    growth = {
        "messages": per * batches,
        "batches": series,
        "baseline_after": base["messages"],
        "growth_bytes": series[-1]["rss_bytes"] - base["rss_bytes"],
        "errors": sum(b["errors"] for b in series),
    }
    print(
        f"  rss growth over {per * batches} messages: {_mib(growth['growth_bytes'])} MiB",
        file=sys.stderr,
    )
    return growth


def _progress(row: dict[str, Any]) -> None:
    print(
        f"  {row['scenario']:<22} {row['target']:<32} {row['msgs_per_s']!s:>8} msg/s "
        f"p50 {row['p50_ms']} ms  cpu/1k {row['cpu_s_per_1000']} s  errors {row['errors']}",
        file=sys.stderr,
    )


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


# -- the run ----------------------------------------------------------------------------


def run(opts: Options) -> dict[str, Any]:
    """Start every process, run every scenario, stop everything; the results as a dict."""
    children: list[Child] = []
    try:
        standin = _python_child("standin", "bench.standin", "--delay-ms", str(opts.delay_ms))
        children.append(standin)
        sink = _python_child("sink", "bench.sink", "--loop", opts.relay_loop)
        children.append(sink)
        relay = start_relay(standin.port, opts)
        children.append(relay)
        paced = start_relay(standin.port, opts, paced=True)
        children.append(paced)
        peer_exe = find_mailrise(opts.mailrise)
        peer = start_mailrise(peer_exe, standin.port) if peer_exe else None
        if peer is not None:
            children.append(peer)
        else:
            print("  mailrise not found: no peer (python -m bench --setup-peer)", file=sys.stderr)
        lab = Lab(opts, standin, sink, relay, peer, paced)
        pacing = {"relay_api_rate": relay.api_rate, "paced_api_rate": paced.api_rate}
        return {"pacing": pacing} | _measure(lab)
    finally:
        for child in reversed(children):
            stop(child)


def _measure(lab: Lab) -> dict[str, Any]:
    opts = lab.opts
    rows = scenario(
        lab, "small", "small", opts.conns, opts.small, opts.rounds, reference=True, paced=True
    )
    rows += scenario(lab, "latency", "small", 1, opts.latency, 1)
    rows += scenario(lab, "mix", "mix", opts.mix_conns, opts.mix, 1)
    rows += memory_big(lab)
    rows += memory_big(lab, opts.big_together)
    growth = rss_growth(lab, opts.growth) if opts.growth else None
    return {"rows": rows, "growth": growth}


def environment(opts: Options) -> dict[str, Any]:
    import httpx  # noqa: PLC0415 - only for its version

    from relay import __version__  # noqa: PLC0415

    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "relay_version": __version__,
        "httpx": httpx.__version__,
        "relay_event_loop": opts.relay_loop,
        "relay_api_transport": opts.relay_transport,
        "relay_env": opts.relay_env,
        "stand_in_delay_ms": opts.delay_ms,
        "quick": opts.quick,
    }


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny loads")
    parser.add_argument("--rounds", type=int, help="rounds of the C=50 scenario (default 3)")
    parser.add_argument("--small", type=int, help="small messages per round (default 2000)")
    parser.add_argument("--conns", type=int, help="connections for the small scenario (50)")
    parser.add_argument(
        "--growth", type=int, help="messages in the RSS growth run (10000; 0: skip)"
    )
    parser.add_argument("--delay-ms", type=float, default=0.0, help="stand-in answer delay")
    parser.add_argument("--relay-loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    parser.add_argument("--relay-transport", default="auto", choices=["auto", "httpx", "aiohttp"])
    parser.add_argument(
        "--relay-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the relay (repeatable)",
    )
    parser.add_argument("--mailrise", help="mailrise executable (default: bench/.venv-mailrise)")
    parser.add_argument(
        "--setup-peer", action="store_true", help="install mailrise into bench/.venv-mailrise first"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    opts = _quick() if args.quick else Options()
    for name in ("rounds", "small", "conns", "growth"):
        if getattr(args, name) is not None:
            setattr(opts, name, getattr(args, name))
    opts.delay_ms, opts.relay_loop, opts.out = args.delay_ms, args.relay_loop, args.out
    opts.relay_transport = args.relay_transport
    opts.relay_env = dict(item.split("=", 1) for item in args.relay_env)
    opts.mailrise = setup_peer() if args.setup_peer else args.mailrise
    return opts


def _quick() -> Options:
    return Options(
        quick=True,
        rounds=1,
        conns=5,
        small=40,
        mix=20,
        mix_conns=4,
        latency=10,
        big_size=2 * MIB,
        big_together=3,
        growth=200,
    )


def main(argv: list[str] | None = None) -> int:
    from bench.report import table, verdicts  # noqa: PLC0415

    opts = parse_args(argv)
    results = {"environment": environment(opts)} | run(opts)
    results["verdicts"] = verdicts(results)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nJSON: {opts.out}")
    errors = sum(r["errors"] for r in results["rows"])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
