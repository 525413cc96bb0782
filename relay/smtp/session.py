"""aiosmtpd's SMTP protocol, adjusted to answer like a mature MTA.

- Every reply carries an RFC 3463 enhanced status code (``replies.with_enhanced_code``),
  including those aiosmtpd writes itself (``503 Error: need MAIL command``), except the
  greeting and the HELO/EHLO answers, as RFC 2034 §3 requires.
- Each connection runs with ``session_id`` and ``peer`` bound in structlog's contextvars,
  and ends with one ``session`` log event (at debug level when the client never sent
  MAIL: health checks and load-balancer probes would otherwise log a line every few
  seconds).
- The line length limit is configurable: old HTML generators send lines far over 998
  octets, and aiosmtpd's default would answer ``500 Line too long`` and lose the mail.
- DATA is read in chunks (``relay.smtp.dataread``), not line by line: same replies, a fraction
  of aiosmtpd's CPU and peak memory for large messages.
- MAIL/RCPT parameters (``BODY=8BITMIME``, ``SIZE=``) are accepted after HELO too, as
  Postfix does: some clients greet with HELO and still send them.
- The RFC 4954 §5 ``AUTH=`` MAIL parameter (``MAIL FROM:<a@b> AUTH=<>``, sent by Postfix
  and other clients once AUTH is advertised) is accepted and ignored: it is informational
  and never authenticates anybody (only the AUTH command does).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from typing import Any, AnyStr

import structlog
from aiosmtpd.smtp import MISSING, SMTP

from relay.ops.log import get_logger
from relay.smtp.dataread import DataOutcome, read_data
from relay.smtp.replies import with_enhanced_code

__all__ = ["RelaySMTP"]

log = get_logger("relay.smtp.session")


class RelaySMTP(SMTP):
    """One SMTP session. Extra keyword: ``max_line_length`` (octets, CRLF included)."""

    def __init__(self, handler: Any, *, max_line_length: int = 1001, **kwargs: Any) -> None:
        # aiosmtpd sizes its StreamReader from this attribute inside __init__.
        self.line_length_limit = max_line_length
        super().__init__(handler, **kwargs)
        self.session_id = secrets.token_hex(6)
        self._raw_replies = False
        self._in_mail = False
        self.transactions = 0
        self.mail_attempted = False

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and not self._raw_replies:
            status = with_enhanced_code(status)
        await super().push(status)

    async def smtp_HELO(self, hostname: str) -> None:
        await self._unmarked(super().smtp_HELO(hostname))

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._unmarked(super().smtp_EHLO(hostname))

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA (same checks, same replies), reading the content in chunks."""
        if self._decode_data:  # the relay never decodes; keep aiosmtpd's reader then
            await super().smtp_DATA(arg)
            return
        if not await self._data_allowed(arg):
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            result = await read_data(self._reader, self.data_size_limit, self.line_length_limit)
        except asyncio.CancelledError:
            self._writer.close()  # the connection was lost during DATA
            raise
        except asyncio.IncompleteReadError:
            self._writer.close()
            return
        if result.outcome is not DataOutcome.OK:
            await self.push(_DATA_FAILURE[result.outcome])
            self._end_transaction()
            return
        assert self.envelope is not None
        self.envelope.content = self.envelope.original_content = result.content
        del result  # the envelope holds the only reference: the handler can free it early
        await self._deliver()

    async def _deliver(self) -> None:
        """Run the handler's DATA hook on the envelope and answer with its status."""
        status = await self._call_handler_hook("DATA") if "DATA" in self._handle_hooks else MISSING
        self._end_transaction()
        await self.push("250 OK" if status is MISSING else status)

    def _end_transaction(self) -> None:
        self._set_post_data_state()  # type: ignore[no-untyped-call]

    async def _data_allowed(self, arg: str) -> bool:
        """aiosmtpd's preconditions for DATA; False once the refusal is answered."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return False
        if self.envelope is None or not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return False
        if arg:
            await self.push("501 Syntax: DATA")
            return False
        return True

    async def smtp_MAIL(self, arg: str) -> None:
        self.mail_attempted = True
        self._in_mail = True
        try:
            await self._as_extended(super().smtp_MAIL(arg))
        finally:
            self._in_mail = False

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        """aiosmtpd's parameter parsing, with MAIL's ``AUTH=`` dropped (RFC 4954 §5)."""
        result = super()._getparams(params)
        if result is not None and self._in_mail:
            result.pop("AUTH", None)
        return result

    async def smtp_RCPT(self, arg: str) -> None:
        await self._as_extended(super().smtp_RCPT(arg))

    async def _as_extended(self, command: Any) -> None:
        """Run ``command`` as in an EHLO session, so a HELO client may use ESMTP parameters."""
        session = self.session
        if session is None or session.extended_smtp or not session.host_name:
            await command
            return
        session.extended_smtp = True
        try:
            await command
        finally:
            session.extended_smtp = False

    async def _unmarked(self, command: Any) -> None:
        """Run ``command`` with its replies sent as written (no enhanced code added)."""
        self._raw_replies = True
        try:
            await command
        finally:
            self._raw_replies = False

    async def _handle_client(self) -> None:
        peer = _format_peer(self.session.peer if self.session else None)
        structlog.contextvars.bind_contextvars(session_id=self.session_id, peer=peer)
        started = time.perf_counter()
        try:
            await super()._handle_client()
        finally:
            probe = not (self.transactions or self.mail_attempted)  # health checks, LBs
            (log.debug if probe else log.info)(
                "session",
                transactions=self.transactions,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )


_DATA_FAILURE = {
    DataOutcome.TOO_LONG: "500 Line too long (see RFC5321 4.5.3.1.6)",
    DataOutcome.TOO_MUCH: "552 Error: Too much mail data",
}


def _format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)
