"""Job operations behind the HTTP routes: submit, get, list, cancel, delete, recover.

Checks a spec against the limits in force and against torch (a dry build of its optimizer
and schedule) before it is queued, so a spec torch would refuse is a 422, never a failed job.
"""

import base64
import binascii
import hashlib
import hmac
import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.auth import Forbidden
from service.devices import resolve_device
from service.errors import (
    Conflict,
    InvalidSpec,
    LimitExceeded,
    NotFound,
    TooManyRequests,
    Unavailable,
)
from service.jobs import specs, trainer
from service.jobs.artifacts import Artifacts
from service.jobs.executor import Executor
from service.jobs.store import JobRecord, QueueCaps, QueueFull, Store
from service.settings import Settings

MAX_SEQ = 2**63 - 1
"""Largest job ``seq`` (a signed 64-bit key in every store)."""
MAX_SEED = 2**64 - 1
"""Largest seed ``torch.manual_seed`` takes."""
UNTRAINABLE: dict[str, str] = {
    "LBFGS": "its step() needs a closure that re-evaluates the loss, and a job steps once per "
    "accumulation group",
    "SparseAdam": "it needs sparse gradients and the MLP's are dense",
    "Muon": "it takes 2-D parameters only and every Linear layer has a 1-D bias",
}
"""torch.optim classes the schedule API builds but a job cannot train with, and why."""
MODEL_PT_OVERHEAD = 8192
"""Bytes of ``model.pt`` beyond 4 a parameter (torch.save's zip; 2.6 KB for the seed's)."""
STORAGE_RECHECK_S = 30.0
"""How often the data directory is measured even when no run was published (records grow)."""


def model_parameters(model: specs.ModelSpec, tau: int) -> int:
    """Return the number of parameters (weights and biases) of the job's MLP."""
    widths = [tau, *model.hidden, 1]
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(widths))


