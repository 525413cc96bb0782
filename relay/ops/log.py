"""structlog, configured once: contextvars, levels, secret scrubbing, JSON or console output.

Per-session context (``session_id``, ``peer``) is bound with ``structlog.contextvars`` by
the handler; every event logged while serving that session carries it. Each message gets
one canonical ``message`` event (see ``handler``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["SecretScrubber", "configure", "get_logger"]

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
) -> SecretScrubber:
    """Configure structlog for the whole process; returns the scrubber to register secrets.

    ``fmt`` is ``json`` or ``console``; None picks console on a TTY and JSON otherwise.
    """
    out = stream if stream is not None else sys.stderr
    fmt = fmt or ("console" if out.isatty() else "json")
    scrubber = SecretScrubber(secrets)
    structlog.configure(
        processors=_processors(fmt, scrubber),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.ERROR)),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    return scrubber


def _processors(fmt: str, scrubber: SecretScrubber) -> list[Processor]:
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "console":
        tracebacks: Processor = structlog.processors.format_exc_info
        renderer: Processor = structlog.dev.ConsoleRenderer(colors=False)
    else:
        tracebacks, renderer = (
            # Never the frames' local variables: they hold message content and secrets.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(),
        )
    # The scrubber runs last before rendering so that tracebacks are scrubbed too.
    return [*shared, tracebacks, scrubber, renderer]


def get_logger(name: str) -> Any:
    """A lazy structlog logger bound to ``logger_name=name``; it follows later ``configure``."""
    return structlog.get_logger(logger_name=name)
