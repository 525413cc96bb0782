"""A real HTTP server that stands in for AhaSend's API v2 in end-to-end tests and benchmarks.

It listens on ``127.0.0.1`` (ephemeral port) and serves HTTP/1.1 with keep-alive from its own
asyncio event loop in a background thread, so synchronous tests can drive a relay against it.

Endpoints:

* ``POST /v2/accounts/{account_id}/messages/conversation`` - validated against the spec's
  ``CreateConversationMessageRequest`` *and* its prose rules, strictly (unknown fields are
  refused), with AhaSend's idempotency semantics; answers 202 with a spec-valid
  ``CreateMessageResponse`` unless a :class:`Scripted` response is queued.
* ``GET /v2/ping`` - ``{"message": "pong"}``.
* ``GET /v2/accounts/{account_id}`` - a minimal, spec-valid ``Account``.

Every request except ping and account look-ups is kept in :attr:`StandIn.requests`; those two
go to :attr:`StandIn.probes` so that ``standin.requests == []`` still means "nothing was sent".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import hashlib
import http
import itertools
import json
import re
import socket
import struct
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final

from tests import spec

DEFAULT_ACCOUNT_ID: Final = "5f0c8e8a-7d6b-4c1e-9a3f-2b1d0e9c8a7b"
DEFAULT_API_KEY: Final = "aha-sk-test"
MAX_RECIPIENTS: Final = 50
MAX_IDEMPOTENCY_KEY: Final = 255
_MAX_HEAD: Final = 64 * 1024

REQUEST_SCHEMA: Final = "CreateConversationMessageRequest"
IN_PROGRESS_MESSAGE: Final = "A request with this idempotency key is already in progress"
MISMATCH_MESSAGE: Final = "idempotency key was already used with a different request payload"
# Outcomes that do not complete an idempotent execution: the key is released, not stored.
_RELEASED: Final = frozenset({408, 409, 425, 429})

_ACCOUNT_PATH: Final = re.compile(r"/v2/accounts/([^/]+)")
_CONVERSATION_PATH: Final = re.compile(r"/v2/accounts/([^/]+)/messages/conversation")


@dataclasses.dataclass(frozen=True)
class Scripted:
    """One queued answer for the next valid conversation request.

    ``body`` is JSON-serialised (``bytes`` are sent verbatim); ``None`` means a spec-valid
    default: a ``CreateMessageResponse`` for 2xx, ``{"message": <reason phrase>}`` otherwise.
    ``headers`` are added to (and may override) the response headers. ``delay`` is added to the
    stand-in's own delay. ``hang`` never answers until the client closes the connection;
    ``reset`` closes the TCP connection abruptly (RST) without answering. ``status`` is
    irrelevant for ``hang``/``reset``.
    """

    status: int
    body: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False
    reset: bool = False


@dataclasses.dataclass(eq=False)
class Recorded:
    """One request as the stand-in saw it, and what it answered.

    ``response_status`` is 0 when no HTTP answer was sent (scripted ``hang`` or ``reset``).
    ``problems`` lists what the stand-in found wrong with the request (empty when valid).
    ``message_ids`` are the non-null ids in a 2xx ``CreateMessageResponse`` that was sent.
    ``body``/``json``/``response_body`` are empty/None when ``record_bodies=False``.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    response_status: int
    problems: list[str] = dataclasses.field(default_factory=list)
    replayed: bool = False
    message_ids: list[str] = dataclasses.field(default_factory=list)
    response_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    response_body: bytes = b""
    connection: int = 0
    received_at: float = 0.0

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")

    @property
    def accepted(self) -> bool:
        """Answered 2xx as a fresh execution (not a replay)."""
        return 200 <= self.response_status < 300 and not self.replayed


@dataclasses.dataclass
class _Request:
    method: str
    target: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes
    connection: int
    received_at: float

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclasses.dataclass
class _Response:
    status: int
    body: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    message_ids: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Stored:
    """An idempotency key's state: in progress (``response is None``) or completed."""

    fingerprint: tuple[str, str, bytes]
    response: _Response | None = None


class _BadRequest(Exception):
    """The bytes on the wire are not an HTTP/1.1 request we can parse."""


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, _json_bytes({"message": message}), dict(headers or {}))


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _message_ids(body: Any) -> list[str]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return []
    return [d["id"] for d in data if isinstance(d, dict) and isinstance(d.get("id"), str)]


