"""structlog, configured once: contextvars, levels, secret scrubbing, JSON or console output.

Every line of the process goes through here: structlog's own events, and the records of
stdlib loggers (aiosmtpd, asyncio, httpx, aiohttp), which ``configure`` routes through
structlog's ``ProcessorFormatter`` so they get the same context, scrubbing and format.

Per-session context (``session_id``, ``peer``) is bound with ``structlog.contextvars`` by
the handler; every event logged while serving that session carries it. Each message gets
one canonical ``message`` event (see ``handler``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["RecipientPrivacy", "SecretScrubber", "configure", "get_logger", "recipient_hash"]

REDACTED = "[REDACTED]"
_SECRET_KEYS = frozenset({"password", "api_key", "authorization", "secret", "auth_data"})
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class SecretScrubber:
    """A processor that hides secret values, whatever key or text they hide in.

    Keys that name a secret are replaced outright; any known secret string (the API key,
    passwords registered at runtime) is masked inside every other string value.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = {s for s in secrets if s}

    def add(self, secret: str) -> None:
        """Mask ``secret`` from now on (e.g. a password seen during AUTH)."""
        if secret:
            self._secrets.add(secret)

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            if key.lower() in _SECRET_KEYS:
                event[key] = REDACTED
            else:
                event[key] = self._scrub(value)
        return event

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, MutableMapping):
            return {
                k: REDACTED if str(k).lower() in _SECRET_KEYS else self._scrub(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value


def configure(
    *,
    fmt: str | None = None,
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    recipients: str = "plain",
    cache: bool = False,
) -> SecretScrubber:
    """Configure structlog and the stdlib's logging for the whole process; returns the
    scrubber to register secrets with.

    ``fmt`` is ``json`` or ``console``; None picks console on a TTY and JSON otherwise.
    Records of stdlib loggers (aiosmtpd, asyncio, httpx, aiohttp, warnings) are rendered by
    the same processors, scrubber included, onto the same stream, one line each; they are
    shown from WARNING up, or everything at ``level="debug"``. ``recipients`` is how
    envelope recipients appear (``RELAY_LOG_RECIPIENTS``: plain, hash or none; with hash
    or none aiosmtpd's protocol trace, shown at debug, is dropped).
    ``cache`` (the serving process, configured once): each logger resolves its
    configuration on first use instead of on every call; a later ``configure`` then no
    longer reaches loggers already used, so tests that reconfigure leave it off.
    """
    out = stream if stream is not None else sys.stderr
    fmt = fmt or ("console" if out.isatty() else "json")
    scrubber = SecretScrubber(secrets)
    chain = _processors(fmt, scrubber, recipients)
    structlog.configure(
        processors=[*_SHARED, *chain],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.ERROR)),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=cache,
    )
    _route_stdlib(out, chain, logging.DEBUG if level == "debug" else _STDLIB_FLOOR.get(level))
    if recipients != "plain":
        _without_protocol_trace()
    return scrubber


_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
_STDLIB_FLOOR = {"info": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}


def _processors(fmt: str, scrubber: SecretScrubber, recipients: str) -> list[Processor]:
    """What runs after the shared processors: tracebacks, privacy, scrubbing, rendering."""
    if fmt == "console":
        tracebacks: Processor = structlog.processors.format_exc_info
        renderer: Processor = structlog.dev.ConsoleRenderer(colors=False)
    else:
        tracebacks, renderer = (
            # Never the frames' local variables: they hold message content and secrets.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(serializer=_json_line()),
        )
    # The scrubber runs last before rendering so that tracebacks are scrubbed too.
    return [tracebacks, RecipientPrivacy(recipients), scrubber, renderer]


def _json_line() -> Callable[..., str]:
    """What renders a JSON line: orjson (a default dependency) for an ASCII line, else the
    stdlib's ``json.dumps`` (structlog's default, ``ensure_ascii``: a line stays ASCII
    whatever the stream's encoding). orjson took the renderer from ~2 % of the relay's CPU
    per small message to a fraction of it; its lines are compact (no space after ``:``)."""
    try:
        orjson = importlib.import_module("orjson")
    except ImportError:
        return json.dumps
    option = orjson.OPT_NON_STR_KEYS

    def dumps(obj: Any, **kw: Any) -> str:
        try:
            line: str = orjson.dumps(obj, default=kw.get("default"), option=option).decode()
        except TypeError:  # an integer over 64 bits, a default that failed
            return json.dumps(obj, **kw)
        return line if line.isascii() else json.dumps(obj, **kw)

    return dumps


