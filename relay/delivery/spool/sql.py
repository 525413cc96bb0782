"""The spool in SQL, written once for both stores: the statements, the rows, the methods.

``SqliteSpool`` and ``PostgresSpool`` keep the same columns (the SQLite file's schema is
in ``sqlite``, PostgreSQL's in ``pg_schema``) and run the same statements. What differs in
their SQL is a ``Dialect``: the table's name, how a named parameter is written
(``:name`` or ``%(name)s``), the two-argument maximum (``MAX`` or ``GREATEST``), how a
list of addresses is stored (JSON text, or a ``text[]`` array), and the claim's locking
clause, which each store states and explains where it builds its dialect. ``Statements``
renders every statement once in a dialect.

``SqlSpool`` implements the ``SpoolBackend`` methods (the contract is
``relay.delivery.spool.base``) on those statements, over three primitives each store
writes its own way: ``_fetch_each`` (statements on one connection, their rows),
``_change`` (one changing statement, how many rows it changed) and ``_insert`` (``add``'s
upsert, and the id it leaves). Connections, threads or async I/O, errors, the schema and
``location`` / ``available`` / ``close`` stay in the stores.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from relay.delivery.spool.base import SpoolEntry, SpoolStats, State

__all__ = ["Dialect", "Params", "SqlSpool", "Statements", "entry_of"]

Params = Mapping[str, Any]
"""A statement's named parameters (``:name`` in the templates below)."""


@dataclass(frozen=True, slots=True)
class Dialect:
    """What one store's SQL does its own way; everything else is written once, here."""

    table: str
    parameter: str
    """A named parameter, as a ``str.format`` pattern: ``:{}`` or ``%({})s``."""
    greatest: str
    """The larger of two values: SQLite's scalar ``MAX``, PostgreSQL's ``GREATEST``."""
    claim_lock: str
    """Appended to the claim's sub-select (row locks), or ``""`` when the store needs none."""
    encode_list: Callable[[Sequence[str]], Any]
    """``rcpt_tos`` and ``message_ids`` as the column stores them."""
    decode_list: Callable[[Any], Sequence[str]]
    """The column's value (None for no message ids yet) back to a list."""


_COLUMNS = (
    "id, idempotency_key, state, mail_from, rcpt_tos, size, attempts, created, updated,"
    " next_attempt, expires, last_error, message_ids, bounced, claimed_until, route"
)
_INSERT = (
    "INSERT INTO {table} (idempotency_key, mail_from, rcpt_tos, body, size,"
    " created, updated, next_attempt, expires, last_error, route)"
    " VALUES (:key, :mail_from, :rcpt_tos, :body, :size, :now, :now, :next_attempt,"
    " :expires, :error, :route)"
    " ON CONFLICT (idempotency_key) DO UPDATE SET state = 'queued',"
    " body = excluded.body, updated = excluded.updated,"
    " next_attempt = excluded.next_attempt, expires = excluded.expires,"
    " last_error = excluded.last_error, claimed_until = NULL"
    " WHERE {table}.state = 'dead'"
)
_CLAIM = (
    "UPDATE {table} SET claimed_until = :until WHERE id IN (SELECT id FROM {table}"
    " WHERE state = 'queued' AND next_attempt <= :now"
    " AND (claimed_until IS NULL OR claimed_until <= :now)"
    " ORDER BY next_attempt, id LIMIT :limit{lock})"
    " RETURNING {columns}, body"
)
_NEXT_DUE = (
    "SELECT MIN({greatest}(next_attempt, COALESCE(claimed_until, next_attempt)))"
    " FROM {table} WHERE state = 'queued'"
)
_RETRY = (
    "UPDATE {table} SET next_attempt = :now, updated = :now,"
    " expires = CASE WHEN state = 'dead' THEN :expires ELSE expires END,"
    " state = 'queued'"
    " WHERE state IN ('queued', 'dead') AND body IS NOT NULL"
)


def _transition(assignments: str) -> str:
    """The update of one entry by id; every transition also sets ``updated``."""
    return "UPDATE {table} SET " + assignments + ", updated = :now WHERE id = :id"  # noqa: S608


