"""``ahasend-relay queue``: look at and act on the spool, also while the daemon runs.

The commands open the same spool as the daemon (the SQLite file's WAL mode lets both work
at once; the PostgreSQL spool is shared by every replica anyway) and change it in single
transactions; the workers notice within a few seconds. The spool is ``--spool-dir`` or
``--spool-url`` (before or after the action), else RELAY_SPOOL_DIR / RELAY_SPOOL_URL.
They drive the spool backend's async API (``SpoolBackend``); ``run_queue_command`` is a
coroutine, run by ``cli.main`` with ``asyncio.run``.

- ``list [--state queued|dead|delivered]``: one line per message;
- ``show ID``: every field, and the request's subject, sender and recipients;
- ``retry ID`` / ``retry --all``: make queued messages due now; requeue dead ones;
- ``delete ID``: remove a message for good.

Each command returns an exit status: 0 done, 1 no such message (or nothing to retry).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from relay.delivery.spool import STATES, SpoolBackend, SpoolEntry

__all__ = ["add_queue_commands", "add_spool_options", "format_entry", "run_queue_command"]

EX_NOT_FOUND = 1


def add_spool_options(parser: argparse.ArgumentParser, *, on_action: bool = False) -> None:
    """``--spool-dir`` / ``--spool-url`` on ``parser``: the ``queue`` parser itself, or
    (``on_action``) each action, where an option left out keeps the ``queue`` one's value
    (so ``queue --spool-url URL list`` and ``queue list --spool-url URL`` both work)."""
    default = argparse.SUPPRESS if on_action else None
    parser.add_argument("--spool-dir", type=Path, default=default,
                        help="the SQLite spool directory (RELAY_SPOOL_DIR)")  # fmt: skip
    parser.add_argument("--spool-url", default=default, metavar="URL",
                        help="the shared PostgreSQL spool (RELAY_SPOOL_URL)")  # fmt: skip


def add_queue_commands(parser: argparse.ArgumentParser) -> None:
    """The ``queue`` subcommands on ``parser`` (their handler: ``args.queue_command``)."""
    location = argparse.ArgumentParser(add_help=False)
    add_spool_options(location, on_action=True)
    actions = parser.add_subparsers(title="queue commands", metavar="ACTION", required=True)

    def add_action(name: str, help_text: str) -> argparse.ArgumentParser:
        action: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, parents=[location]
        )
        return action

    listing = add_action("list", "list spooled messages")
    listing.add_argument("--state", choices=STATES)
    listing.set_defaults(queue_command=_list)
    show = add_action("show", "show one message")
    show.add_argument("id", type=int)
    show.set_defaults(queue_command=_show)
    retry = add_action("retry", "retry now (dead messages are requeued)")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="?")
    which.add_argument("--all", action="store_true", help="every queued and dead message")
    retry.set_defaults(queue_command=_retry)
    delete = add_action("delete", "remove a message for good")
    delete.add_argument("id", type=int)
    delete.set_defaults(queue_command=_delete)


async def run_queue_command(
    args: argparse.Namespace, spool: SpoolBackend, max_age: float, out: TextIO
) -> int:
    """Run the parsed queue command against ``spool``; its exit status."""
    status: int = await args.queue_command(args, spool, max_age, out)
    return status


async def _list(args: argparse.Namespace, spool: SpoolBackend, max_age: float, out: TextIO) -> int:
    entries = await spool.entries(args.state)
    now = time.time()
    print(
        f"{'ID':>6}  {'STATE':<9} {'AGE':>7} {'TRIES':>5}  {'NEXT':>7}  SENDER -> RECIPIENTS",
        file=out,
    )
    for e in entries:
        due = _duration(e.next_attempt - now) if e.state == "queued" else "-"
        rcpts = ", ".join(e.rcpt_tos)
        print(
            f"{e.id:>6}  {e.state:<9} {_duration(now - e.created):>7} {e.attempts:>5}  "
            f"{due:>7}  <{e.mail_from}> -> {rcpts}",
            file=out,
        )
        if e.last_error:
            print(f"{'':>8}{e.last_error}", file=out)
    stats = await spool.stats()
    print(f"-- {stats.queued} queued, {stats.dead} dead, {stats.delivered} delivered", file=out)
    return 0


async def _show(args: argparse.Namespace, spool: SpoolBackend, max_age: float, out: TextIO) -> int:
    entry = await spool.get(args.id)
    if entry is None:
        print(f"no message with id {args.id}", file=out)
        return EX_NOT_FOUND
    print(format_entry(entry), file=out)
    return 0


async def _retry(args: argparse.Namespace, spool: SpoolBackend, max_age: float, out: TextIO) -> int:
    changed = await spool.retry(None if args.all else args.id, max_age)
    print(f"{changed} message(s) scheduled for immediate retry", file=out)
    return 0 if changed or args.all else EX_NOT_FOUND


async def _delete(
    args: argparse.Namespace, spool: SpoolBackend, max_age: float, out: TextIO
) -> int:
    if await spool.delete(args.id):
        print(f"message {args.id} deleted", file=out)
        return 0
    print(f"no message with id {args.id}", file=out)
    return EX_NOT_FOUND


def format_entry(entry: SpoolEntry) -> str:
    """Every field of ``entry``, one ``name: value`` per line."""
    request = _request_summary(entry.body)
    lines = [
        ("id", str(entry.id)),
        ("state", entry.state),
        ("idempotency key", entry.idempotency_key),
        ("envelope sender", f"<{entry.mail_from}>"),
        ("recipients", ", ".join(entry.rcpt_tos)),
        ("size", f"{entry.size} bytes"),
        ("attempts", str(entry.attempts)),
        ("created", _when(entry.created)),
        ("updated", _when(entry.updated)),
        ("next attempt", _when(entry.next_attempt) if entry.state == "queued" else "-"),
        ("expires", _when(entry.expires)),
        ("claimed until", _claimed(entry)),
        ("last error", entry.last_error or "-"),
        ("message ids", ", ".join(entry.message_ids) or "-"),
        ("bounce sent", "yes" if entry.bounced else "no"),
        *request,
    ]
    return "\n".join(f"{name + ':':<17}{value}" for name, value in lines)


def _request_summary(body: bytes | None) -> list[tuple[str, str]]:
    if body is None:
        return []
    try:
        request = json.loads(body)
    except ValueError:
        return [("request", "(not JSON)")]
    sender = (request.get("from") or {}).get("email", "?")
    to = ", ".join(str(a.get("email")) for a in request.get("to") or [])
    return [("from", sender), ("to", to), ("subject", str(request.get("subject", "")))]


def _claimed(entry: SpoolEntry) -> str:
    """When a worker's claim on ``entry`` ends, or ``-`` when none is running."""
    if entry.claimed_until is None or entry.claimed_until <= time.time():
        return "-"
    return _when(entry.claimed_until)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d`` (negative: due now, shown as ``now``)."""
    if seconds <= 0:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
