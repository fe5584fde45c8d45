"""Durable job records and their event log, through SQLAlchemy 2.x (Core).

SQLite in the data directory (WAL, so the API and the worker processes write concurrently)
unless ``DATABASE_URL`` names another database, e.g. PostgreSQL with psycopg 3
(``postgresql+psycopg://user@host/db``). The schema is created on start.

Every state change is a conditional UPDATE (``WHERE status = ...``), so two processes never
both move a job; a worker's writes also carry its ``run_token``, so a worker that outlived
a restart cannot overwrite what recovery decided. Each change appends to the event log,
which Server-Sent Events replay.

``seq`` and event ids are never reused, not even after the newest job is deleted (SQLite
tables use ``AUTOINCREMENT``): a worker's cancel flag names a job by its ``seq``, and a reused
one would cancel the next job that got it.
"""

import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping

from service.jobs.specs import FINISHED

TERMINAL_EVENT = "done"
"""The event that ends a job's stream; its data carries the final status."""


def sqlite_url(data_dir: Path) -> str:
    """Return the URL of the embedded store in ``data_dir``."""
    return f"sqlite:///{(data_dir / 'jobs.sqlite3').resolve()}"


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # SQLite keeps no zone; every stored time is UTC
    return value


@dataclass
class JobRecord:
    """One job as stored."""

    seq: int
    id: str
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    spec: dict[str, Any]
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    idempotency_key: str | None
    spec_hash: str
    cancel_requested: bool
    run_token: str | None
    worker: str | None
    client: str | None = None

    @classmethod
    def from_row(cls, row: RowMapping) -> "JobRecord":
        values = dict(row)
        for name in ("created_at", "started_at", "finished_at"):
            values[name] = _aware(values[name])
        return cls(**values)


@dataclass
class Event:
    """One entry of a job's event log; ``id`` increases across all jobs."""

    id: int
    job_id: str
    event: str
    data: dict[str, Any]