def accepted_body(payload: Any) -> dict[str, Any]:
    """A spec-valid ``CreateMessageResponse``: one queued message per to/cc/bcc recipient."""
    data: list[dict[str, Any]] = []
    if isinstance(payload, dict):
        for field in ("to", "cc", "bcc"):
            addresses = payload.get(field)
            for address in addresses if isinstance(addresses, list) else []:
                if not isinstance(address, dict):
                    continue
                recipient = {
                    "email": str(address.get("email", "")),
                    "name": str(address.get("name", "")),
                }
                data.append({
                    "object": "message",
                    "id": f"<{uuid.uuid4()}@ahasend.test>",
                    "recipient": recipient,
                    "status": "queued",
                    "error": None,
                })  # fmt: skip
    return {"object": "list", "data": data}


def account_body(account_id: str) -> dict[str, Any]:
    """A minimal spec-valid ``Account``."""
    return {
        "object": "account",
        "id": account_id,
        "parent_account_id": None,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "name": "Stand-in Account",
        "website": "https://example.com",
        "about": "AhaSend stand-in for tests",
        "track_opens": False,
        "track_clicks": False,
        "reject_bad_recipients": False,
        "reject_mistyped_recipients": False,
        "message_metadata_retention": 30,
        "message_data_retention": 0,
        "owner_id": "00000000-0000-4000-8000-000000000001",
    }


class RequestRules:
    """The conversation request's schema plus the spec's prose rules, strictly.

    Built once; :meth:`problems` is cheap enough for benchmark traffic.
    """

    # Objects on which unknown fields are refused: the relay must never send undefined fields.
    STRICT: Final = ("Address", "Attachment", "Tracking", "Retention", "MessageSchedule")

    def __init__(self) -> None:
        self._validator = spec.validator(REQUEST_SCHEMA)
        schemas: dict[str, Any] = self._validator.schema["components"]["schemas"]
        self._known = {
            name: frozenset(schemas[name]["properties"]) for name in (REQUEST_SCHEMA, *self.STRICT)
        }

    def problems(self, body: Any, *, now: datetime | None = None) -> list[str]:
        found = [
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in self._validator.iter_errors(body)
        ]
        if not isinstance(body, dict):
            return found
        found += self._unknown(body, REQUEST_SCHEMA, "")
        objects: list[tuple[str, str, Any]] = [
            ("from", "Address", body.get("from")),
            ("reply_to", "Address", body.get("reply_to")),
            ("tracking", "Tracking", body.get("tracking")),
            ("retention", "Retention", body.get("retention")),
            ("schedule", "MessageSchedule", body.get("schedule")),
        ]
        for field in ("to", "cc", "bcc"):
            items = body.get(field)
            if isinstance(items, list):
                objects += [(f"{field}/{i}", "Address", a) for i, a in enumerate(items)]
        attachments = body.get("attachments")
        if isinstance(attachments, list):
            objects += [(f"attachments/{i}", "Attachment", a) for i, a in enumerate(attachments)]
            for i, attachment in enumerate(attachments):
                found += self._attachment(f"attachments/{i}", attachment)
        for where, schema, value in objects:
            if isinstance(value, dict):
                found += self._unknown(value, schema, where)
        if "text_content" not in body and "html_content" not in body:
            found.append("<root>: either text_content or html_content is required")
        count = sum(len(v) for f in ("to", "cc", "bcc") if isinstance(v := body.get(f), list))
        if count > MAX_RECIPIENTS:
            found.append(
                f"<root>: the combined to, cc, and bcc recipient count must not exceed "
                f"{MAX_RECIPIENTS} (got {count})"
            )
        found += self._headers(body)
        found += self._schedule(body.get("schedule"), now or datetime.now(UTC))
        return found

    def _unknown(self, value: dict[str, Any], schema: str, where: str) -> list[str]:
        extra = sorted(set(value) - self._known[schema])
        if not extra:
            return []
        return [f"{where or '<root>'}: unknown field(s) not defined by {schema}: {extra}"]

    @staticmethod
    def _attachment(where: str, attachment: Any) -> list[str]:
        if not isinstance(attachment, dict):
            return []
        found = []
        data = attachment.get("data")
        if attachment.get("base64") is True and isinstance(data, str):
            # Like Go's base64.StdEncoding, line breaks are ignored; anything else must decode.
            try:
                base64.b64decode(data.replace("\r", "").replace("\n", ""), validate=True)
            except (binascii.Error, ValueError):
                found.append(f"{where}/data: base64 is true but data is not valid base64")
        cid = attachment.get("content_id")
        if isinstance(cid, str) and not (len(cid) > 2 and cid[0] == "<" and cid[-1] == ">"):
            found.append(f"{where}/content_id: must be wrapped in angle brackets, got {cid!r}")
        return found

    @staticmethod
    def _headers(body: dict[str, Any]) -> list[str]:
        headers = body.get("headers")
        if not isinstance(headers, dict):
            return []
        names = {str(n).strip().lower() for n in headers}
        found = []
        if "cc" in body and "cc" in names:
            found.append("headers: cc header must not be given when the cc parameter is")
        if "reply_to" in body and "reply-to" in names:
            found.append("headers: reply-to header must not be given when reply_to is")
        return found

    @staticmethod
    def _schedule(schedule: Any, now: datetime) -> list[str]:
        if not isinstance(schedule, dict):
            return []
        found = []
        for field, days in (("first_attempt", 7), ("expires", 8)):
            value = schedule.get(field)
            if not isinstance(value, str):
                continue
            try:
                when = datetime.fromisoformat(value)
            except ValueError:
                found.append(f"schedule/{field}: not an RFC3339 date-time: {value!r}")
                continue
            if when.tzinfo is None:
                found.append(f"schedule/{field}: RFC3339 requires a UTC offset: {value!r}")
            elif not now < when <= now + timedelta(days=days):
                found.append(f"schedule/{field}: must be in the future and within {days} days")
        return found