class RecipientPrivacy:
    """A processor showing envelope recipients plain, hashed or not at all.

    ``hash``: ``sha256:`` and the first 16 hex digits of the SHA-256 of the lowercased
    address, so one known address can still be found with grep; ``none`` drops them.
    Recipients appear in four shapes, all covered: the ``to`` / ``rcpt_tos`` lists, the
    ``refused`` list of ``{"recipient", "reason"}`` objects, the ``to`` / ``cc`` / ``bcc``
    of a logged API ``payload`` (dry run; names go too), and inside ``error_detail`` when
    the same event lists them in ``to`` (e.g. "alice@example.org: invalid").
    """

    KEYS = ("to", "rcpt_tos")
    PAYLOAD_KEYS = ("to", "cc", "bcc")

    def __init__(self, mode: str = "plain") -> None:
        self.mode = mode

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        if self.mode == "plain":
            return event
        listed = [str(a) for key in self.KEYS for a in _as_list(event.get(key))]
        for key in self.KEYS:
            if key in event:
                self._replace(event, key, _hashed(event[key]))
        if isinstance(event.get("refused"), list):
            event["refused"] = [self._refusal(item) for item in event["refused"]]
        if isinstance(event.get("payload"), dict):
            event["payload"] = self._payload(event["payload"])
        if listed and isinstance(event.get("error_detail"), str):
            event["error_detail"] = self._masked_text(event["error_detail"], listed)
        return event

    def _replace(self, mapping: MutableMapping[str, Any], key: str, hashed: Any) -> None:
        if self.mode == "none":
            del mapping[key]
        else:
            mapping[key] = hashed

    def _refusal(self, item: Any) -> Any:
        if not isinstance(item, dict) or "recipient" not in item:
            return item
        shown = dict(item)
        self._replace(shown, "recipient", recipient_hash(str(item["recipient"])))
        return shown

    def _payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        shown = dict(payload)
        for key in self.PAYLOAD_KEYS:
            if isinstance(shown.get(key), list):
                emails = [str(r.get("email", "")) for r in shown[key] if isinstance(r, dict)]
                self._replace(shown, key, [{"email": recipient_hash(e)} for e in emails])
        return shown

    def _masked_text(self, text: str, addresses: list[str]) -> str:
        for address in addresses:
            shown = recipient_hash(address) if self.mode == "hash" else "[recipient]"
            text = re.sub(re.escape(address), shown, text, flags=re.IGNORECASE)
        return text


def recipient_hash(address: str) -> str:
    """How ``RELAY_LOG_RECIPIENTS=hash`` shows ``address``."""
    return "sha256:" + hashlib.sha256(address.lower().encode("utf-8")).hexdigest()[:16]


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    return list(value) if isinstance(value, list | tuple) else []


def _hashed(value: Any) -> Any:
    if isinstance(value, str):
        return recipient_hash(value)
    if isinstance(value, list | tuple):
        return [recipient_hash(str(v)) for v in value]
    return value


class _StdlibHandler(logging.Handler):
    """Writes stdlib records through structlog's lock for ``out``: lines never interleave."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self._out = structlog.WriteLogger(out)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._out.msg(self.format(record))
        except Exception:
            self.handleError(record)


def _route_stdlib(out: TextIO, chain: list[Processor], level: int | None) -> None:
    """Replace the root logger's handler from an earlier ``configure`` with one onto ``out``."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(handler)
    handler = _StdlibHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, _logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *chain],
        )
    )
    handler.addFilter(_redact_unrecognised)
    root.addHandler(handler)
    root.setLevel(level if level is not None else logging.ERROR)
    logging.captureWarnings(True)


def _without_protocol_trace() -> None:
    """Drop aiosmtpd's debug trace of the SMTP conversation (logger ``mail.log``): it
    quotes every ``RCPT TO``, which RELAY_LOG_RECIPIENTS=hash|none keeps out of the log."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        handler.addFilter(lambda record: record.name != "mail.log")


def _logger_name(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    record = event.get("_record")
    if record is not None:
        event["logger_name"] = record.name
    return event


_KNOWN_VERBS = frozenset({
    "AUTH", "DATA", "EHLO", "EXPN", "HELO", "HELP", "MAIL", "NOOP", "QUIT", "RCPT", "RSET",
    "STARTTLS", "VRFY", "ATRN", "BDAT", "CONNECT", "ETRN", "GET", "HEAD", "OPTIONS", "POST",
    "PUT", "SAML", "SEND", "SOML", "TURN", "VERB", "XCLIENT", "XEXCH50", "XFORWARD", "XUSR",
})  # fmt: skip
_CLIENT_LINES = frozenset({"%r unrecognised: %s", "%r >> %r", "_handle_client readline: %r"})
"""aiosmtpd's records that quote what the client sent (AUTH lines it masks itself)."""


def _redact_unrecognised(record: logging.LogRecord) -> bool:
    """A client line that is no known command is often AUTH data sent out of turn (base64
    of a password): aiosmtpd's records quoting it show its length instead."""
    if record.name != "mail.log" or not record.args:
        return True
    *rest, line = tuple(record.args)
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
    if record.msg in _CLIENT_LINES and not _known_command(text):
        record.args = (*rest, _redacted(text))
    elif (
        record.msg == "%r << %r"  # "500 Error: command "..." not recognized"
        and (echo := _ECHOED.search(text))
        and not _known_command(echo[1])
    ):
        record.args = (*rest, text.replace(echo[1], _redacted(echo[1])))
    return True


_ECHOED = re.compile(r'command "(.*)" not recognized')


def _known_command(text: str) -> bool:
    words = text.split(maxsplit=1)
    return bool(words) and words[0].upper().split(":")[0] in _KNOWN_VERBS


def _redacted(text: str) -> str:
    return f"{REDACTED} ({len(text.strip())} characters)"


def log_uncaught_exceptions() -> None:
    """Log exceptions nothing caught (main thread, other threads) as ``crashed`` events."""
    log = get_logger("relay")

    def crashed(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        log.critical("crashed", exc_info=(kind, error, tb))

    sys.excepthook = crashed
    threading.excepthook = lambda args: crashed(
        args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback
    )


def get_logger(name: str) -> Any:
    """A lazy structlog logger bound to ``logger_name=name``; it follows later ``configure``."""
    return structlog.get_logger(logger_name=name)
