"""The benchmark's verdicts and its Markdown report (the table in bench/README.md)."""

from __future__ import annotations

from typing import Any

from bench.messages import MIB

CPU_PER_1000_SMALL = 1.0
"""Issue 15's target: CPU seconds per 1,000 small messages, unpaced (quiet machine)."""
RSS_GROWTH_TOLERANCE = 1 * MIB
"""'No growth in RSS': at most this much between the 2nd and the last batch of the run."""
BIG_RISE_TARGET = 1.5
"""Peak RSS rise per big message in flight, in multiples of its size (issue 15: was ~3.6x
for one 20 MiB message, ~1.8x each for 20 at once)."""


def _by_target(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """The rows of scenario ``key`` by target: upstream, smtp, relay, mailrise."""
    return {r["target"].split(" ")[0]: r for r in rows if r["key"] == key}


def _check(
    name: str, value: float | None, limit: float | None, ok: bool | None, unit: str = ""
) -> dict[str, Any]:
    return {
        "target": name,
        "value": value,
        "limit": limit,
        "unit": unit,
        "met": None if value is None or limit is None else ok,
    }


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue: the measured value, the limit, met / not met / n/a."""
    small = _by_target(results["rows"], "small")
    lat = _by_target(results["rows"], "latency")
    big = _by_target(results["rows"], "big")
    relay, peer = small.get("relay", {}), small.get("mailrise", {})
    ratio = _ratio(relay, small["upstream"], small["smtp"])
    plain = _ratio(relay, small.get("reference:", {}), small["smtp"])
    added = _minus(lat.get("relay", {}).get("p50_ms"), lat.get("upstream", {}).get("p50_ms"))
    rise = big.get("relay", {}).get("rise_over_size")
    together = _by_target(results["rows"], "big-together").get("relay", {})
    rise_each = together.get("rise_over_size")
    growth = (results.get("growth") or {}).get("growth_bytes")
    peer_cpu = peer.get("cpu_s_per_1000")
    paced_cpu = small.get("relay,", {}).get("cpu_s_per_1000")
    relay_cpu = relay.get("cpu_s_per_1000")
    pacing = None if not (paced_cpu and relay_cpu) else round(paced_cpu / relay_cpu, 3)
    return [
        _check(
            "throughput ≥ 70 % of min(a, b), small; a on the relay's transport",
            ratio,
            0.70,
            ratio is not None and ratio >= 0.70,
            "x min(a, b)",
        ),
        _check(
            "throughput ≥ 70 % of min(a, b), small; a = plain httpx",
            plain,
            0.70,
            plain is not None and plain >= 0.70,
            "x min(a, b)",
        ),
        _check(
            "throughput above mailrise, small",
            relay.get("msgs_per_s"),
            peer.get("msgs_per_s"),
            _gt(relay.get("msgs_per_s"), peer.get("msgs_per_s")),
            "msg/s",
        ),
        _check(
            "CPU per 1,000 small ≤ ½ mailrise's",
            relay.get("cpu_s_per_1000"),
            None if peer_cpu is None else round(peer_cpu / 2, 3),
            _le(relay.get("cpu_s_per_1000"), None if peer_cpu is None else peer_cpu / 2),
            "s",
        ),
        _check(
            "CPU per 1,000 small ≤ 1.0 s, unpaced",
            relay_cpu,
            CPU_PER_1000_SMALL,
            _le(relay_cpu, CPU_PER_1000_SMALL),
            "s",
        ),
        _check(
            "CPU per 1,000 small at default pacing ≤ 1.15 x unpaced",
            pacing,
            1.15,
            _le(pacing, 1.15),
            "x unpaced",
        ),
        _check("added p50 latency over (a) ≤ 5 ms, C=1", added, 5.0, _le(added, 5.0), "ms"),
        _check(
            "peak RSS rise, one big message ≤ 1.5 x its size (issue 15)",
            rise,
            BIG_RISE_TARGET,
            _le(rise, BIG_RISE_TARGET),
            "x size",
        ),
        _check(
            f"peak RSS rise, {together.get('count', 'N')} big messages at once ≤ 1.5 x size each",
            rise_each,
            BIG_RISE_TARGET,
            _le(rise_each, BIG_RISE_TARGET),
            "x size",
        ),
        _check(
            "no RSS growth over the growth run (≤ 1 MiB)",
            None if growth is None else round(growth / MIB, 2),
            RSS_GROWTH_TOLERANCE / MIB,
            _le(growth, RSS_GROWTH_TOLERANCE),
            "MiB",
        ),
    ]


def _ratio(relay: dict[str, Any], upstream: dict[str, Any], smtp: dict[str, Any]) -> float | None:
    """The relay's throughput over min(upstream, smtp)."""
    limit = min(upstream.get("msgs_per_s") or 0, smtp.get("msgs_per_s") or 0)
    return round(relay["msgs_per_s"] / limit, 3) if limit and relay.get("msgs_per_s") else None


def serial_bound(small: dict[str, dict[str, Any]]) -> float | None:
    """Messages/s if one core did both limits' work in turn: 1 / (1/a + 1/b)."""
    a, b = small["upstream"].get("msgs_per_s"), small["smtp"].get("msgs_per_s")
    return round(1 / (1 / a + 1 / b), 1) if a and b else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _gt(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a > b


def _le(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a <= b


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(results: dict[str, Any]) -> str:
    """The whole report as Markdown: results per scenario, then the targets."""
    lines = [
        "| scenario | target | msg/s | p50 ms | p95 ms | p99 ms | CPU s / 1,000 msgs "
        "| peak RSS MiB | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['scenario']} | {r['target']} | {_fmt(r['msgs_per_s'])} | {_fmt(r['p50_ms'])} "
            f"| {_fmt(r['p95_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['cpu_s_per_1000'], 3)} "
            f"| {_fmt(r['peak_rss_bytes'] / MIB)} | {r['errors']} |"
        )
    lines += [
        "",
        *_memory_lines(results),
        "",
        "| target | measured | limit | met |",
        "|---|---:|---:|:---:|",
    ]
    for v in results["verdicts"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[v["met"]]
        lines.append(
            f"| {v['target']} | {_fmt(v['value'], 3)} {v['unit']} | {_fmt(v['limit'], 3)} | {met} |"
        )
    return "\n".join(lines)


def _memory_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for r in (r for r in results["rows"] if r["key"] in ("big", "big-together")):
        size = _fmt(r["message_bytes"] / MIB)
        what = (
            f"one {size} MiB message"
            if r["count"] == 1
            else f"{r['count']} {size} MiB messages at once"
        )
        each = "the message size" if r["count"] == 1 else "the size, per message"
        lines.append(
            f"- {r['target']}: {what} raised peak RSS by {_fmt(r['rss_rise_bytes'] / MIB)} MiB "
            f"over idle {_fmt(r['idle_rss_bytes'] / MIB)} MiB ({r['rise_over_size']} x {each})."
        )
    growth = results.get("growth")
    if growth:
        first, last = growth["batches"][0], growth["batches"][-1]
        lines.append(
            f"- relay RSS over {growth['messages']:,} small messages: "
            f"{_fmt(first['rss_bytes'] / MIB)} MiB after {first['messages']:,}, "
            f"{_fmt(last['rss_bytes'] / MIB)} MiB after "
            f"{last['messages']:,} (growth since {growth['baseline_after']:,}: "
            f"{_fmt(growth['growth_bytes'] / MIB, 2)} MiB)."
        )
    lat = _by_target(results["rows"], "small")
    bound = serial_bound(lat)
    if bound and lat.get("relay", {}).get("msgs_per_s"):
        share = round(lat["relay"]["msgs_per_s"] / bound * 100)
        lines.append(
            f"- one core doing both limits' work in turn would carry 1/(1/a + 1/b) = {bound} "
            f"msg/s; the relay carries {share} % of that."
        )
    added = _minus(lat.get("relay", {}).get("p50_ms"), lat.get("upstream", {}).get("p50_ms"))
    if added is not None:
        conns = lat["relay"]["conns"]
        lines.append(f"- added p50 latency at C={conns} (queueing included): {added} ms.")
    return lines
