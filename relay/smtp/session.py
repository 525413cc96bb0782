"""The SMTP session: aiosmtpd's protocol, answering like a mature MTA, guarded, drainable.

- Every reply carries an RFC 3463 enhanced status code (``replies.with_enhanced_code``),
  including those aiosmtpd writes itself (``503 Error: need MAIL command``), except the
  greeting and the HELO/EHLO answers, as RFC 2034 §3 requires.
- Each connection runs with ``session_id`` and ``peer`` bound in structlog's contextvars,
  and ends with one ``session`` log event (at debug level when the client never sent
  MAIL: health checks and load-balancer probes would otherwise log a line every few
  seconds).
- The line length limit is ``RELAY_MAX_LINE_LENGTH``: old HTML generators send lines far
  over 998 octets, and aiosmtpd's default would answer ``500 Line too long`` and lose the mail.
- DATA is read in chunks (``relay.smtp.dataread``), not line by line: same replies, a fraction
  of aiosmtpd's CPU and peak memory for large messages.
- MAIL/RCPT parameters (``BODY=8BITMIME``, ``SIZE=``) are accepted after HELO too, as
  Postfix does: some clients greet with HELO and still send them.
- The RFC 4954 §5 ``AUTH=`` MAIL parameter (``MAIL FROM:<a@b> AUTH=<>``, sent by Postfix
  and other clients once AUTH is advertised) is accepted and ignored: it is informational
  and never authenticates anybody (only the AUTH command does).
- The security layer (``relay.smtp.access`` decides, ``relay.smtp.guard`` hooks in): the
  client is admitted before the greeting (after the PROXY header with the PROXY protocol);
  AUTH PLAIN and LOGIN (any letter case, with or without an initial response) are verified
  off the event loop (``relay.smtp.auth``), ``235 2.7.0`` / ``535 5.7.8``, ``421 4.7.0`` and
  the connection closed after ``RELAY_AUTH_MAX_FAILURES``; an idle session gets ``421 4.4.2``.
- The idle timer (``RELAY_SMTP_TIMEOUT``) measures the client, not the relay: it stops once
  the DATA section is read and restarts after the reply, so a slow upload to AhaSend (or a
  delivery that ends in the spool) is always answered and logged, never cut with 421.
- At shutdown ``drain`` closes the session with ``421 4.3.2``: at once between
  transactions, else right after the transaction in progress (DATA answered, or RSET);
  ``cut`` answers ``421 4.3.2`` and closes a session still open when the shutdown ends.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any, AnyStr, Final, cast

import structlog
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, syntax

from relay import __version__
from relay.ops.log import get_logger
from relay.smtp.access import ClientState
from relay.smtp.auth import decode_response, split_plain
from relay.smtp.dataread import DataOutcome, DataResult, read_data
from relay.smtp.guard import Guard, GuardedHandler
from relay.smtp.paths import simple_path
from relay.smtp.policy import format_peer, ip_of
from relay.smtp.replies import (
    AIOSMTPD_STARTTLS_REQUIRED,
    AUTH_BAD_BASE64,
    AUTH_CANNOT_SPLIT,
    AUTH_NOT_ENABLED,
    AUTH_OK,
    CLIENT_NOT_ALLOWED,
    DATA_LINE_TOO_LONG,
    DATA_SYNTAX,
    INFLIGHT_BUDGET_FULL,
    NEED_RCPT,
    SERVICE_NOT_AVAILABLE,
    START_DATA,
    STARTTLS_REQUIRED,
    TIMEOUT,
    TLS_ALREADY_ACTIVE,
    TOO_MANY_JUNK_COMMANDS,
    TOO_MUCH_DATA,
    Reply,
    with_enhanced_code,
)

__all__ = ["PRIVATE_AIOSMTPD_NAMES", "RelaySession", "without_auth_param"]

log = get_logger("relay.smtp.session")

PRIVATE_AIOSMTPD_NAMES: Final = (
    "_handle_client",
    "_reader",
    "_timeout_cb",
    "_timeout_handle",
    "_reset_timeout",
    "_getaddr",
)
"""The private aiosmtpd names the relay touches, all in ``RelaySession`` (see its docstring)."""


class RelaySession(SMTP):
    """One SMTP session of a RelayServer; see the module docstring for what it does.

    aiosmtpd's public extension points carry almost all of it: the handler hooks
    (``relay.smtp.guard.GuardedHandler`` in front of the delivery handler: ``handle_PROXY``,
    ``handle_EHLO/MAIL/RCPT/DATA``, ``handle_exception``), the ``smtp_*`` command methods,
    the ``auth_PLAIN``/``auth_LOGIN`` mechanism hooks (``challenge_auth``, ``AuthResult``),
    ``push`` and ``connection_lost``. Six private aiosmtpd names remain, where aiosmtpd
    has no public hook (``PRIVATE_AIOSMTPD_NAMES``; pinned by ``aiosmtpd>=1.4.6,<1.5``, and
    ``tests/test_aiosmtpd_private.py`` fails naming the attribute if an upgrade drops one):

    - ``_handle_client`` (the coroutine serving the connection): wrapped to admit the client
      before the greeting, bind the log context, remember its task (``task``, for
      ``relay.smtp.drain.finish_sessions``) and log the ``session`` event at the end;
    - ``_reader`` (the connection's ``StreamReader``): DATA is read from it in chunks;
    - ``_timeout_cb`` (aiosmtpd's idle timer expired): ``421 4.4.2`` before aiosmtpd closes;
    - ``_timeout_handle`` (the idle timer's ``TimerHandle``): cancelled while the relay works
      on a received DATA (translation, delivery or spooling), so a slow API never trips the
      client's idle timeout;
    - ``_reset_timeout`` (aiosmtpd re-arms the idle timer): called once the DATA reply is
      written, so the client gets a full ``RELAY_SMTP_TIMEOUT`` for its next command; and
      overridden so that, while the relay is stressed (``ConnectionLimiter.stressed``),
      every re-arm uses RELAY_STRESS_SMTP_TIMEOUT, and sessions idle between transactions
      are re-armed to it when stress begins (Postfix's ``smtpd_timeout = ${stress?10}{300}``).
    - ``_getaddr`` (the address parse of MAIL and RCPT): the plain ``<local@domain>`` form
      parsed by ``relay.smtp.paths.simple_path`` (same result, a tenth of aiosmtpd's
      cost), every other form by aiosmtpd's own.

    Room to grow: connection rules at connect belong in ``Guard.admit`` /
    ``relay.smtp.access``; command limits and answers (a second STARTTLS) in ``smtp_*``
    overrides; more idle-timer policy next to ``_pause_idle_timer``.
    """

    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def __init__(
        self,
        handler: Any,
        *,
        guard: Guard,
        registry: set[RelaySession] | None = None,
        implicit_tls: bool = False,
    ) -> None:
        """A session forwarding to ``handler``; it leaves ``registry`` when it closes."""
        settings = guard.settings
        # aiosmtpd sizes its StreamReader from this attribute inside __init__.
        self.line_length_limit = settings.relay_max_line_length
        self.guard = guard
        self.implicit_tls = implicit_tls
        self.session_id = secrets.token_hex(6)
        self.transactions = 0
        self.mail_attempted = False
        self.client = ClientState()
        self._registry = registry if registry is not None else set()
        self._serving: asyncio.Task[None] | None = None
        self._holds_slot = False
        self._auth_failures = 0
        self._draining = False
        self._delivering = False
        self._raw_replies = False
        self._junk_commands = 0
        super().__init__(
            GuardedHandler(handler, guard.access, guard.on_refusal),
            hostname=settings.relay_hostname,
            ident=f"ahasend-relay {__version__} ESMTP",
            data_size_limit=settings.relay_max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,  # the relay never decodes: DATA below relies on it
            timeout=settings.relay_smtp_timeout,
            **guard.session_options(implicit_tls),
        )

    @property
    def peer(self) -> Any:
        """The connected peer (``(host, port)``; the load balancer with the PROXY protocol)."""
        return self.session.peer if self.session is not None else None

    @property
    def delivering(self) -> bool:
        """True from the end of a DATA section until its reply is written."""
        return self._delivering

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task serving this connection, once it has started."""
        return self._serving

    # -- the connection ----------------------------------------------------------------
    async def _handle_client(self) -> None:
        self._serving = cast(asyncio.Task[None], asyncio.current_task())
        if self._draining:  # connected while the server began to shut down
            self._refuse()
            return
        if not await self._let_in():
            return
        peer = format_peer(self.peer)
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

    async def _let_in(self) -> bool:
        """Admit the peer; with the PROXY protocol, only check that it may name the client."""
        address = ip_of(self.peer)
        if not self.guard.settings.relay_proxy_protocol:
            return await self.admit(address)
        if self.guard.access.proxy_peer_trusted(address):
            return True  # the client it names is admitted at its header (handle_PROXY)
        log.warning("proxy_peer_untrusted", client=address)
        self.guard.on_refusal(CLIENT_NOT_ALLOWED)
        self._close()
        return False

    async def admit(self, address: str) -> bool:
        """Admit the client at ``address``, or answer its refusal and close; True if admitted."""
        admission = self.guard.admit(address)
        self.client = admission.client
        self._holds_slot = admission.holds_slot
        refusal = admission.refusal
        if refusal is None:
            if self.guard.limiter.stressed:
                self._stress_everyone()
            return True
        self.guard.on_refusal(refusal)
        log.warning("connection_refused", client=address, reply=refusal.code,
                    enhanced=refusal.enhanced, reason=refusal.text)  # fmt: skip
        await self.push(str(refusal))
        self._close()
        return False

    def connection_lost(self, error: Exception | None) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self.guard.limiter.release(self.client.address)
        super().connection_lost(error)
        self._registry.discard(self)

    def _timeout_cb(self) -> None:
        """aiosmtpd's idle timer expired: ``421 4.4.2``, then aiosmtpd closes."""
        self._write_now(TIMEOUT)
        log.info("timeout", client=self.client.address)
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's (address, rest) of a MAIL/RCPT argument; the plain form the quick way."""
        quick = simple_path(arg, self.local_part_limit)
        if quick is not None:
            return quick
        return super()._getaddr(arg)

    # -- shutdown ----------------------------------------------------------------------
    def drain(self) -> None:
        """Close with ``421 4.3.2`` now if between transactions, else when this one ends."""
        self._draining = True
        if self.envelope is None or self.envelope.mail_from is None:
            self._refuse()

    def cut(self) -> None:
        """The shutdown's last word: ``421 4.3.2`` and close, whatever the session is doing
        (a client still uploading DATA, a transaction that overran every grace period)."""
        self._draining = True
        self._refuse()

    async def smtp_RSET(self, arg: str) -> None:
        if await self._junk():
            return
        await super().smtp_RSET(arg)
        self._close_if_draining()

    # -- junk commands (Postfix smtpd_junk_command_limit) -------------------------------
    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_NOOP(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_HELP(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_VRFY(arg)

    async def smtp_EXPN(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_EXPN(arg)

    async def _junk(self) -> bool:
        """Count a command outside a transaction; past the limit ``421 4.7.0``, close, True."""
        if self.envelope is not None and self.envelope.mail_from is not None:
            return False
        self._junk_commands += 1
        if self._junk_commands <= self.guard.settings.relay_junk_command_limit:
            return False
        log.info("junk_commands", client=self.client.address, count=self._junk_commands)
        await self.push(str(TOO_MANY_JUNK_COMMANDS))
        self._close()
        return True

    def _close_if_draining(self) -> None:
        if self._draining:
            self._refuse()

    def _refuse(self) -> None:
        """Send ``421 4.3.2`` and close (the write is flushed before the close)."""
        self._write_now(SERVICE_NOT_AVAILABLE)
        self._close()

    def _write_now(self, reply: Reply) -> None:
        """``reply`` written at once, outside the command flow (timers, shutdown)."""
        transport = cast(asyncio.WriteTransport | None, self.transport)  # uvloop's too
        if transport is not None and not transport.is_closing():
            transport.write(f"{reply}\r\n".encode("ascii"))

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- replies -----------------------------------------------------------------------
    async def push(self, status: AnyStr) -> None:
        """Every reply, with its enhanced code; aiosmtpd's own STARTTLS-first refusal is
        counted like the relay's refusals."""
        if status == AIOSMTPD_STARTTLS_REQUIRED:
            self.guard.on_refusal(STARTTLS_REQUIRED)
        if isinstance(status, str) and not self._raw_replies:
            status = with_enhanced_code(status)
        await super().push(status)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        """``554 5.5.1`` inside TLS (implicit or after STARTTLS), as Postfix; else aiosmtpd's."""
        if self.transport is not None and self.transport.get_extra_info("sslcontext"):
            await self.push(str(TLS_ALREADY_ACTIVE))
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_HELO(self, hostname: str) -> None:
        await self._unmarked(super().smtp_HELO(hostname))

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._unmarked(super().smtp_EHLO(hostname))

    async def _unmarked(self, command: Coroutine[Any, Any, None]) -> None:
        """Run ``command`` with its replies sent as written (no enhanced code added)."""
        self._raw_replies = True
        try:
            await command
        finally:
            self._raw_replies = False

    # -- the transaction ---------------------------------------------------------------
    async def smtp_MAIL(self, arg: str | None) -> None:
        self.mail_attempted = True
        await self._as_extended(super().smtp_MAIL(without_auth_param(arg)))

    async def smtp_RCPT(self, arg: str | None) -> None:
        await self._as_extended(super().smtp_RCPT(arg))

    async def _as_extended(self, command: Coroutine[Any, Any, None]) -> None:
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

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA (same checks, same replies), reading the content in chunks."""
        await self._receive(arg)
        self._close_if_draining()

    async def _receive(self, arg: str) -> None:
        if not await self._data_allowed(arg):
            return
        if self.guard.inflight.full:
            await self._refuse_data(INFLIGHT_BUDGET_FULL)
            return
        hold = self.guard.inflight.hold()  # this message's bytes, until its reply
        try:
            await self.push(START_DATA)
            result = await self._read_content(hold.take_or_drop)
            if result is None:
                return
            if result.outcome is not DataOutcome.OK:
                hold.release()
                await self._refuse_data(_DATA_FAILURE[result.outcome])
                return
            assert self.envelope is not None
            # A bytearray, not copied to bytes (relay.smtp.dataread): every reader of the
            # content (handler, translator, Idempotency-Key) takes either.
            self.envelope.content = self.envelope.original_content = cast(bytes, result.content)
            del result  # the envelope holds the only reference: the handler can free it early
            await self._deliver()
        finally:
            hold.release()

    async def _refuse_data(self, reply: Reply) -> None:
        """Answer a DATA that is not taken and end the transaction."""
        if reply is INFLIGHT_BUDGET_FULL:
            budget = self.guard.inflight
            log.warning("inflight_budget_full", used=budget.used, limit=budget.limit)
            self.guard.on_refusal(reply)
        await self.push(str(reply))
        self._end_transaction()

    async def _data_allowed(self, arg: str) -> bool:
        """aiosmtpd's preconditions for DATA; False once the refusal is answered."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return False
        if self.envelope is None or not self.envelope.rcpt_tos:
            await self.push(str(NEED_RCPT))
            return False
        if arg:
            await self.push(str(DATA_SYNTAX))
            return False
        return True

    async def _read_content(self, take: Callable[[int], bool]) -> DataResult | None:
        """The DATA section, from aiosmtpd's reader, each chunk ``take``n from the in-flight
        budget; None if the connection ended first."""
        try:
            return await read_data(self._reader, self.data_size_limit, self.line_length_limit, take)
        except asyncio.CancelledError:
            self._close()  # the connection was lost during DATA
            raise
        except asyncio.IncompleteReadError:
            self._close()
            return None

    async def _deliver(self) -> None:
        """Run the handler's DATA hook on the envelope and answer with its status.

        The idle timer is paused meanwhile: the client is waiting for us, not idle.
        """
        self._pause_idle_timer()
        self._delivering = True
        try:
            status = await self.event_handler.handle_DATA(self, self.session, self.envelope)
            self._end_transaction()
            await self.push(status)
        finally:
            self._delivering = False
            self._resume_idle_timer()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd re-arms the idle timer: RELAY_STRESS_SMTP_TIMEOUT while stressed."""
        if duration is None and self.guard.limiter.stressed:
            duration = self.guard.settings.stress_smtp_timeout
        super()._reset_timeout(duration)

    def _stress_everyone(self) -> None:
        """The relay just became (or still is) stressed: every open session idle between
        transactions gets at most the stress timeout from now (one in a transaction gets it
        at its next command)."""
        stress = self.guard.settings.stress_smtp_timeout
        for session in list(self._registry):
            session._shorten_idle_timer(stress)

    def _shorten_idle_timer(self, seconds: float) -> None:
        """Re-arm the idle timer to fire within ``seconds`` (never later than it would)."""
        handle = self._timeout_handle
        in_transaction = self.envelope is not None and self.envelope.mail_from is not None
        if handle is None or handle.cancelled() or in_transaction:
            return
        if handle.when() > self.loop.time() + seconds:
            self._reset_timeout(seconds)

    def _resume_idle_timer(self) -> None:
        """Re-arm the idle timer for a full ``RELAY_SMTP_TIMEOUT`` (if still connected)."""
        if self.transport is not None and not self.transport.is_closing():
            self._reset_timeout()

    def _pause_idle_timer(self) -> None:
        """Stop aiosmtpd's idle timer until ``_reset_timeout`` re-arms it."""
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()  # connection_lost cancels it again: harmless

    def _end_transaction(self) -> None:
        self.envelope = Envelope()  # what aiosmtpd's own DATA leaves behind

    # -- AUTH --------------------------------------------------------------------------
    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if self.guard.authenticator is None:
            await self.push(str(AUTH_NOT_ENABLED))
            return
        mechanism, _, rest = (arg or "").strip().partition(" ")
        await super().smtp_AUTH(f"{mechanism.upper()} {rest}".strip() if arg else arg)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        """RFC 4616 PLAIN, read as aiosmtpd reads it, verified off the event loop."""
        message = await self._response(args, "")
        if message is None:
            return AuthResult(success=False)  # answered already
        credentials = split_plain(message)
        if credentials is None:
            await self.push(str(AUTH_CANNOT_SPLIT))
            return AuthResult(success=False)
        return await self._verify(*credentials)

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        """LOGIN (user name, then password), read as aiosmtpd reads it, verified off the loop."""
        login = await self._response(args, self.AuthLoginUsernameChallenge)
        if login is None:
            return AuthResult(success=False)
        password = await self._challenge(self.AuthLoginPasswordChallenge)
        if password is None:
            return AuthResult(success=False)
        return await self._verify(login, password)

    async def _response(self, args: list[str], challenge: str) -> bytes | None:
        """The AUTH command's initial response, else the answer to ``challenge``.

        None when the client's part is unusable: the refusal is answered already.
        """
        if len(args) == 1:
            return await self._challenge(challenge)
        decoded = decode_response(args[1])
        if decoded is None:
            await self.push(str(AUTH_BAD_BASE64))
        return decoded

    async def _challenge(self, challenge: str) -> bytes | None:
        answer = await self.challenge_auth(challenge)
        return answer if isinstance(answer, bytes) else None  # MISSING: answered already

    async def _verify(self, login: bytes, password: bytes) -> AuthResult:
        """Check the credentials (a worker thread, a tarpit on failure): the AuthResult."""
        assert self.guard.authenticator is not None  # smtp_AUTH refuses AUTH otherwise
        user = await self.guard.authenticator.verify(self.client.address, login, password)
        if user is None:
            return await self._auth_failed(login)
        log.info("auth_succeeded", user=user.name)
        # aiosmtpd keeps auth_data in its Session, which STARTTLS replaces: forgotten then.
        return AuthResult(success=True, auth_data=user, message=str(AUTH_OK))

    async def _auth_failed(self, login: bytes) -> AuthResult:
        self._auth_failures += 1
        self.guard.on_auth_failure()
        log.warning("auth_failed", user=login.decode("utf-8", "replace")[:64],
                    failures=self._auth_failures, client=self.client.address)  # fmt: skip
        verdict = self.guard.access.auth_failure(self._auth_failures)
        if not verdict.disconnect:
            return AuthResult(success=False, handled=False, message=str(verdict.reply))
        self.guard.on_refusal(verdict.reply)
        await self.push(str(verdict.reply))
        self._close()
        return AuthResult(success=False, handled=True)


_DATA_FAILURE: Final = {
    DataOutcome.TOO_LONG: DATA_LINE_TOO_LONG,
    DataOutcome.TOO_MUCH: TOO_MUCH_DATA,
    DataOutcome.NO_ROOM: INFLIGHT_BUDGET_FULL,
}

_AUTH_PARAM = re.compile(r"AUTH(=.+)?", re.IGNORECASE)
"""RFC 4954 §5 ``AUTH=<mailbox>`` (a bare ``AUTH`` too, as aiosmtpd parses parameters)."""


def without_auth_param(arg: str | None) -> str | None:
    """MAIL's argument (``FROM:<path> [params]``) without its ``AUTH=`` parameter.

    Unchanged when there is none (or no ``FROM:``): aiosmtpd then answers it as it would.
    """
    if arg is None or arg[:5].upper() != "FROM:":
        return arg
    path, params = _split_path(arg[5:].strip())
    kept = [p for p in params.split() if not _AUTH_PARAM.fullmatch(p)]
    if len(kept) == len(params.split()):
        return arg
    return " ".join([f"FROM:{path}", *kept])


def _split_path(text: str) -> tuple[str, str]:
    """(reverse-path, parameters) of ``text``; a ``<...>`` path may quote spaces and ``>``."""
    if not text.startswith("<"):
        path, *params = text.split(None, 1) or [""]
        return path, "".join(params)
    quoted = escaped = False
    for end, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return text[: end + 1], text[end + 1 :]
    return text, ""
