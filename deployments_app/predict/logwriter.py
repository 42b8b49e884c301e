"""Group commit for prediction log rows: durable before the answer, one INSERT per batch.

Every call's row must be committed before its answer leaves (no answered call without its
row), but one INSERT and one COMMIT per call is most of the proxy's database cost. So
concurrent calls in one process share them, the way PostgreSQL groups WAL flushes: a call
queues its row; if no flush is running it becomes the leader, takes every queued row and
writes them with one multi-row INSERT on its own connection; the others wait for the flush
that carries their row and then answer. Alone (concurrency 1) a call writes its own row at
once, so nothing waits on a timer. A failed flush fails every call in it (the views answer
503); those calls are not answered as successes, so nothing answered is lost.

On PostgreSQL a flush is one prepared multi-row INSERT in autocommit on the thread's own
Django connection: one round trip, where the ORM's bulk_create takes four (BEGIN, INSERT ...
RETURNING, COMMIT, plus building model instances). Other databases use bulk_create.

On PostgreSQL the INSERT goes to the parent of the daily partitions (deployments_app
/partitions.py), which routes each row. A row's created_at is taken just before its flush, so
it may commit a moment after its minute closed: the rollup fold (deployments_app/rollups.py)
waits a grace period and refolds recent minutes for that reason.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from django.db import DatabaseError, connection

from deployments_app.models import PredictionLog

COLUMNS = (
    "created_at",
    "deployment_id",
    "deployment_name",
    "model_name",
    "version_number",
    "caller",
    "api_key_prefix",
    "status_code",
    "latency_ms",
    "upstream_ms",
    "rows",
    "input_bytes",
    "input_sha256",
    "client_ip",
    "request_id",
    "replica",
    "error",
    "payload",
    "explained",
)
_CASTS = {"client_ip": "::inet", "payload": "::jsonb"}
_ROW_SQL = "(" + ", ".join(f"%s{_CASTS.get(c, '')}" for c in COLUMNS) + ")"
_sql_by_size: dict[int, str] = {}


def insert_sql(size: int) -> str:
    sql = _sql_by_size.get(size)
    if sql is None:
        table = PredictionLog._meta.db_table
        names = ", ".join(f'"{c}"' for c in COLUMNS)
        values = ", ".join([_ROW_SQL] * size)
        sql = f'INSERT INTO "{table}" ({names}) VALUES {values}'  # noqa: S608 - constants
        _sql_by_size[size] = sql
    return sql


def params(rows: list[dict[str, Any]]) -> list[Any]:
    """The INSERT's parameters for `rows`, column by column, row after row."""
    values: list[Any] = []
    for row in rows:
        for column in COLUMNS:
            value = row[column]
            if column == "payload" and value is not None:
                value = json.dumps(value)
            values.append(value)
    return values


def _insert(rows: list[dict[str, Any]]) -> None:
    if connection.vendor != "postgresql":
        PredictionLog.objects.bulk_create([PredictionLog(**row) for row in rows])
        return
    import psycopg

    with connection.wrap_database_errors:
        connection.ensure_connection()
        # A server-side-binding cursor (Django's own are client-side), prepared after a few
        # uses per batch size; in autocommit the INSERT commits by itself.
        with psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(insert_sql(len(rows)), params(rows), prepare=True)


MAX_BATCH = 256


class _Entry:
    __slots__ = ("done", "error", "row")

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.done = False
        self.error: BaseException | None = None


class GroupCommit:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: list[_Entry] = []
        self._flushing = False
        self.flushes = 0  # how many INSERTs, for the benchmark's rows-per-flush figure
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        entry = _Entry(row)
        with self._cond:
            self._pending.append(entry)
        while True:
            with self._cond:
                while not entry.done and self._flushing:
                    self._cond.wait()
                if entry.done:
                    break
                # Leader: nobody is flushing and our row is still queued.
                self._flushing = True
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
            self._flush(batch)
        if entry.error is not None:
            raise entry.error

    def _flush(self, batch: list[_Entry]) -> None:
        error: BaseException | None = None
        try:
            _insert([e.row for e in batch])
        except BaseException as exc:  # noqa: BLE001 - handed to every caller in the batch
            error = exc
        with self._cond:
            for e in batch:
                e.done, e.error = True, error
            self._flushing = False
            self.flushes += 1
            self.rows += len(batch)
            self._cond.notify_all()


writer = GroupCommit()


def write(row: dict[str, Any]) -> None:
    """Commit one PredictionLog row (a dict with every name in COLUMNS), grouped with
    concurrent calls of this process; raise DatabaseError when it cannot be written."""
    try:
        writer.write(row)
    except DatabaseError:
        raise
    except Exception as exc:  # a leader's non-database failure must not look like success
        raise DatabaseError(f"prediction log write failed: {exc}") from exc
