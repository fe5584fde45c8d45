"""Durable job records and their event log, through SQLAlchemy 2.x (Core).

SQLite in the data directory (WAL, so the API and the worker processes write concurrently)
unless ``DATABASE_URL`` names another database, e.g. PostgreSQL with psycopg 3
(``postgresql+psycopg://user@host/db``). The schema is created on start.

Every state change is a conditional UPDATE (``WHERE status = ...``), so two processes never
both move a job; a worker's writes also carry its ``run_token``, so a worker that outlived
a restart cannot overwrite what recovery decided. Each change appends to the event log,
which Server-Sent Events replay.

Ownership is a lease (:mod:`service.jobs.lease`): a claim writes the worker's identity and an
expiry (the database's clock plus ``lease_s``), the run's heartbeat renews it, and
:meth:`Store.reap` takes away only jobs whose lease expired (or whose owner is a process of
this machine that no longer exists): interrupted, or queued again when the spec asked for
retries and some are left. So any number of API processes and workers share one store, and
starting one never touches another's running jobs.

``seq`` and event ids are never reused, not even after the newest job is deleted (SQLite
tables use ``AUTOINCREMENT``): a worker's cancel flag names a job by its ``seq``, and a reused
one would cancel the next job that got it.

A job's ``owner`` is the digest of the API key that submitted it (:mod:`service.auth`), set
in the same transaction as the job; listings filter on it through the ``(owner, seq)`` index.
The table ``{prefix}job_owners`` of earlier versions is read at start to fill ``owner`` for
the jobs it names, and still written, so an earlier version's replica sharing the store
during a rolling upgrade keeps answering 404 for another key's job.

The data quota's count of the records (:meth:`Store.record_bytes`) is O(1) on every store:
SQLite's live pages (three PRAGMAs); on PostgreSQL a running total of the bytes of every row
of ``jobs`` and ``job_events`` in ``{prefix}job_usage``, kept by statement-level triggers in
the same transaction as each write (whichever process or version writes), spread over
:data:`USAGE_SLOTS` rows so concurrent writers rarely wait on one another.
"""

import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping

from service.jobs import lease
from service.jobs.specs import FINISHED, JOB_ID

log = logging.getLogger("service.jobs")

LEASE_S = 30.0
"""Default lease period (``LRS_JOB_LEASE_S``)."""

RAW_COLUMNS = ("spec", "result")
"""The JSON columns a ``raw`` read returns as their stored text."""

ROW_HEADER_BYTES = 28
"""A PostgreSQL heap row's header and line pointer, counted per row by
:meth:`Store.record_bytes`."""

USAGE_SLOTS = 16
"""Rows of the PostgreSQL usage total (a writer adds to the slot of its backend process)."""

USAGE_VERSION = 1
"""Version of the size formula the usage triggers apply (in their functions' names): a start
that finds another version recounts the total once, under a lock that holds writes off."""

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
    spec: dict[str, Any] | str  # str: the stored JSON text (a raw read)
    progress: dict[str, Any] | None
    result: dict[str, Any] | str | None
    error: dict[str, Any] | None
    idempotency_key: str | None
    spec_hash: str
    cancel_requested: bool
    run_token: str | None
    worker: str | None
    lease_owner: str | None = None
    lease_expires: float | None = None
    attempts: int | None = 0
    client: str | None = None
    owner: str | None = None

    @classmethod
    def from_row(cls, row: RowMapping) -> "JobRecord":
        values = dict(row)
        for name in ("created_at", "started_at", "finished_at"):
            values[name] = _aware(values[name])
        return cls(**values)


@dataclass(frozen=True)
class QueueCaps:
    """The queue caps :meth:`Store.create` enforces: queued and running jobs in all
    (``total``) and of one client (``per_client``); 0 means no cap."""

    total: int = 0
    per_client: int = 0


class QueueFull(Exception):
    """A submit found the queue at a cap; ``which`` is "client" or "total"."""

    def __init__(self, which: str) -> None:
        super().__init__(which)
        self.which = which


