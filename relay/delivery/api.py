"""The AhaSend API v2 client: one ``httpx.AsyncClient`` per process, errors as ours.

``AhaSendClient.send`` POSTs one conversation message and returns a ``Delivery``, or
raises the ``replies.RelayError`` that the HTTP status (never the message text) calls for.
Network failures become ``UpstreamTimeout`` / ``UpstreamUnreachable``. The transport is
injectable, so tests and the benchmark can swap it without monkeypatching.

``send`` (the one request per message) hands its ``httpx.Request`` straight to the
transport, built from the URL and headers prepared once: the client's per-request work
(URL merge and parse, header merge, cookie jar, auth and redirect handling) was ~15 % of
the relay's CPU per small message and does nothing for this one fixed POST.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import httpx

from relay import __version__
from relay.delivery.sender import Delivery
from relay.errors import (
    MessageTooLarge,
    NothingQueued,
    RelayError,
    RelayMisconfigured,
    UpstreamBusy,
    UpstreamForbidden,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnexpected,
    UpstreamUnreachable,
)
from relay.ops.log import get_logger
from relay.smtp.replies import sanitize
from relay.translate.wire import Body, StreamedBody

__all__ = ["MAX_CONNECTIONS", "USER_AGENT", "AhaSendClient", "check_account", "error_for_status"]

log = get_logger("relay.delivery.api")
USER_AGENT: Final = f"ahasend-relay/{__version__}"
MAX_CONNECTIONS: Final = 100
"""Connections kept open to the API, at most (all reusable: keep-alive)."""
_ERROR_FOR_STATUS: Final[dict[int, type[RelayError]]] = {
    400: UpstreamRejected,
    401: RelayMisconfigured,
    403: UpstreamForbidden,
    404: RelayMisconfigured,
    # An egress proxy refusing the relay's proxy credentials (AHASEND_API_PROXY user:password).
    407: RelayMisconfigured,
    409: UpstreamBusy,
    413: MessageTooLarge,
    422: UpstreamRejected,
    429: UpstreamThrottled,
}


class AhaSendClient:
    """Sends conversation messages for one account. Use one instance per process."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        account_id: str,
        timeout: float = 30.0,
        max_connections: int = MAX_CONNECTIONS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._path = f"/v2/accounts/{account_id}/messages/conversation"
        self._account_path = f"/v2/accounts/{account_id}"
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._transport = transport or httpx.AsyncHTTPTransport(limits=limits)
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={
                "Authorization": f"Bearer {api_key}",
                "User-Agent": USER_AGENT,
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=self._transport,
            trust_env=False,  # proxies and the rest come from relay.config alone
        )
        self._send_url = self._client.build_request("POST", self._path).url  # base path kept
        self._send_headers = list(self._client.headers.raw)
        self._timeout = self._client.timeout.as_dict()

    async def send(self, body: Body, idempotency_key: str) -> Delivery:
        """POST ``body`` (a serialised request); a Delivery on 2xx, else a RelayError.

        A ``StreamedBody`` is sent as it is read, with its exact ``Content-Length`` (so
        not chunked): a new stream per call, so a retry sends it whole again.
        """
        headers = [*self._send_headers, (b"Idempotency-Key", idempotency_key.encode("ascii"))]
        content: bytes | AsyncIterator[bytes] = body if isinstance(body, bytes) else _stream(body)
        if not isinstance(body, bytes):
            headers.append((b"Content-Length", str(len(body)).encode("ascii")))
        request = httpx.Request(
            "POST", self._send_url, headers=headers, content=content,
            extensions={"timeout": self._timeout},
        )  # fmt: skip
        return _delivery(await self._round_trip(request))

    async def ping(self) -> None:
        """GET /v2/ping: proves the key works; raises a RelayError when it does not."""
        await self._request("GET", "/v2/ping")

    async def get_account(self) -> dict[str, Any]:
        """GET /v2/accounts/{account_id} (read-only; needs accounts:read), or a RelayError."""
        response = await self._request("GET", self._account_path)
        try:
            account = response.json()
        except ValueError:
            return {}
        return account if isinstance(account, dict) else {}

    async def aclose(self) -> None:
        await self._client.aclose()  # and its transport, the one ``send`` uses

    async def _round_trip(self, request: httpx.Request) -> httpx.Response:
        """``request`` through the transport, read whole; the 2xx, or the RelayError."""
        with _network_errors():
            response = await self._transport.handle_async_request(request)
            response.request = request
            try:
                await response.aread()
            finally:
                await response.aclose()
        return _successful(response)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; the 2xx response, or the RelayError for its status or failure."""
        with _network_errors():
            response = await self._client.request(method, path, **kwargs)
        return _successful(response)


async def _stream(body: StreamedBody) -> AsyncIterator[bytes]:
    """``body``'s chunks for httpx (which reads a request stream asynchronously)."""
    for chunk in body.chunks():
        yield chunk