class Store:
    """Job records in a SQL database; every method is one short transaction (thread-safe)."""

    def __init__(self, url: str, table_prefix: str = "") -> None:
        self.url = url
        self.table_prefix = table_prefix
        self.engine = _make_engine(url)
        self.metadata = sa.MetaData()
        big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
        self.jobs = sa.Table(
            f"{table_prefix}jobs",
            self.metadata,
            sa.Column("seq", big_id, primary_key=True, autoincrement=True),
            sa.Column("id", sa.String(32), nullable=False, unique=True),
            sa.Column("status", sa.String(16), nullable=False, index=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("started_at", sa.DateTime(timezone=True)),
            sa.Column("finished_at", sa.DateTime(timezone=True)),
            sa.Column("spec", sa.JSON, nullable=False),
            sa.Column("progress", sa.JSON),
            sa.Column("result", sa.JSON),
            sa.Column("error", sa.JSON),
            sa.Column("idempotency_key", sa.String(255), unique=True),
            sa.Column("spec_hash", sa.String(64), nullable=False),
            sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
            sa.Column("run_token", sa.String(32)),
            sa.Column("worker", sa.String(64)),
            sa.Column("client", sa.String(128)),
            sqlite_autoincrement=True,
        )
        self.events = sa.Table(
            f"{table_prefix}job_events",
            self.metadata,
            sa.Column("id", big_id, primary_key=True, autoincrement=True),
            sa.Column("job_id", sa.String(32), nullable=False, index=True),
            sa.Column("event", sa.String(16), nullable=False),
            sa.Column("data", sa.JSON, nullable=False),
            sqlite_autoincrement=True,
        )

    # ----------------------------------------------------------------- lifecycle

    def create_schema(self) -> None:
        """Create the tables when they do not exist (and add ``client`` to an older one)."""
        self.metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns(self.jobs.name)}
            if "client" not in columns:
                table = conn.dialect.identifier_preparer.quote(self.jobs.name)
                conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN client VARCHAR(128)"))

    def drop_schema(self) -> None:
        """Drop the tables (tests clean up with this)."""
        self.metadata.drop_all(self.engine)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def ping(self) -> None:
        """Raise when the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(sa.select(sa.func.count()).select_from(self.jobs))

    # ----------------------------------------------------------------- reading

    def get(self, job_id: str) -> JobRecord | None:
        """Return the job, or None."""
        with self.engine.connect() as conn:
            return self._get(conn, job_id)

    def _get(self, conn: Connection, job_id: str) -> JobRecord | None:
        row = conn.execute(sa.select(self.jobs).where(self.jobs.c.id == job_id)).mappings().first()
        return JobRecord.from_row(row) if row else None

    def list_jobs(
        self, status: str | None = None, limit: int = 20, before_seq: int | None = None
    ) -> list[JobRecord]:
        """Return up to ``limit`` jobs newest first, older than ``before_seq`` when given."""
        query = sa.select(self.jobs).order_by(self.jobs.c.seq.desc()).limit(limit)
        if status is not None:
            query = query.where(self.jobs.c.status == status)
        if before_seq is not None:
            query = query.where(self.jobs.c.seq < before_seq)
        with self.engine.connect() as conn:
            return [JobRecord.from_row(row) for row in conn.execute(query).mappings()]

    def events_after(self, job_id: str, after: int = 0) -> list[Event]:
        """Return the job's events with an id above ``after``, oldest first."""
        query = (
            sa.select(self.events)
            .where(self.events.c.job_id == job_id, self.events.c.id > after)
            .order_by(self.events.c.id)
        )
        with self.engine.connect() as conn:
            return [Event(**row) for row in conn.execute(query).mappings()]

    def events_for(self, afters: dict[str, int]) -> dict[str, list[Event]]:
        """Return, for each job id, its events with an id above ``afters[job_id]``, oldest
        first: one query for many jobs (the event streams' shared poll)."""
        found: dict[str, list[Event]] = {job_id: [] for job_id in afters}
        items = list(afters.items())
        for start in range(0, len(items), 200):  # SQLite nests ORs: keep each query shallow
            chunk = items[start : start + 200]
            query = (
                sa.select(self.events)
                .where(sa.or_(*(
                    sa.and_(self.events.c.job_id == j, self.events.c.id > a) for j, a in chunk
                )))
                .order_by(self.events.c.id)
            )  # fmt: skip
            with self.engine.connect() as conn:
                for row in conn.execute(query).mappings():
                    found[row["job_id"]].append(Event(**row))
        return found

    def existing(self, job_ids: list[str]) -> set[str]:
        """Return which of ``job_ids`` the store has."""
        if not job_ids:
            return set()
        query = sa.select(self.jobs.c.id).where(self.jobs.c.id.in_(job_ids))
        with self.engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def count_active(self, client: str | None = None) -> int:
        """Return how many jobs are queued or running (of ``client`` when given)."""
        query = (
            sa.select(sa.func.count())
            .select_from(self.jobs)
            .where(self.jobs.c.status.in_(("queued", "running")))
        )
        if client is not None:
            query = query.where(self.jobs.c.client == client)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def cancel_requested(self, job_id: str) -> bool:
        """Return True when someone asked to cancel the job."""
        query = sa.select(self.jobs.c.cancel_requested).where(self.jobs.c.id == job_id)
        with self.engine.connect() as conn:
            return bool(conn.execute(query).scalar())

    # ----------------------------------------------------------------- writing

    def _event(self, conn: Connection, job_id: str, event: str, data: dict[str, Any]) -> None:
        conn.execute(sa.insert(self.events).values(job_id=job_id, event=event, data=data))

    def create(
        self,
        spec: dict[str, Any],
        spec_hash: str,
        idempotency_key: str | None = None,
        client: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Insert a queued job (submitted by ``client``); return it and True, or the job
        already stored under ``idempotency_key`` and False."""
        job_id = uuid.uuid4().hex
        values = {
            "id": job_id,
            "status": "queued",
            "created_at": _now(),
            "spec": spec,
            "spec_hash": spec_hash,
            "idempotency_key": idempotency_key,
            "cancel_requested": False,
            "client": client,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(self.jobs).values(**values))
                self._event(conn, job_id, "status", {"status": "queued"})
                record = self._get(conn, job_id)
        except sa.exc.IntegrityError:
            if idempotency_key is None:
                raise
            existing = self.by_idempotency_key(idempotency_key)
            if existing is None:  # deleted in between: try once more
                return self.create(spec, spec_hash, idempotency_key, client)
            return existing, False
        assert record is not None
        return record, True

    def by_idempotency_key(self, key: str) -> JobRecord | None:
        """Return the job created with ``key``, or None."""
        query = sa.select(self.jobs).where(self.jobs.c.idempotency_key == key)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return JobRecord.from_row(row) if row else None

    def claim_next(self, worker: str) -> JobRecord | None:
        """Move the oldest queued job to running for ``worker`` and return it (FIFO)."""
        oldest = (
            sa.select(self.jobs.c.id)
            .where(self.jobs.c.status == "queued")
            .order_by(self.jobs.c.seq)
            .limit(1)
            .scalar_subquery()
        )
        while True:
            token = secrets.token_hex(16)
            with self.engine.begin() as conn:
                # One conditional UPDATE: two workers never claim the same job.
                claimed = conn.execute(
                    sa.update(self.jobs)
                    .where(self.jobs.c.id == oldest, self.jobs.c.status == "queued")
                    .values(status="running", started_at=_now(), run_token=token, worker=worker)
                ).rowcount
                if claimed:
                    job_id = conn.execute(
                        sa.select(self.jobs.c.id).where(self.jobs.c.run_token == token)
                    ).scalar_one()
                    self._event(conn, job_id, "status", {"status": "running"})
                    return self._get(conn, job_id)
            if not self._any_queued():
                return None

    def _any_queued(self) -> bool:
        query = sa.select(self.jobs.c.id).where(self.jobs.c.status == "queued").limit(1)
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def report_progress(
        self, job_id: str, token: str, progress: dict[str, Any], *, event: bool = True
    ) -> bool:
        """Store the running job's progress (and log it as an event); return False when the
        job is no longer this run's."""
        with self.engine.begin() as conn:
            updated = conn.execute(
                sa.update(self.jobs)
                .where(
                    self.jobs.c.id == job_id,
                    self.jobs.c.status == "running",
                    self.jobs.c.run_token == token,
                )
                .values(progress=progress)
            ).rowcount
            if updated and event:
                self._event(conn, job_id, "progress", progress)
        return bool(updated)

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        token: str | None = None,
        from_status: tuple[str, ...] = ("running",),
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """Move the job from one of ``from_status`` to the finished ``status`` (for a worker:
        only while ``token`` is its run); return False when it was not in such a state."""
        assert status in FINISHED
        where = [self.jobs.c.id == job_id, self.jobs.c.status.in_(from_status)]
        if token is not None:
            where.append(self.jobs.c.run_token == token)
        with self.engine.begin() as conn:
            updated = conn.execute(
                sa.update(self.jobs)
                .where(*where)
                .values(status=status, finished_at=_now(), result=result, error=error)
            ).rowcount
            if updated:
                self._event(conn, job_id, TERMINAL_EVENT, {"status": status, "error": error})
        return bool(updated)

    def request_cancel(self, job_id: str) -> bool:
        """Flag a running job for cancellation; return False when it is not running."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    sa.update(self.jobs)
                    .where(self.jobs.c.id == job_id, self.jobs.c.status == "running")
                    .values(cancel_requested=True)
                ).rowcount
            )

    def delete(self, job_id: str) -> bool:
        """Delete a finished job and its events; return False when it is not finished."""
        with self.engine.begin() as conn:
            deleted = conn.execute(
                sa.delete(self.jobs).where(
                    self.jobs.c.id == job_id, self.jobs.c.status.in_(sorted(FINISHED))
                )
            ).rowcount
            if deleted:
                conn.execute(sa.delete(self.events).where(self.events.c.job_id == job_id))
        return bool(deleted)

    def interrupt_running(self, detail: str, worker_prefix: str | None = None) -> list[str]:
        """Mark running jobs (of workers named ``worker_prefix…``, or all) interrupted; return
        their ids."""
        query = sa.select(self.jobs.c.id).where(self.jobs.c.status == "running")
        if worker_prefix is not None:
            query = query.where(self.jobs.c.worker.startswith(worker_prefix))
        with self.engine.connect() as conn:
            ids = list(conn.execute(query).scalars())
        error = {"type": "interrupted", "detail": detail}
        return [i for i in ids if self.finish(i, "interrupted", error=error)]

    def latest_succeeded(self) -> str | None:
        """Return the id of the most recently finished succeeded job, or None."""
        query = (
            sa.select(self.jobs.c.id)
            .where(self.jobs.c.status == "succeeded")
            .order_by(self.jobs.c.finished_at.desc(), self.jobs.c.seq.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            json_serializer=_dumps,
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, json_serializer=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))