_PARAMETER = re.compile(r"(?<![\w:]):(\w+)")


class Statements:
    """Every statement of ``SqlSpool``, rendered once in ``dialect``."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        render = self._render
        self.insert = render(_INSERT)
        self.id_of_key = render("SELECT id FROM {table} WHERE idempotency_key = :key")
        self.claim = render(_CLAIM)
        self.next_due = render(_NEXT_DUE)
        # Each ends the claim (claimed_until = NULL) but mark_bounced, which only notes.
        self.delivered = render(_transition(
            "state = 'delivered', body = NULL, attempts = attempts + 1,"
            " message_ids = :message_ids, last_error = :note, claimed_until = NULL"
        ))  # fmt: skip
        self.deferred = render(_transition(
            "attempts = attempts + 1, last_error = :error, next_attempt = :next_attempt,"
            " claimed_until = NULL"
        ))  # fmt: skip
        self.killed = render(_transition(
            "state = 'dead', attempts = attempts + :step, last_error = :reason,"
            " claimed_until = NULL"
        ))  # fmt: skip
        self.bounced = render(_transition("bounced = :bounced"))
        self.purge = render("DELETE FROM {table} WHERE state = 'delivered' AND updated < :before")
        self.entries = render("SELECT {columns} FROM {table} ORDER BY id")
        self.entries_in = render("SELECT {columns} FROM {table} WHERE state = :state ORDER BY id")
        self.get = render("SELECT {columns}, body FROM {table} WHERE id = :id")
        self.retry_all = render(_RETRY)
        self.retry_one = render(_RETRY + " AND id = :id")
        self.delete = render("DELETE FROM {table} WHERE id = :id")
        self.counts = render("SELECT state, COUNT(*) FROM {table} GROUP BY state")
        self.queued = render(
            "SELECT MIN(created), MAX(attempts) FROM {table} WHERE state = 'queued'"
        )

    def _render(self, template: str) -> str:
        """``template`` with the dialect's table, functions and parameter style."""
        d = self.dialect
        lock = f" {d.claim_lock}" if d.claim_lock else ""
        text = template.format(table=d.table, columns=_COLUMNS, greatest=d.greatest, lock=lock)
        return _PARAMETER.sub(lambda name: d.parameter.format(name[1]), text)


def entry_of(row: Sequence[Any], decode_list: Callable[[Any], Sequence[str]]) -> SpoolEntry:
    """The entry for a row of the columns every statement selects, and ``body`` last when
    the row has one more column (``claim``, ``get``)."""
    (entry_id, key, state, mail_from, rcpt_tos, size, attempts, created, updated,
     next_attempt, expires, last_error, message_ids, bounced, claimed_until,
     route, *rest) = row  # fmt: skip
    body = rest[0] if rest else None
    return SpoolEntry(
        int(entry_id), key, state, mail_from, tuple(decode_list(rcpt_tos)), size, attempts,
        created, updated, next_attempt, expires, last_error,
        tuple(decode_list(message_ids)), bool(bounced), claimed_until,
        bytes(body) if body is not None else None, route,
    )  # fmt: skip