@dataclass
class Event:
    """One entry of a job's event log; ``id`` increases across all jobs."""

    id: int
    job_id: str
    event: str
    data: dict[str, Any]


class Store:
    """Job records in a SQL database; every method is one short transaction (thread-safe)."""

    def __init__(self, url: str, table_prefix: str = "", *, lease_s: float = LEASE_S) -> None:
        self.url = url
        self.table_prefix = table_prefix
        self.lease_s = lease_s
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
            # the lease: who runs the job (lease.identity), until when (database clock,
            # seconds since the epoch), and how many runs it has had
            sa.Column("lease_owner", sa.String(255)),
            sa.Column("lease_expires", sa.Float),
            sa.Column("attempts", sa.Integer),
            sa.Column("client", sa.String(128)),  # who submitted: the per-client queue cap
            sa.Column("owner", sa.String(64)),  # the submitting API key's digest (auth)
            sa.Index(f"ix_{table_prefix}jobs_owner_seq", "owner", "seq"),
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
        self.owners = sa.Table(  # earlier versions' record of owners: see the module's doc
            f"{table_prefix}job_owners",
            self.metadata,
            sa.Column("job_id", sa.String(32), primary_key=True),
            sa.Column("key_hash", sa.String(64), nullable=False),
        )
        self.usage: sa.Table | None = None
        if self.engine.dialect.name == "postgresql":
            self.usage = sa.Table(
                f"{table_prefix}job_usage",
                self.metadata,
                sa.Column("slot", sa.SmallInteger, primary_key=True, autoincrement=False),
                sa.Column("bytes", sa.BigInteger, nullable=False),
            )

    # ----------------------------------------------------------------- lifecycle

    def create_schema(self) -> None:
        """Create the tables when they do not exist and add columns older versions lacked
        (safe when several processes start at once: :func:`create_tables`)."""
        create_tables(self.engine, self.metadata, self.table_prefix, self._upgrade)

    def _upgrade(self, conn: Connection) -> None:
        """What create_all leaves to do on tables of an earlier version: columns, indexes,
        owners from the old owners table, the usage triggers (under create_tables' lock)."""
        self._add_missing_columns(conn)
        for index in self.jobs.indexes:
            index.create(conn, checkfirst=True)
        owners = self.owners
        conn.execute(
            sa.update(self.jobs)
            .where(self.jobs.c.owner.is_(None), self.jobs.c.id.in_(sa.select(owners.c.job_id)))
            .values(
                owner=sa.select(owners.c.key_hash)
                .where(owners.c.job_id == self.jobs.c.id)
                .scalar_subquery()
            )
        )
        if self.usage is not None:
            self._install_usage(conn)

    def _add_missing_columns(self, conn: Connection) -> None:
        present = {c["name"] for c in sa.inspect(conn).get_columns(self.jobs.name)}
        for column in self.jobs.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=conn.dialect)
                quoted = conn.dialect.identifier_preparer
                conn.execute(
                    sa.text(
                        f"ALTER TABLE {quoted.format_table(self.jobs)} "
                        f"ADD COLUMN {quoted.format_column(column)} {kind}"
                    )
                )
                log.info("job store: added column %s.%s", self.jobs.name, column.name)

    def drop_schema(self) -> None:
        """Drop the tables, and on PostgreSQL the usage functions (tests clean up with this)."""
        self.metadata.drop_all(self.engine)
        if self.usage is not None:
            with self.engine.begin() as conn:
                for name in self._usage_functions(every_version=True):
                    conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {name}()"))

    # ----------------------------------------------------------------- usage (PostgreSQL)

    def _quote(self, name: str) -> str:
        return self.engine.dialect.identifier_preparer.quote_identifier(name)

    def _usage_functions(self, every_version: bool = False) -> list[str]:
        versions = range(1, USAGE_VERSION + 1) if every_version else [USAGE_VERSION]
        return [
            self._quote(f"{table.name}_usage_v{v}_{op}")
            for v in versions
            for table in (self.jobs, self.events)
            for op in ("ins", "upd", "del")
        ]

    def _row_bytes(self, table: sa.Table, alias: str, *, mutable_only: bool = False) -> str:
        """SQL for the bytes of one row of ``table`` (named ``alias``) as the service wrote
        it: a header, fixed-width columns at their width, text and JSON at their length
        before the database's compression (the same whether the value is read from a
        statement's new rows or from disk, so what a delete subtracts is what the insert
        added). ``mutable_only``: without ``spec``, which no UPDATE ever sets, so an update
        of a job's progress never reads (detoasts) a spec of 100k values."""
        parts = [str(ROW_HEADER_BYTES)]
        for column in table.columns:
            if mutable_only and column.name == "spec":
                continue
            ref = f"{alias}.{self._quote(column.name)}"
            if isinstance(column.type, sa.JSON):
                size = f"octet_length({ref}::text)"
            elif isinstance(column.type, sa.String):
                size = f"octet_length({ref})"
            else:
                size = f"pg_column_size({ref})"
            parts.append(f"coalesce({size}, 0)")
        return " + ".join(parts)

    def _install_usage(self, conn: Connection) -> None:
        """Install the triggers that keep ``job_usage`` and count what is already stored,
        unless this version's are in place: once per store (and per formula version)."""
        assert self.usage is not None
        names = self._usage_functions()
        jobs, events = self._quote(self.jobs.name), self._quote(self.events.name)
        installed = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                "WHERE t.tgrelid IN (CAST(:jobs AS regclass), CAST(:events AS regclass)) "
                "AND NOT t.tgisinternal AND p.proname = ANY(:names)"
            ),
            {"jobs": jobs, "events": events, "names": [n.strip('"') for n in names]},
        ).scalar_one()
        slots = conn.execute(sa.select(sa.func.count()).select_from(self.usage)).scalar_one()
        if installed == len(names) and slots == USAGE_SLOTS:
            return
        # Writers wait from here to the commit: the count below sees every row, and every
        # write after it goes through the triggers (row locks of running writes are waited for).
        conn.execute(sa.text(f"LOCK TABLE {jobs}, {events} IN SHARE ROW EXCLUSIVE MODE"))
        usage = self._quote(self.usage.name)
        slot = f"pg_backend_pid() % {USAGE_SLOTS}"
        functions = iter(names)
        for table in (self.jobs, self.events):
            full = self._row_bytes(table, "r")
            mutable = self._row_bytes(table, "r", mutable_only=True)
            bodies = {
                "ins": (
                    f"SELECT coalesce(sum({full}), 0) FROM new_rows r",
                    "NEW TABLE AS new_rows",
                ),
                "upd": (
                    f"SELECT coalesce((SELECT sum({mutable}) FROM new_rows r), 0)"
                    f" - coalesce((SELECT sum({mutable}) FROM old_rows r), 0)",
                    "NEW TABLE AS new_rows OLD TABLE AS old_rows",
                ),
                "del": (
                    f"SELECT -coalesce(sum({full}), 0) FROM old_rows r",
                    "OLD TABLE AS old_rows",
                ),
            }
            for op, event in (("ins", "INSERT"), ("upd", "UPDATE"), ("del", "DELETE")):
                query, referencing = bodies[op]
                function = next(functions)
                conn.execute(
                    sa.text(
                        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger "
                        "LANGUAGE plpgsql AS $body$ DECLARE d bigint; BEGIN "
                        f"{query} INTO d; "
                        f"IF d <> 0 THEN UPDATE {usage} SET bytes = bytes + d "
                        f"WHERE slot = {slot}; END IF; RETURN NULL; END $body$"
                    )
                )
                trigger = self._quote(f"{table.name}_usage_{op}")
                target = self._quote(table.name)
                conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {trigger} ON {target}"))
                conn.execute(
                    sa.text(
                        f"CREATE TRIGGER {trigger} AFTER {event} ON {target} "
                        f"REFERENCING {referencing} FOR EACH STATEMENT "
                        f"EXECUTE FUNCTION {function}()"
                    )
                )
        total = self.scan_record_bytes(conn)
        conn.execute(sa.delete(self.usage))
        conn.execute(
            sa.insert(self.usage),
            [{"slot": k, "bytes": total if k == 0 else 0} for k in range(USAGE_SLOTS)],
        )
        log.info("job store: usage triggers v%d installed, %d bytes counted", USAGE_VERSION, total)

    def scan_record_bytes(self, conn: Connection | None = None) -> int:
        """PostgreSQL: the bytes of every row of ``jobs`` and ``job_events`` by the usage
        triggers' formula, counted by reading them all (O(rows): the start that installs the
        triggers, and tests and bench/bench_quota.py checking the running total)."""
        if conn is None:
            with self.engine.connect() as own:
                return self.scan_record_bytes(own)
        total = 0
        for table in (self.jobs, self.events):
            size = self._row_bytes(table, "r")
            query = f"SELECT coalesce(sum({size}), 0) FROM {self._quote(table.name)} r"
            total += int(conn.execute(sa.text(query)).scalar_one())
        return total

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def ping(self) -> None:
        """Raise when the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(sa.select(sa.func.count()).select_from(self.jobs))

    def describe(self) -> str:
        """Return the store's URL without its password, for messages."""
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def _db_now(self) -> Any:
        """The database's clock in seconds since the epoch, as an SQL expression."""
        if self.engine.dialect.name == "postgresql":
            return sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Float)
        if self.engine.dialect.name == "sqlite":
            return (sa.func.julianday("now") - 2440587.5) * 86400.0
        return sa.literal(time.time(), sa.Float)

    # ----------------------------------------------------------------- reading

    def get(self, job_id: str, *, raw: bool = False) -> JobRecord | None:
        """Return the job, or None (``raw``: see :meth:`_columns`)."""
        with self.engine.connect() as conn:
            return self._get(conn, job_id, raw=raw)

    def _get(self, conn: Connection, job_id: str, *, raw: bool = False) -> JobRecord | None:
        query = sa.select(*self._columns(raw)).where(self.jobs.c.id == job_id)
        row = conn.execute(query).mappings().first()
        return JobRecord.from_row(row) if row else None

    def _columns(self, raw: bool) -> list[Any]:
        """The jobs table's columns; with ``raw``, ``spec`` and ``result`` come as the JSON
        text stored (never parsed: a result may hold millions of values, and the API
        copies it into its response as is)."""
        if not raw:
            return list(self.jobs.columns)
        return [
            sa.cast(c, sa.Text).label(c.name) if c.name in RAW_COLUMNS else c
            for c in self.jobs.columns
        ]

    def list_jobs(
        self,
        status: str | None = None,
        limit: int = 20,
        before_seq: int | None = None,
        *,
        raw: bool = False,
        owner: str | None = None,
    ) -> list[JobRecord]:
        """Return up to ``limit`` jobs newest first, older than ``before_seq`` when given,
        and only those ``owner`` submitted when given (index ``(owner, seq)``)."""
        query = sa.select(*self._columns(raw)).order_by(self.jobs.c.seq.desc()).limit(limit)
        if status is not None:
            query = query.where(self.jobs.c.status == status)
        if before_seq is not None:
            query = query.where(self.jobs.c.seq < before_seq)
        if owner is not None:
            query = query.where(self.jobs.c.owner == owner)
        with self.engine.connect() as conn:
            return [JobRecord.from_row(row) for row in conn.execute(query).mappings()]

    def owner_of(self, job_id: str) -> str | None:
        """Return the digest of the API key that submitted the job, or None (no such job, or
        one submitted without a key; an earlier version's replica may have recorded the
        owner only in the old owners table, read when the job's column is empty). An id
        that is not 32 hex digits names no job and never reaches the database (PostgreSQL
        refuses a NUL in text)."""
        if not JOB_ID.fullmatch(job_id):
            return None
        query = (
            sa.select(sa.func.coalesce(self.jobs.c.owner, self.owners.c.key_hash))
            .select_from(self.jobs.outerjoin(self.owners, self.owners.c.job_id == self.jobs.c.id))
            .where(self.jobs.c.id == job_id)
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

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

    def files(self) -> list[Path]:
        """Return the files an SQLite store keeps its records in (none for a server)."""
        url = self.engine.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return []
        main = Path(url.database).resolve()
        return [main, *(main.with_name(main.name + s) for s in ("-wal", "-shm", "-journal"))]

    def record_bytes(self) -> int:
        """Return about how many bytes the job records and events take in the database,
        counting live data only, so deleting jobs frees what the quota counts; O(1) however
        many jobs there are: SQLite's pages in use (its file does not shrink after a
        delete); on PostgreSQL the sum of the ``job_usage`` slots that the triggers keep
        (each row's header, fixed-width columns, text and JSON at their uncompressed length:
        :meth:`scan_record_bytes` counts the same by reading every row)."""
        dialect = self.engine.dialect.name
        with self.engine.connect() as conn:
            if dialect == "sqlite":
                pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
                free = conn.exec_driver_sql("PRAGMA freelist_count").scalar_one()
                size = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
                return int((pages - free) * size)
            if self.usage is not None:
                query = sa.select(sa.func.coalesce(sa.func.sum(self.usage.c.bytes), 0))
                return int(conn.execute(query).scalar_one())
        return 0

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
        caps: QueueCaps | None = None,
        owner: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Insert a queued job (submitted by ``client``, with the API key whose digest is
        ``owner``); return it and True, or the job already stored under ``idempotency_key``
        and False.

        With ``caps``, raise :class:`QueueFull` instead when the job would make the queued
        and running jobs (of ``client``) more than a cap allows. The count and the insert are
        one transaction that holds the store's write lock (SQLite: the INSERT takes it, then
        the count sees every committed job; PostgreSQL: an advisory lock per table prefix
        that every submit takes first), so any number of API processes sharing the store
        never admit more than the caps between them."""
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
            "owner": owner,
        }
        try:
            with self.engine.begin() as conn:
                if caps and conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._lock_key})
                conn.execute(sa.insert(self.jobs).values(**values))
                if caps:
                    self._check_caps(conn, caps, client)  # raises: the insert is rolled back
                if owner is not None:  # for an earlier version's replica: see the module's doc
                    conn.execute(sa.insert(self.owners).values(job_id=job_id, key_hash=owner))
                self._event(conn, job_id, "status", {"status": "queued"})
                record = self._get(conn, job_id)
        except sa.exc.IntegrityError:
            if idempotency_key is None:
                raise
            existing = self.by_idempotency_key(idempotency_key)
            if existing is None:  # deleted in between: try once more
                return self.create(spec, spec_hash, idempotency_key, client, caps, owner)
            return existing, False
        assert record is not None
        return record, True

    @property
    def _lock_key(self) -> int:
        digest = hashlib.sha256(f"lrs-queue:{self.table_prefix}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _check_caps(self, conn: Connection, caps: QueueCaps, client: str | None) -> None:
        """Raise QueueFull when the jobs queued or running, the new one included, exceed a
        cap (the per-client cap first)."""
        active = self.jobs.c.status.in_(("queued", "running"))
        count = sa.select(sa.func.count()).select_from(self.jobs).where(active)
        if caps.per_client and client is not None:
            mine = conn.execute(count.where(self.jobs.c.client == client)).scalar_one()
            if mine > caps.per_client:
                raise QueueFull("client")
        if caps.total and conn.execute(count).scalar_one() > caps.total:
            raise QueueFull("total")

    def by_idempotency_key(self, key: str) -> JobRecord | None:
        """Return the job created with ``key``, or None."""
        query = sa.select(self.jobs).where(self.jobs.c.idempotency_key == key)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return JobRecord.from_row(row) if row else None

    def _claim_values(self, worker: str, token: str) -> dict[str, Any]:
        return {
            "status": "running",
            "started_at": _now(),
            "run_token": token,
            "worker": worker[:64],
            "lease_owner": lease.identity(),
            "lease_expires": self._db_now() + self.lease_s,
            "attempts": sa.func.coalesce(self.jobs.c.attempts, 0) + 1,
        }

    def claim_next(self, worker: str) -> JobRecord | None:
        """Move the oldest queued job to running for ``worker`` (this process holds the
        lease) and return it (FIFO)."""
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
                    .values(**self._claim_values(worker, token))
                ).rowcount
                if claimed:
                    job_id = conn.execute(
                        sa.select(self.jobs.c.id).where(self.jobs.c.run_token == token)
                    ).scalar_one()
                    self._event(conn, job_id, "status", {"status": "running"})
                    return self._get(conn, job_id)
            if not self._any_queued():
                return None

    def claim(self, job_id: str, worker: str) -> JobRecord | None:
        """Move the job to running for ``worker`` if it is queued; return it, or None when it
        is not queued (cancelled, deleted, or another worker has it)."""
        token = secrets.token_hex(16)
        with self.engine.begin() as conn:
            claimed = conn.execute(
                sa.update(self.jobs)
                .where(self.jobs.c.id == job_id, self.jobs.c.status == "queued")
                .values(**self._claim_values(worker, token))
            ).rowcount
            if not claimed:
                return None
            self._event(conn, job_id, "status", {"status": "running"})
            return self._get(conn, job_id)

    def heartbeat(self, job_id: str, token: str) -> bool:
        """Renew the run's lease for ``lease_s`` more; False when the job is no longer this
        run's (finished, or taken away after its lease expired)."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    sa.update(self.jobs)
                    .where(
                        self.jobs.c.id == job_id,
                        self.jobs.c.status == "running",
                        self.jobs.c.run_token == token,
                    )
                    .values(lease_expires=self._db_now() + self.lease_s)
                ).rowcount
            )

    def reap(
        self, owner_state: Callable[[str | None], str] = lease.owner_state
    ) -> tuple[list[str], list[str]]:
        """Take running jobs away from workers that stopped renewing their lease.

        A job whose lease expired (unless ``owner_state(owner)`` says its owner is a live
        process of this machine), or whose owner is ``"gone"``, is
        queued again when its spec's ``retries`` are not used up (and nobody asked to cancel
        it), otherwise marked ``interrupted`` (``cancelled`` when a cancel was pending).
        Jobs whose lease is alive are never touched. Returns (requeued ids, finished ids).
        """
        now = self._db_now()
        expired = sa.or_(self.jobs.c.lease_expires.is_(None), self.jobs.c.lease_expires < now)
        columns = [self.jobs.c[n] for n in ("id", "run_token", "lease_owner", "lease_expires")]
        with self.engine.connect() as conn:
            running = conn.execute(
                sa.select(*columns, expired.label("expired")).where(self.jobs.c.status == "running")
            ).all()
        requeued: list[str] = []
        finished: list[str] = []
        for job_id, token, owner, _expires, is_expired in running:
            state = owner_state(owner)
            if state == "alive" or (state == "unknown" and not is_expired):
                continue
            outcome = self._take_away(job_id, token, owner if state == "gone" else None)
            if outcome == "queued":
                requeued.append(job_id)
            elif outcome:
                finished.append(job_id)
        return requeued, finished

    def _take_away(self, job_id: str, token: str | None, dead_owner: str | None) -> str | None:
        where = [
            self.jobs.c.id == job_id,
            self.jobs.c.status == "running",
            self.jobs.c.run_token.is_(None) if token is None else self.jobs.c.run_token == token,
        ]
        if dead_owner is None:  # expired: still expired now (a heartbeat may have just come)
            where.append(
                sa.or_(
                    self.jobs.c.lease_expires.is_(None), self.jobs.c.lease_expires < self._db_now()
                )
            )
            why = (
                f"its worker stopped renewing the job's lease ({self.lease_s:g} s, "
                "LRS_JOB_LEASE_S): the worker or its machine died or lost the store"
            )
        else:
            why = f"its worker process ({dead_owner}) is gone"
        with self.engine.begin() as conn:
            record = self._get(conn, job_id)
            if record is None or record.status != "running" or record.run_token != token:
                return None
            retries = record.spec.get("retries", 0) if isinstance(record.spec, dict) else 0
            attempts = record.attempts or 0
            if not record.cancel_requested and attempts <= (retries or 0):
                done = conn.execute(
                    sa.update(self.jobs)
                    .where(*where)
                    .values(
                        status="queued",
                        started_at=None,
                        progress=None,
                        run_token=None,
                        worker=None,
                        lease_owner=None,
                        lease_expires=None,
                    )
                ).rowcount
                if done:
                    detail = (
                        f"run {attempts} of at most {retries + 1} lost: {why}; queued again "
                        "(the spec asked for retries)"
                    )
                    self._event(conn, job_id, "status", {"status": "queued", "detail": detail})
                    return "queued"
                return None
            status = "cancelled" if record.cancel_requested else "interrupted"
            error = {
                "type": status,
                "detail": f"the job was running when {why}; submit it again to rerun it"
                + (f" (it had {attempts} runs)" if attempts > 1 else ""),
            }
            done = conn.execute(
                sa.update(self.jobs)
                .where(*where)
                .values(status=status, finished_at=_now(), error=error)
            ).rowcount
            if done:
                self._event(conn, job_id, TERMINAL_EVENT, {"status": status, "error": error})
                return status
            return None

    def withdraw(self, job_id: str) -> bool:
        """Delete a job that is still queued (its submission could not be handed to the
        executor); return False when it is no longer queued."""
        with self.engine.begin() as conn:
            deleted = conn.execute(
                sa.delete(self.jobs).where(self.jobs.c.id == job_id, self.jobs.c.status == "queued")
            ).rowcount
            if deleted:
                conn.execute(sa.delete(self.events).where(self.events.c.job_id == job_id))
                conn.execute(sa.delete(self.owners).where(self.owners.c.job_id == job_id))
        return bool(deleted)

    def queued_ids(self, limit: int = 10_000, min_age_s: float = 0.0) -> list[str]:
        """Return the ids of queued jobs created at least ``min_age_s`` ago, oldest first."""
        query = (
            sa.select(self.jobs.c.id)
            .where(self.jobs.c.status == "queued")
            .order_by(self.jobs.c.seq)
            .limit(limit)
        )
        if min_age_s > 0:
            query = query.where(self.jobs.c.created_at <= _now() - timedelta(seconds=min_age_s))
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

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
                conn.execute(sa.delete(self.owners).where(self.owners.c.job_id == job_id))
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


def create_tables(
    engine: Engine,
    metadata: sa.MetaData,
    table_prefix: str = "",
    then: Callable[[Connection], None] | None = None,
) -> None:
    """``metadata.create_all`` that several processes may run at the same instant: on
    PostgreSQL they queue on an advisory lock (two concurrent ``CREATE TABLE`` otherwise
    collide on the type catalog); on SQLite a lost race (the table appeared meanwhile) is
    retried once. ``then(conn)`` runs in the same transaction."""
    for attempt in range(2):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    digest = hashlib.sha256(f"lrs-schema:{table_prefix}".encode()).digest()
                    key = int.from_bytes(digest[:8], "big", signed=True)
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
                metadata.create_all(conn)
                if then is not None:
                    then(conn)
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
            if attempt:
                raise


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
