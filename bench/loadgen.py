"""The SMTP load generator: C concurrent connections sending N pre-rendered messages.

A raw asyncio SMTP client (no smtplib, no threads), so that on two cores the generator
is not what limits the figures. Each connection says EHLO once, then sends messages one
after another (MAIL, RCPT, DATA, lock-step as most applications do), taking the next
message index from a shared counter. Latency is measured per message from the moment
the message bytes are handed to the kernel (after ``drain``) until the final reply.

``python -m bench.loadgen --port P --conns C --count N --kinds small|mix|big --rcpt A``
follows the ready/go handshake of ``bench.worker`` and prints one JSON result line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench import messages
from bench.loops import new_event_loop
from bench.worker import emit, own_cpu, percentiles, wait_for_go


class SMTPReplyError(Exception):
    """A reply other than the one expected."""


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """The final line of one (possibly multi-line) reply."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed by server")
        if line[3:4] != b"-":
            return line


async def _command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes, expect: bytes
) -> None:
    writer.write(line)
    reply = await _reply(reader)
    if not reply.startswith(expect):
        raise SMTPReplyError(reply.decode(errors="replace").strip())


async def _connection(
    host: str,
    port: int,
    rcpt: str,
    payloads: list[bytes],
    counter: itertools.count[int],
    tally: Tally,
) -> None:
    """One client connection: sends messages until the shared counter runs out."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        await _command(reader, writer, b"", b"220")
        await _command(reader, writer, b"EHLO loadgen.bench\r\n", b"250")
        mail, to = f"MAIL FROM:<{messages.SENDER}>\r\n".encode(), f"RCPT TO:<{rcpt}>\r\n".encode()
        while (index := next(counter)) < len(payloads):
            try:
                await _command(reader, writer, mail, b"250")
                await _command(reader, writer, to, b"250")
                await _command(reader, writer, b"DATA\r\n", b"354")
                writer.write(payloads[index])
                await writer.drain()
                started = time.perf_counter()
                reply = await _reply(reader)
            except SMTPReplyError as exc:
                tally.errors[str(exc)[:80]] += 1
                await _command(reader, writer, b"RSET\r\n", b"250")
                continue
            if reply.startswith(b"250"):
                tally.latencies.append(time.perf_counter() - started)
            else:
                tally.errors[reply.decode(errors="replace").strip()[:80]] += 1
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()
        await writer.wait_closed()


def build_payloads(kinds: str, count: int, rcpt: str, big_size: int) -> list[bytes]:
    """``count`` message bytes: one kind repeated, or the ``mix`` cycle (shared objects)."""
    names = messages.MIX if kinds == "mix" else (kinds,)
    rendered = {name: messages.build(name, rcpt, big_size) for name in set(names)}
    return [rendered[names[i % len(names)]] for i in range(count)]


async def run(host: str, port: int, conns: int, rcpt: str, payloads: list[bytes]) -> dict[str, Any]:
    tally, counter = Tally(), itertools.count()
    cpu0, started = own_cpu(), time.perf_counter()
    outcomes = await asyncio.gather(
        *(_connection(host, port, rcpt, payloads, counter, tally) for _ in range(conns)),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - started
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            tally.errors[f"connection: {type(outcome).__name__}: {outcome}"[:80]] += 1
    return {
        "sent": len(tally.latencies),
        "errors": sum(tally.errors.values()),
        "error_samples": dict(tally.errors.most_common(5)),
        "elapsed_s": round(elapsed, 4),
        "msgs_per_s": round(len(tally.latencies) / elapsed, 1) if elapsed else None,
        "generator_cpu_s": round(own_cpu() - cpu0, 3),
        **percentiles(tally.latencies),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument(
        "--kinds", default="small", choices=["small", "html", "attach1m", "mix", "big"]
    )
    parser.add_argument("--rcpt", default="someone@recipient.example")
    parser.add_argument("--big-size", type=int, default=20 * messages.MIB)
    parser.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    args = parser.parse_args(argv)
    payloads = build_payloads(args.kinds, args.count, args.rcpt, args.big_size)
    conns = min(args.conns, args.count)
    loop = new_event_loop(args.loop)
    try:
        wait_for_go()
        emit(loop.run_until_complete(run(args.host, args.port, conns, args.rcpt, payloads)))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