def _check_float32(value: Any, loc: tuple[str | int, ...]) -> None:
    """Raise InvalidSpec at the first float in ``value`` that float32 cannot hold."""
    if isinstance(value, float) and abs(value) > specs.FLOAT32_MAX:
        where = ".".join(str(p) for p in loc[1:])
        raise InvalidSpec(
            f"{where}={value:g} overflows float32 (largest 3.4e38), which a job trains in: "
            "torch would fail at the first optimizer step; use a smaller value",
            loc=loc,
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _check_float32(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_float32(item, (*loc, index))


def tree_bytes(path: Path, skip: set[Path] | None = None) -> int:
    """Return the bytes of the regular files under ``path``, not counting the files or
    folders in ``skip`` (links are not followed)."""
    skip = {p.resolve() for p in skip or ()}
    total = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if Path(entry.path).resolve() in skip:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue  # removed while we looked
    return total


class JobService:
    """The jobs domain: the store, the executor and the artifacts folder together."""

    def __init__(
        self, settings: Settings, store: Store, executor: Executor, artifacts: Artifacts
    ) -> None:
        self.settings = settings
        self.store = store
        self.executor = executor
        self.artifacts = artifacts
        self.storage_full = False
        self._storage_seen: tuple[int, float] = (-1, 0.0)

    # ----------------------------------------------------------------- submit

    def check(self, spec: specs.JobSpec) -> None:
        """Raise LimitExceeded/InvalidSpec (422) unless ``spec`` can run here."""
        limits = self.settings
        if spec.epochs > limits.job_max_epochs:
            raise LimitExceeded(
                f"epochs={spec.epochs} is above the limit of {limits.job_max_epochs} "
                "(LRS_JOB_MAX_EPOCHS)",
                loc=("body", "epochs"),
            )
        if spec.data.length > limits.job_max_series:
            field = "values" if isinstance(spec.data, specs.Series) else "n"
            raise LimitExceeded(
                f"the series has {spec.data.length} values; the limit is "
                f"{limits.job_max_series} (LRS_JOB_MAX_SERIES)",
                loc=("body", "data", field),
            )
        data = spec.data
        if data.tau > specs.MAX_WIDTH:
            raise LimitExceeded(
                f"tau={data.tau} is above {specs.MAX_WIDTH}: tau is the input width of the "
                "first Linear layer, and no layer is wider than that",
                loc=("body", "data", "tau"),
            )
        windows = data.length - data.tau
        if windows * data.tau > limits.job_max_example_values:
            raise LimitExceeded(
                f"the examples would hold {windows * data.tau:,} values ({windows:,} windows of "
                f"tau={data.tau}); the limit is {limits.job_max_example_values:,} "
                "(LRS_JOB_MAX_EXAMPLE_VALUES): shorten the series or lower tau",
                loc=("body", "data", "tau"),
            )
        if spec.seed > MAX_SEED:
            raise InvalidSpec(
                f"seed={spec.seed} is above {MAX_SEED}, the largest torch.manual_seed takes",
                loc=("body", "seed"),
            )
        if spec.optimizer.type in UNTRAINABLE:
            raise InvalidSpec(
                f"{spec.optimizer.type} cannot train a job: {UNTRAINABLE[spec.optimizer.type]}; "
                "use e.g. SGD or Adam",
                loc=("body", "optimizer", "type"),
            )
        resolve_device(spec.device)
        parameters = model_parameters(spec.model, data.tau)
        model_bytes = 4 * parameters + MODEL_PT_OVERHEAD
        if parameters > limits.job_max_parameters:
            raise LimitExceeded(
                f"the model has {parameters:,} parameters (model.pt about {model_bytes:,} "
                f"bytes); the limit is {limits.job_max_parameters:,} (LRS_JOB_MAX_PARAMETERS): "
                "use fewer or narrower hidden layers",
                loc=("body", "model", "hidden"),
            )
        if limits.job_data_max_bytes and model_bytes > limits.job_data_max_bytes:
            raise LimitExceeded(
                f"model.pt would take about {model_bytes:,} bytes, more than the data "
                f"directory's quota of {limits.job_data_max_bytes:,} (LRS_JOB_DATA_MAX_BYTES)",
                loc=("body", "model", "hidden"),
            )
        dumped = spec.model_dump(mode="json", include={"optimizer", "param_groups", "scheduler"})
        for name in ("optimizer", "param_groups", "scheduler"):
            _check_float32(dumped.get(name), ("body", name))
        n_groups = len(spec.param_groups) if spec.param_groups else 1
        linears = len(spec.model.hidden) + 1
        if n_groups not in (1, linears):
            raise InvalidSpec(
                f"{n_groups} param groups for a model with {linears} Linear layers: give one "
                f"group (all parameters) or one per Linear layer, in order ({linears})",
                loc=("body", "param_groups"),
            )
        trainer.build_schedule(spec)

    def submit(
        self,
        spec: specs.JobSpec,
        idempotency_key: str | None = None,
        client: str | None = None,
        owner: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Queue ``spec`` for ``client`` (the job belongs to the API key whose digest is
        ``owner``); return the job and whether it is new. The same ``idempotency_key`` with
        the same spec returns the first job (even when the queue is full); with another spec
        it is a 422; used by another key, a 403 (before the spec is compared: another key
        learns nothing of the job). Past the queue caps: TooManyRequests (429, the client's)
        or Unavailable (503, everyone's, or the data quota), with Retry-After."""
        self.check(spec)
        body = spec.model_dump(mode="json")
        spec_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        record = self.store.by_idempotency_key(idempotency_key) if idempotency_key else None
        if record is not None:
            created = False
        else:
            self._check_storage()
            limits = self.settings
            caps = QueueCaps(limits.job_queue_max, limits.job_queue_max_per_client)
            try:  # the store counts and inserts at once, for every process sharing it
                record, created = self.store.create(
                    body, spec_hash, idempotency_key, client, caps, owner
                )
            except QueueFull as full:
                raise self._queue_full(full.which) from None
        # an earlier version's replica may have kept the owner only in the old owners table
        stored = record.owner if created or record.owner else self.store.owner_of(record.id)
        if not created and not _same_owner(stored, owner):
            raise Forbidden(
                "this Idempotency-Key was already used by another API key; use a new key",
                loc=("header", "Idempotency-Key"),
            )
        if not created and record.spec_hash != spec_hash:
            raise InvalidSpec(
                f"Idempotency-Key {idempotency_key!r} was already used for job {record.id} "
                "with a different spec; use a new key for a new job",
                loc=("header", "Idempotency-Key"),
            )
        if created:
            try:
                self.executor.submit(record.id)
            except Unavailable:  # the queue is down: keep no job the client is told failed
                if self.store.withdraw(record.id):
                    raise
                record = self.get(record.id)  # another replica handed it on meanwhile
        return record, created

    def _queue_full(self, which: str) -> TooManyRequests | Unavailable:
        limits = self.settings
        retry = {"Retry-After": str(limits.job_retry_after_s)}
        if which == "client":
            return TooManyRequests(
                f"you have {limits.job_queue_max_per_client} jobs queued or running, the most "
                "one client may (LRS_JOB_QUEUE_MAX_PER_CLIENT); retry when one has finished",
                headers=retry,
            )
        return Unavailable(
            f"{limits.job_queue_max} jobs are queued or running, the most the service "
            "takes (LRS_JOB_QUEUE_MAX); retry later",
            headers=retry,
        )

    def _check_storage(self) -> None:
        if self.storage_full:
            limits = self.settings
            raise Unavailable(
                f"the job records take more than the data quota of "
                f"{limits.job_data_max_bytes:,} bytes (LRS_JOB_DATA_MAX_BYTES) on their own "
                f"(in {self.store.describe()}); delete finished jobs",
                headers={"Retry-After": str(limits.job_retry_after_s)},
            )

    def maintain_storage(self, force: bool = False) -> list[str]:
        """Keep the data directory and the job records within LRS_JOB_DATA_MAX_BYTES and the
        artifacts of the newest LRS_JOB_ARTIFACTS_KEEP succeeded jobs: remove the oldest
        others' artifacts (never what ``latest`` points at); return their ids. The records
        count wherever the store keeps them (the SQLite file in the data directory, or the
        PostgreSQL tables: :meth:`Store.record_bytes`, live rows only, so deleting jobs makes
        room). Measures only when a run was published since the last call, every
        STORAGE_RECHECK_S, or on every call while the records alone fill the quota."""
        limits = self.settings
        try:
            mtime = self.artifacts.runs.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = 0
        now = time.monotonic()
        last_mtime, last_at = self._storage_seen
        recheck = force or self.storage_full or now - last_at >= STORAGE_RECHECK_S
        if not recheck and mtime == last_mtime:
            return []
        quota = limits.job_data_max_bytes or None
        records = self.records_bytes() if quota else 0
        budget = None if quota is None else max(0, quota - records)
        removed = self.artifacts.retain(limits.job_artifacts_keep, budget)
        self.storage_full = quota is not None and records > quota
        try:
            mtime = self.artifacts.runs.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = 0
        self._storage_seen = (mtime, now)
        return removed

    def records_bytes(self) -> int:
        """Return the bytes the quota counts besides the artifacts: the data directory's
        other files (the SQLite store's own files measured by their live pages instead) and
        the store's records wherever they are."""
        skip = {self.artifacts.runs, *self.store.files()}
        return tree_bytes(self.settings.data_dir, skip=skip) + self.store.record_bytes()

    # ----------------------------------------------------------------- read

    def get(self, job_id: str, *, raw: bool = False) -> JobRecord:
        """Return the job; NotFound (404) when there is none (any id that is not 32 hex
        digits names none, and never reaches the store). ``raw``: its spec and result as
        their stored JSON text, for :func:`specs.job_json`."""
        if not specs.JOB_ID.fullmatch(job_id):
            raise NotFound(f"no job {job_id!r}: job ids are 32 hex digits", loc=("path", "job_id"))
        record = self.store.get(job_id, raw=raw)
        if record is None:
            raise NotFound(f"no job {job_id!r}", loc=("path", "job_id"))
        return record

    def list_page(
        self,
        status: str | None,
        page_size: int,
        page_token: str | None,
        render: Callable[[JobRecord], bytes],
        max_bytes: int,
        owner: str | None = None,
    ) -> tuple[list[bytes], str | None]:
        """Return one page of jobs, newest first, each rendered by ``render``, and the token
        of the next page (or None); with ``owner``, only the jobs of that API key digest (a
        token names a position only: every page is filtered again, so a token taken from
        another key's listing shows nothing of that key's). The page ends early, with a
        token, rather than pass ``max_bytes`` (it always holds one job). Records are read
        in growing chunks, so a page of a few huge jobs never loads a hundred of them, and
        raw (spec and result as their stored JSON text, which ``render`` copies:
        :func:`specs.job_json`)."""
        before = _decode_token(page_token, status) if page_token else None
        parts: list[bytes] = []
        size = 0
        chunk = 1
        last: JobRecord | None = None
        while True:
            records = self.store.list_jobs(status, chunk, before, raw=True, owner=owner)
            for record in records:
                if len(parts) == page_size:
                    return parts, _encode_token(last.seq, status) if last else None
                part = render(record)
                if parts and size + len(part) > max_bytes:
                    return parts, _encode_token(last.seq, status) if last else None
                parts.append(part)
                size += len(part) + 1
                last = record
            if len(records) < chunk:
                return parts, None
            before = records[-1].seq
            chunk = min(chunk * 2, page_size + 1 - len(parts), 32) or 1

    # ----------------------------------------------------------------- change

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job now, or ask a running one to stop before its next batch.
        Conflict (409) when the job already finished."""
        record = self.get(job_id)
        error = {"type": "cancelled", "detail": "cancelled on request before it started"}
        if record.status == "queued" and self.store.finish(
            job_id, "cancelled", from_status=("queued",), error=error
        ):
            self.executor.cancel(record)  # e.g. revoke its Celery task
            return self.get(job_id)
        if self.store.request_cancel(job_id):
            self.executor.cancel(self.get(job_id))
            record = self.get(job_id)
            if record.status in specs.FINISHED and record.status != "cancelled":
                raise Conflict(
                    f"job {job_id} finished ({record.status}) before the cancel took effect: "
                    "it had run its last batch; the job's `cancel` says so too"
                )
            return record
        record = self.get(job_id)
        if record.status in specs.FINISHED:
            raise Conflict(
                f"job {job_id} already finished ({record.status}); only queued or running "
                "jobs can be cancelled"
            )
        return record

    def delete(self, job_id: str) -> None:
        """Delete a finished job, its events and its artifacts; Conflict (409) otherwise."""
        self.get(job_id)
        if not self.store.delete(job_id):
            record = self.get(job_id)  # NotFound when a concurrent delete removed it
            raise Conflict(
                f"job {job_id} is {record.status}; cancel it first, only finished jobs can "
                "be deleted"
            )
        self.artifacts.unpublish(job_id, self.store.latest_succeeded)

    def recover(self) -> list[str]:
        """After a start: take away running jobs whose lease expired or whose worker is gone
        (interrupted, or requeued when retries are left; return the ids of those finished),
        sweep staging folders that no running job owns, and hand the queued jobs to the
        executor. Jobs another live process runs are left alone."""
        _requeued, finished = self.store.reap()
        self.artifacts.sweep(active=self._running)
        self.executor.resume()
        return finished

    def _running(self, job_id: str) -> bool:
        record = self.store.get(job_id)
        return record is not None and record.status == "running"


def _same_owner(stored: str | None, caller: str | None) -> bool:
    """Whether a replayed job is the caller's: a job of no key is anyone's (keys were off)."""
    if stored is None:
        return True
    return caller is not None and hmac.compare_digest(stored, caller)


def _encode_token(seq: int, status: str | None) -> str:
    raw = json.dumps({"before": seq, "status": status}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, status: str | None) -> int:
    try:
        raw: Any = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        before = raw["before"]
        same_query = raw["status"] == status
        if type(before) is not int or not 0 < before <= MAX_SEQ:
            raise ValueError(before)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidSpec(
            "page_token is not a token this service issued; pass next_page_token unchanged",
            loc=("query", "page_token"),
        ) from None
    if not same_query:
        raise InvalidSpec(
            "page_token belongs to another query: keep the same status filter while paging",
            loc=("query", "page_token"),
        )
    return before