class StandIn:
    """AhaSend's API v2 on ``127.0.0.1:<ephemeral>``, served from a background thread.

    Thread-safe for the test thread: :meth:`script`, :meth:`clear`, :meth:`wait_for`,
    :attr:`delay`, and reading :attr:`requests`/:attr:`accepted`.
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        account_id: str = DEFAULT_ACCOUNT_ID,
        delay: float = 0.0,
        validate: bool = True,
        record_bodies: bool = True,
    ) -> None:
        self.api_key = api_key
        self.account_id = account_id
        self.delay = delay
        self.validate = validate
        self.record_bodies = record_bodies
        self.requests: list[Recorded] = []
        self.probes: list[Recorded] = []
        self.connections = 0
        self._rules = RequestRules() if validate else None
        self._grants: dict[str, str] = {f"Bearer {api_key}": account_id}
        self._script: collections.deque[Scripted] = collections.deque()
        self._cond = threading.Condition()
        self._idempotency: dict[str, _Stored] = {}
        self._conn_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("StandIn is not started")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("StandIn already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="standin", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_MAX_HEAD)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = self._thread = self._server = None
            self.port = 0

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def __enter__(self) -> StandIn:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- test-facing API ---------------------------------------------------------------------

    def grant(self, api_key: str, account_id: str) -> None:
        """Accept ``api_key`` too, scoped to ``account_id`` (a sub-account's scoped key)."""
        self._grants[f"Bearer {api_key}"] = account_id

    def revoke(self, api_key: str) -> None:
        """Refuse ``api_key`` from now on (401), as AhaSend does for a deleted key."""
        self._grants.pop(f"Bearer {api_key}", None)

    def script(self, *responses: Scripted) -> None:
        """Queue answers for the next valid conversation requests (FIFO), then default 202s."""
        with self._cond:
            self._script.extend(responses)

    def clear(self, *, idempotency: bool = False) -> None:
        """Forget recorded requests and queued answers (and stored idempotency keys if asked)."""
        with self._cond:
            self.requests.clear()
            self.probes.clear()
            self._script.clear()
        if idempotency and self._loop is not None:
            # The store belongs to the server's loop: clear it there.
            asyncio.run_coroutine_threadsafe(self._forget(), self._loop).result(10)
        elif idempotency:
            self._idempotency.clear()

    async def _forget(self) -> None:
        self._idempotency.clear()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Recorded]:
        """Block until ``n`` requests are recorded; return the first ``n``."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"{len(self.requests)} of {n} requests after {timeout}s")
            return self.requests[:n]

    @property
    def accepted(self) -> list[Recorded]:
        """Requests answered 2xx as fresh executions (idempotent replays excluded)."""
        with self._cond:
            return [r for r in self.requests if r.accepted]

    @property
    def pending_script(self) -> int:
        with self._cond:
            return len(self._script)

    # -- HTTP/1.1 ----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = next(self._conn_ids)
        self.connections += 1
        try:
            while True:
                try:
                    request = await self._read(reader, conn)
                except _BadRequest as exc:
                    await self._write(writer, _error(400, str(exc)), keep_alive=False)
                    break
                if request is None or not await self._handle(request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # stop(): end quietly; asyncio 3.11 logs connection tasks that end cancelled.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader, conn: int) -> _Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # the client closed the connection between requests
        except asyncio.LimitOverrunError as exc:
            raise _BadRequest("request head too large") from exc
        received = time.monotonic()
        lines = head[:-4].decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError as exc:
            raise _BadRequest(f"malformed request line: {lines[0]!r}") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(f"malformed header line: {line!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(reader)
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError as exc:
                raise _BadRequest("malformed Content-Length") from exc
            body = await reader.readexactly(length) if length > 0 else b""
        path = target.split("?", 1)[0]
        return _Request(method, target, path, version, headers, body, conn, received)

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _BadRequest("malformed chunk size") from exc
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    @staticmethod
    async def _write(
        writer: asyncio.StreamWriter, response: _Response, *, keep_alive: bool
    ) -> None:
        headers = {"Content-Type": "application/json", "Server": "ahasend-standin"}
        lowered = {k.lower() for k in response.headers}
        headers = {k: v for k, v in headers.items() if k.lower() not in lowered}
        headers |= response.headers
        headers["Content-Length"] = str(len(response.body))
        if not keep_alive:
            headers["Connection"] = "close"
        head = f"HTTP/1.1 {response.status} {_reason(response.status)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(head.encode("latin-1") + response.body)
        await writer.drain()

    # -- AhaSend -----------------------------------------------------------------------------

    async def _handle(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; return whether the connection stays open."""
        keep_alive = request.keep_alive
        if match := _CONVERSATION_PATH.fullmatch(request.path):
            return await self._conversation(request, match[1], reader, writer)
        if request.path == "/v2/ping":
            response = self._probe(request, None) or _Response(200, b'{"message":"pong"}')
            self._record(request, response, probe=True)
        elif match := _ACCOUNT_PATH.fullmatch(request.path):
            body = account_body(match[1])
            response = self._probe(request, match[1]) or _Response(200, _json_bytes(body))
            self._record(request, response, probe=True)
        else:
            message = f"no such endpoint: {request.method} {request.path}"
            response = _error(404, message)
            self._record(request, response, problems=[message])
        await self._write(writer, response, keep_alive=keep_alive)
        return keep_alive

    def _auth_problem(self, request: _Request) -> str | None:
        given = request.headers.get("authorization")
        if given is None:
            return "missing Authorization header"
        if given not in self._grants:
            return "invalid API key" if given.startswith("Bearer ") else "malformed bearer token"
        return None

    def _scoped(self, request: _Request, account_id: str) -> bool:
        """Whether the request's (valid) key is scoped to ``account_id``."""
        granted = self._grants[request.headers["authorization"]]
        return account_id.lower() == granted.lower()

    def _probe(self, request: _Request, account_id: str | None) -> _Response | None:
        """The error answer to a GET-only, authenticated probe endpoint, if any."""
        if request.method != "GET":
            return _error(405, f"method {request.method} not allowed", {"Allow": "GET"})
        if problem := self._auth_problem(request):
            return _error(401, problem)
        if account_id is not None and not self._scoped(request, account_id):
            return _error(404, "account not found")
        return None

    def _refusal(self, request: _Request, account_id: str) -> _Response | None:
        """Route, auth and (when validating) header checks, in the order a real API makes them."""
        if request.method != "POST":
            return _error(405, f"method {request.method} not allowed, use POST", {"Allow": "POST"})
        if problem := self._auth_problem(request):
            return _error(401, problem)
        if not self._scoped(request, account_id):
            return _error(404, f"account not found: {account_id}")
        if not self.validate:
            return None
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            return _error(400, f"Content-Type must be application/json, got {media_type!r}")
        key = request.headers.get("idempotency-key")
        if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
            return _error(400, f"Idempotency-Key longer than {MAX_IDEMPOTENCY_KEY} characters")
        return None

    async def _conversation(
        self,
        request: _Request,
        account_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        keep_alive = request.keep_alive
        payload: Any = None
        problems: list[str] = []
        refusal = self._refusal(request, account_id)
        if refusal is not None:
            problems.append(json.loads(refusal.body)["message"])
        try:
            payload = json.loads(request.body)
        except ValueError as exc:
            if refusal is None and self._rules is not None:
                problems.append(f"<root>: body is not valid JSON: {exc}")
        if refusal is None and self._rules is not None and not problems:
            problems = self._rules.problems(payload)
        if problems:
            response = refusal or _error(400, "invalid request: " + "; ".join(problems))
            self._record(request, response, payload=payload, problems=problems)
            await self._write(writer, response, keep_alive=keep_alive)
            return keep_alive

        key = request.headers.get("idempotency-key")
        fingerprint = (request.method, request.path, hashlib.sha256(request.body).digest())
        stored = self._idempotency.get(key) if key is not None else None
        if stored is not None:
            if stored.fingerprint != fingerprint:
                response = _error(422, MISMATCH_MESSAGE)
                self._record(request, response, payload=payload, problems=[MISMATCH_MESSAGE])
            elif stored.response is None:
                headers = {"Idempotent-Replayed": "false", "Retry-After": "1"}
                response = _error(409, IN_PROGRESS_MESSAGE, headers)
                self._record(request, response, payload=payload)
            else:
                original = stored.response
                headers = original.headers | {"Idempotent-Replayed": "true"}
                response = dataclasses.replace(original, headers=headers)
                self._record(request, response, payload=payload, replayed=True)
            await self._write(writer, response, keep_alive=keep_alive)
            return keep_alive

        if key is not None:
            self._idempotency[key] = _Stored(fingerprint)
        try:
            with self._cond:
                scripted = self._script.popleft() if self._script else None
            delay = self.delay + (scripted.delay if scripted else 0.0)
            if scripted is not None and scripted.hang:
                self._record(request, None, payload=payload)
                while await reader.read(65536):
                    pass  # until the client gives up and closes the connection
                return False
            if delay > 0:
                await asyncio.sleep(delay)
            if scripted is not None and scripted.reset:
                self._record(request, None, payload=payload)
                self._reset(writer)
                return False
            response = self._answer(scripted, payload)
            completed = response.status < 500 and response.status not in _RELEASED
            if key is not None and completed:
                self._idempotency[key].response = response
        finally:
            self._release(key)  # unless completed: 5xx, hang, reset, shutdown may run again
        self._record(request, response, payload=payload)
        await self._write(writer, response, keep_alive=keep_alive)
        return keep_alive

    def _release(self, key: str | None) -> None:
        if key is not None:
            stored = self._idempotency.get(key)
            if stored is not None and stored.response is None:
                del self._idempotency[key]

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    @staticmethod
    def _answer(scripted: Scripted | None, payload: Any) -> _Response:
        if scripted is None:
            body = accepted_body(payload)
            return _Response(202, _json_bytes(body), message_ids=_message_ids(body))
        status, value = scripted.status, scripted.body
        if value is None:
            value = accepted_body(payload) if 200 <= status < 300 else {"message": _reason(status)}
        raw = value if isinstance(value, bytes) else _json_bytes(value)
        ids = _message_ids(value) if 200 <= status < 300 else []
        return _Response(status, raw, dict(scripted.headers), ids)

    def _record(
        self,
        request: _Request,
        response: _Response | None,
        *,
        payload: Any = None,
        problems: list[str] | None = None,
        replayed: bool = False,
        probe: bool = False,
    ) -> None:
        keep = self.record_bodies
        if keep and payload is None and request.body and not probe:
            with contextlib.suppress(ValueError):
                payload = json.loads(request.body)
        recorded = Recorded(
            method=request.method,
            path=request.path,
            headers=request.headers,
            body=request.body if keep else b"",
            json=payload if keep else None,
            response_status=response.status if response else 0,
            problems=problems or [],
            replayed=replayed,
            message_ids=list(response.message_ids) if response else [],
            response_headers=dict(response.headers) if response else {},
            response_body=response.body if response and keep else b"",
            connection=request.connection,
            received_at=request.received_at,
        )
        with self._cond:
            (self.probes if probe else self.requests).append(recorded)
            self._cond.notify_all()