class SqlSpool(ABC):
    """The ``SpoolBackend`` methods of a store that runs ``Statements`` (see the module).

    A subclass sets ``_sql`` and ``_clock`` and writes the three primitives.
    """

    _sql: ClassVar[Statements]
    _clock: Callable[[], float]

    # -- the primitives: each store's own --------------------------------------------
    @abstractmethod
    async def _insert(self, values: Params) -> int:
        """Run ``_sql.insert`` with ``values``; the id of the entry under ``values["key"]``
        (the one just stored, or the one already there), durable when this returns."""

    @abstractmethod
    async def _fetch_each(self, statements: Sequence[tuple[str, Params]]) -> list[list[Any]]:
        """Run ``statements`` in order on one connection; each one's rows."""

    @abstractmethod
    async def _change(self, sql: str, params: Params) -> int:
        """Run one changing statement; how many rows it changed."""

    # -- the dispatcher's side ---------------------------------------------------------
    async def add(
        self,
        body: bytes,
        idempotency_key: str,
        *,
        mail_from: str,
        rcpt_tos: Sequence[str],
        error: str,
        first_retry: float,
        max_age: float,
        route: str = "default",
    ) -> int:
        now = self._clock()
        return await self._insert({
            "key": idempotency_key, "mail_from": mail_from, "body": body, "size": len(body),
            "rcpt_tos": self._sql.dialect.encode_list(rcpt_tos), "now": now,
            "next_attempt": now + first_retry, "expires": now + max_age, "error": error,
            "route": route,
        })  # fmt: skip

    # -- the worker's side -------------------------------------------------------------
    async def claim(self, limit: int, lease: float) -> list[SpoolEntry]:
        now = self._clock()
        rows = await self._fetch(self._sql.claim, {"until": now + lease, "now": now,
                                                   "limit": limit})  # fmt: skip
        entries = [self._entry(row) for row in rows]  # RETURNING has no order
        return sorted(entries, key=lambda e: (e.next_attempt, e.id))

    async def next_due(self) -> float | None:
        [(due,)] = await self._fetch(self._sql.next_due)
        return None if due is None else float(due)

    async def mark_delivered(
        self, entry_id: int, message_ids: Sequence[str], note: str | None = None
    ) -> None:
        encoded = self._sql.dialect.encode_list(message_ids)
        await self._transition(self._sql.delivered, entry_id, message_ids=encoded, note=note)

    async def defer(self, entry_id: int, error: str, next_attempt: float) -> None:
        await self._transition(self._sql.deferred, entry_id, error=error, next_attempt=next_attempt)

    async def kill(self, entry_id: int, reason: str, *, attempted: bool = True) -> None:
        step = 1 if attempted else 0
        await self._transition(self._sql.killed, entry_id, step=step, reason=reason)

    async def mark_bounced(self, entry_id: int) -> None:
        await self._transition(self._sql.bounced, entry_id, bounced=True)

    async def purge_delivered(self, older_than: float) -> int:
        return await self._change(self._sql.purge, {"before": older_than})

    # -- the operator's side (``ahasend-relay queue``) ---------------------------------
    async def entries(self, state: State | None = None) -> list[SpoolEntry]:
        if state:
            rows = await self._fetch(self._sql.entries_in, {"state": state})
        else:
            rows = await self._fetch(self._sql.entries)
        return [self._entry(row) for row in rows]

    async def get(self, entry_id: int) -> SpoolEntry | None:
        rows = await self._fetch(self._sql.get, {"id": entry_id})
        return self._entry(rows[0]) if rows else None

    async def retry(self, entry_id: int | None, max_age: float) -> int:
        now = self._clock()
        params = {"now": now, "expires": now + max_age}
        if entry_id is None:
            return await self._change(self._sql.retry_all, params)
        return await self._change(self._sql.retry_one, {**params, "id": entry_id})

    async def delete(self, entry_id: int) -> bool:
        return await self._change(self._sql.delete, {"id": entry_id}) > 0

    async def stats(self) -> SpoolStats:
        counted, [(oldest, attempts)] = await self._fetch_each(
            [(self._sql.counts, {}), (self._sql.queued, {})]
        )
        counts = {state: int(count) for state, count in counted}
        age = max(self._clock() - oldest, 0.0) if oldest is not None else 0.0
        return SpoolStats(
            queued=counts.get("queued", 0),
            dead=counts.get("dead", 0),
            delivered=counts.get("delivered", 0),
            oldest_age=age,
            max_attempts=attempts or 0,
        )

    # -- on the primitives -------------------------------------------------------------
    async def _transition(self, sql: str, entry_id: int, **values: Any) -> None:
        await self._change(sql, {**values, "now": self._clock(), "id": entry_id})

    async def _fetch(self, sql: str, params: Params | None = None) -> list[Any]:
        [rows] = await self._fetch_each([(sql, params or {})])
        return rows

    def _entry(self, row: Sequence[Any]) -> SpoolEntry:
        return entry_of(row, self._sql.dialect.decode_list)
