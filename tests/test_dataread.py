"""relay.smtp.dataread: chunked DATA reading gives exactly what aiosmtpd's line reader gives.

Differential tests: ``reference`` is aiosmtpd 1.4's DATA loop restated line by line;
hypothesis generates DATA streams (dots, long lines, bare CR/LF, sizes around the limits)
and feeds them in random pieces through a real ``StreamReader`` with a small stream limit,
so every chunk boundary and overrun path is taken.
"""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp.dataread import DataOutcome, read_data


def reference(stream: bytes, size_limit: int, line_limit: int) -> tuple[set[DataOutcome], bytes]:
    """aiosmtpd's outcome(s) and content; both failure kinds are accepted when both occur."""
    lines, start, failures, size = [], 0, [], 0
    while True:
        end = stream.index(b"\r\n", start) + 2
        line, start = stream[start:end], end
        if line == b".\r\n":
            break
        size += len(line)
        if size > size_limit:
            failures.append(DataOutcome.TOO_MUCH)
        if len(line) > line_limit:
            failures.append(DataOutcome.TOO_LONG)
        lines.append(line[1:] if line.startswith(b".") else line)
    if failures:
        return set(failures), b""
    return {DataOutcome.OK}, b"".join(lines)


async def run(pieces: list[bytes], size_limit: int, line_limit: int, stream_limit: int
              ) -> tuple[DataOutcome, bytes, bytes]:  # fmt: skip
    reader = asyncio.StreamReader(limit=stream_limit)

    async def feed() -> None:
        for piece in pieces:
            reader.feed_data(piece)
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    result = await read_data(reader, size_limit, line_limit)
    await feeder
    return result.outcome, result.content, await reader.read()


line = st.one_of(
    st.sampled_from([b".", b"..", b"...x", b"", b"a.", b".\r", b"\r", b"\n", b". ", b"x\n."]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b"")),
    st.integers(0, 120).map(lambda n: b"L" * n),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(line, max_size=30),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    size_limit=st.integers(1, 600),
    line_limit=st.integers(3, 90),
    stream_limit=st.integers(8, 64),
)
def test_same_outcome_content_and_leftover_as_aiosmtpd(
    lines: list[bytes], cuts: list[int], size_limit: int, line_limit: int, stream_limit: int
) -> None:
    body = b"".join(x + b"\r\n" for x in lines if x != b".")
    stream = body + b".\r\n" + b"QUIT\r\n"
    outcomes, content = reference(stream, size_limit, line_limit)
    outcome, got, rest = asyncio.run(run(split(stream, cuts), size_limit, line_limit, stream_limit))
    assert outcome in outcomes
    assert got == content
    assert rest == b"QUIT\r\n"


async def test_empty_message_and_dot_stuffing() -> None:
    assert (await run([b".\r\nNOOP\r\n"], 100, 100, 16))[:2] == (DataOutcome.OK, b"")
    stuffed = b"..leading\r\nmid..dle\r\n...\r\n.\r\n"
    outcome, content, _ = await run([stuffed], 100, 100, 16)
    assert (outcome, content) == (DataOutcome.OK, b".leading\r\nmid..dle\r\n..\r\n")


async def test_long_base64_body_reads_in_few_chunks_and_unchanged() -> None:
    body = b"".join(b"QUJD" * 19 + b"\r\n" for _ in range(20_000))  # ~1.5 MB, no dots
    outcome, content, rest = await run([body + b".\r\n"], 10**7, 1000, 64 * 1024)
    assert (outcome, content, rest) == (DataOutcome.OK, body, b"")


async def test_limits_are_aiosmtpd_limits() -> None:
    assert (await run([b"12345678\r\n.\r\n"], 10, 100, 16))[0] is DataOutcome.OK
    assert (await run([b"123456789\r\n.\r\n"], 10, 100, 16))[0] is DataOutcome.TOO_MUCH
    assert (await run([b"1234567\r\n.\r\n"], 100, 9, 16))[0] is DataOutcome.OK
    assert (await run([b"12345678\r\n.\r\n"], 100, 9, 16))[0] is DataOutcome.TOO_LONG