@contextlib.contextmanager
def _network_errors() -> Iterator[None]:
    """httpx's timeouts as ``UpstreamTimeout``, its other transport errors as
    ``UpstreamUnreachable``."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(type(exc).__name__) from exc
    except httpx.TransportError as exc:
        raise UpstreamUnreachable(f"{type(exc).__name__}: {exc}") from exc


def _successful(response: httpx.Response) -> httpx.Response:
    """``response`` when it is a 2xx, else the RelayError for its status."""
    if not response.is_success:
        raise error_for_status(response)
    return response


async def check_account(client: AhaSendClient) -> RelayError | None:
    """Read the account once (``GET /v2/accounts/{id}``); the error, or None when it worked.

    The relay does it at start-up so that ``/readyz`` knows a refused key (401) before
    the first message: the outcome reaches it through the metered transport. A 403 (a
    key without the ``accounts:read`` scope, enough for sending) is logged at info level.
    """
    try:
        await client.get_account()
    except RelayError as exc:
        level = log.info if isinstance(exc, UpstreamForbidden) else log.warning
        level("account_check_failed", error=type(exc).__name__, detail=exc.detail)
        return exc
    log.info("account_check_ok")
    return None


def error_for_status(response: httpx.Response) -> RelayError:
    """The RelayError for a non-2xx ``response``, chosen by status code alone."""
    status = response.status_code
    detail = _api_message(response)
    cls = _ERROR_FOR_STATUS.get(status)
    if cls is None:
        cls = UpstreamServerError if status >= 500 else UpstreamUnexpected
    if issubclass(cls, UpstreamThrottled):
        return cls(detail, retry_after=_retry_after(response))
    if cls is RelayMisconfigured:
        log.error("upstream_refused_credentials", status=status, api_message=detail)
    return cls(detail)


def _api_message(response: httpx.Response) -> str:
    """The ``message`` of an ErrorResponse, or the status line when there is none."""
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    text = message if isinstance(message, str) and message else response.reason_phrase
    return sanitize(f"{response.status_code} {text}")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _delivery(response: httpx.Response) -> Delivery:
    """A Delivery from a 2xx; NothingQueued when every listed recipient failed.

    A 2xx the relay cannot fully read still means AhaSend took the message (answering
    4xx would make the client send it twice): it is logged as ``malformed_accepted`` with
    the status and a short description naming no content, and counts as accepted.
    """
    replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
    try:
        queued, failures = _outcomes(_items(response))
    except _Unreadable as exc:
        log.warning("malformed_accepted", status=response.status_code, problem=str(exc))
        return Delivery(response.status_code, replayed=replayed)
    if failures and not queued:
        raise NothingQueued("; ".join(f"{rcpt}: {why}" for rcpt, why in failures))
    return Delivery(response.status_code, queued, failures, replayed)


class _Unreadable(Exception):
    """A 2xx body not shaped as a CreateMessageResponse; the text names no content."""


def _outcomes(items: list[Any]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The queued message ids and the (recipient, error) failures of a 2xx's ``data``."""
    queued: list[str] = []
    failures: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _Unreadable(f"data[{index}] is not an object")
        if item.get("status") != "error":
            if item.get("id"):
                queued.append(str(item["id"]))
            continue
        recipient = item.get("recipient")
        if not isinstance(recipient, dict) or not isinstance(recipient.get("email"), str):
            raise _Unreadable(f"data[{index}].recipient is not an object with an email")
        failures.append((recipient["email"], sanitize(str(item.get("error") or ""))))
    return tuple(queued), tuple(failures)


def _items(response: httpx.Response) -> list[Any]:
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise _Unreadable("body is not JSON") from exc
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise _Unreadable("no data list")
    return data
