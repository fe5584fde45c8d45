"""The data quota's count of the job records on PostgreSQL, before and after issue 15's fix.

Before, :meth:`Store.record_bytes` summed ``pg_column_size`` over every column of every row of
``jobs`` and ``job_events`` (a scan of both tables, run by every API process every 30 s, and
every second while the quota was full). Now it sums the ``job_usage`` slots the triggers keep
(16 rows, whatever the number of jobs). This script fills a store with ``--jobs`` finished
jobs (a result of ``--values`` floats each, three events each), then times, interleaved in
one process, the old scan, the full recount by the new formula
(:meth:`Store.scan_record_bytes`, what the triggers' total must equal) and the new
``record_bytes``: medians of ``--repeat`` runs, wall time (the work is the database
server's) and this process's CPU time. It also times what the triggers add to the writes: a
submit (insert + event) and a finish (update + event) in the store with triggers and in a
twin store whose triggers were dropped, interleaved. Prints the machine and its load.

    .venv/bin/python bench/bench_quota.py [--jobs 50000] [--values 100] [--repeat 15]

Needs the PostgreSQL of the tests (``postgresql+psycopg://postgres@127.0.0.1:5432/test``, or
``--url``); its tables get a unique prefix and are dropped at the end.
"""

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from harness import loadavg, machine  # first: puts the repository root on sys.path

from service.jobs.store import ROW_HEADER_BYTES, Store

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def old_record_bytes(store: Store) -> int:
    """The quota's count of the records before issue 15's fix (a scan of every row)."""
    total = 0
    with store.engine.connect() as conn:
        for table in (store.jobs, store.events):
            row_bytes = sa.literal(ROW_HEADER_BYTES)
            for column in table.columns:
                row_bytes = row_bytes + sa.func.coalesce(sa.func.pg_column_size(column), 0)
            query = sa.select(sa.func.coalesce(sa.func.sum(row_bytes), 0)).select_from(table)
            total += int(conn.execute(query).scalar_one())
    return total


def fill(store: Store, jobs: int, values: int) -> None:
    """Insert ``jobs`` succeeded jobs with their events, 1000 jobs to a statement."""
    result = {"lr": [0.1 * (1 - k / values) for k in range(values)], "test_loss": 0.01}
    spec = {"epochs": 1, "data": {"type": "noisy_sine", "n": 100, "n_train": 60}}
    now = datetime.now(UTC)
    for start in range(0, jobs, 1000):
        rows = [
            {
                "id": uuid.uuid4().hex,
                "status": "succeeded",
                "created_at": now,
                "finished_at": now,
                "spec": spec,
                "result": result,
                "spec_hash": "bench",
                "cancel_requested": False,
                "client": "ip:bench",
                "owner": "f" * 64,
            }
            for _ in range(min(1000, jobs - start))
        ]
        with store.engine.begin() as conn:
            conn.execute(sa.insert(store.jobs).values(rows))  # one statement: one trigger call
            events = [
                {"job_id": row["id"], "event": event, "data": data}
                for row in rows
                for event, data in (
                    ("status", {"status": "queued"}),
                    ("status", {"status": "running"}),
                    ("done", {"status": "succeeded", "error": None}),
                )
            ]
            conn.execute(sa.insert(store.events).values(events))


def timed(call, repeat: int) -> tuple[float, float, object]:
    """Return the median wall and CPU milliseconds of ``call`` and its last value."""
    walls, cpus = [], []
    value = None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        value = call()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3, value


def write_ms(store: Store, result: dict, repeat: int) -> float:
    """Median milliseconds of one submit and its finish with a result."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        record, _ = store.create({"epochs": 1}, "bench", client="ip:bench")
        store.finish(record.id, "succeeded", from_status=("queued",), result=result)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--values", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--url", default=URL)
    args = parser.parse_args()

    store = Store(args.url, f"bq{uuid.uuid4().hex[:8]}_")
    twin = Store(args.url, f"bq{uuid.uuid4().hex[:8]}_")
    try:
        store.create_schema()
        twin.create_schema()
        with twin.engine.begin() as conn:  # the twin writes without the triggers
            for table in (twin.jobs, twin.events):
                for op in ("ins", "upd", "del"):
                    name = twin._quote(f"{table.name}_usage_{op}")
                    conn.execute(sa.text(f"DROP TRIGGER {name} ON {twin._quote(table.name)}"))
        start = time.perf_counter()
        fill(store, args.jobs, args.values)
        filled = time.perf_counter() - start
        with store.engine.begin() as conn:
            conn.execute(sa.text(f"ANALYZE {store._quote(store.jobs.name)}"))
            conn.execute(sa.text(f"ANALYZE {store._quote(store.events.name)}"))
        print(f"machine: {machine()}")
        print(f"load before: {loadavg()}")
        print(
            f"{args.jobs:,} jobs ({args.values} result values each) and {3 * args.jobs:,} "
            f"events inserted in {filled:.1f} s (triggers on)"
        )
        rows = {"old scan (pg_column_size of every row)": [], "recount (new formula)": []}
        rows["record_bytes (job_usage slots)"] = []
        values: dict[str, object] = {}
        calls = {
            "old scan (pg_column_size of every row)": lambda: old_record_bytes(store),
            "recount (new formula)": store.scan_record_bytes,
            "record_bytes (job_usage slots)": store.record_bytes,
        }
        for call in calls.values():
            call()  # warm the caches
        for _ in range(args.repeat):  # interleaved: the load hits all three alike
            for name, call in calls.items():
                wall, cpu, value = timed(call, 1)
                rows[name].append((wall, cpu))
                values[name] = value
        print("\n| quota count of the records | median wall ms | median CPU ms (client) | bytes |")
        print("|---|---:|---:|---:|")
        for name, samples in rows.items():
            wall = statistics.median(s[0] for s in samples)
            cpu = statistics.median(s[1] for s in samples)
            print(f"| {name} | {wall:.2f} | {cpu:.2f} | {values[name]:,} |")
        same = values["recount (new formula)"] == values["record_bytes (job_usage slots)"]
        print(f"\nrunning total equals the recount: {same}")

        result = {"lr": [0.1] * 1000, "test_loss": 0.01}
        with_t, without_t = [], []
        for _ in range(5):  # interleaved rounds
            with_t.append(write_ms(store, result, 20))
            without_t.append(write_ms(twin, result, 20))
        print(
            f"submit + finish (1000-value result), median ms: with triggers "
            f"{statistics.median(with_t):.2f}, without {statistics.median(without_t):.2f}"
        )
        print(f"load after: {loadavg()}")
    finally:
        for s in (store, twin):
            s.drop_schema()
            s.dispose()


if __name__ == "__main__":
    main()
