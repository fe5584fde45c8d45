"""Every limit, path and switch of the service, in one place.

Each field can be set from the environment with the ``LRS_`` prefix, e.g.
``LRS_TORCH_MAX_STEPS=50000``. ``DATABASE_URL`` is also read without the prefix.

Every limit is read from the settings the app was created with: routes get them as a
dependency, and spec validators read :func:`current_settings`, which a dependency binds to the
app's settings for each request (:func:`using_settings` binds them elsewhere, e.g. in a batch
or a test). Outside of both, it is the environment's :func:`get_settings`.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service configuration. Defaults are the embedded, single-machine setup."""

    model_config = SettingsConfigDict(env_prefix="LRS_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Job records, artifacts and runs.")

    # HTTP
    max_body_bytes: int = Field(default=1 << 20, description="Request bodies above this get 413.")
    max_state_bytes: int = Field(
        default=256 << 10,
        ge=1,
        description="Largest scheduler state `.pt` uploaded to POST /v1/schedules/resume "
        "(413 beyond, refused while it streams; a state_dict() is a few KB). The whole "
        "multipart body stays under LRS_MAX_BODY_BYTES too.",
    )

    # Schedules
    torch_max_steps: int = Field(
        default=100_000,
        description="Largest `steps` the torch engine accepts (it steps a real scheduler).",
    )
    torch_max_work: int = Field(
        default=1_600_000,
        description="Largest torch cost accepted: scheduler steps × param groups × (schedulers "
        "+ lr_lambda operations / 64), in scheduler updates (about 15 µs each).",
    )
    compute_max_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Wall-clock limit of one schedule computation, any engine and format (a "
        "batch counts as one); past it the request is a 422. Checked between chunks of work; "
        "a client that disconnects stops its computation too.",
    )
    vectorized_max_cost: int = Field(
        default=800_000_000,
        description="Largest vectorized cost accepted, about 1 ns of CPU a unit: every "
        "scheduler's closed form weighted per step and per value as measured "
        "(bench/bench_cost.py: torch's cosine 8 ns a value, Megatron's 17-25, timm's 12-28, "
        "transformers' 20-45 plus 120-310 a step, optax's 11-220 growing with the groups), "
        "12 a step per lr_lambda operation (each distinct expression once, whatever the "
        "groups), a ChainedScheduler's scan and 500 a step for a metric-driven schedule's scan "
        "over the metrics; the total of one batch too. 8e8 is 0.8 s of CPU on an idle core, "
        "within LRS_COMPUTE_MAX_SECONDS up to about 6x contention (load 12 on 2 cores).",
    )
    compute_heavy_share: float = Field(
        default=0.1,
        description="A request costing more than this share of its engine's limit is "
        "expensive: expensive requests take turns on one compute thread, so cheaper ones "
        "always find another.",
    )
    vectorized_max_steps: int = Field(
        default=10_000_000, description="Largest `steps` the vectorized engine accepts."
    )
    vectorized_max_values: int = Field(
        default=40_000_000,
        description="Largest scheduler steps × param groups the vectorized engine computes "
        "(10M steps × 16 groups took 9 s and 4 GB).",
    )
    json_max_points: int = Field(
        default=1_000_000,
        description="Most values per group in a JSON/CSV response; use `sample` or npy beyond.",
    )
    max_param_groups: int = Field(default=16, description="Most param groups in one request.")
    max_schedulers: int = Field(
        default=16, description="Most scheduler specs in one request, counting nested ones."
    )
    max_nesting_depth: int = Field(
        default=4, description="Deepest SequentialLR/ChainedScheduler nesting accepted."
    )
    max_sample_points: int = Field(default=100_000, description="Most indices in `sample.at`.")
    max_skipped_steps: int = Field(
        default=100_000, description="Most optimizer steps in `skipped_steps`."
    )
    max_accumulation_steps: int = Field(
        default=65_536, description="Largest `accumulation_steps` (micro-batches per step)."
    )
    max_counter_queries: int = Field(
        default=10_000, description="Most counter values in `counter.at`."
    )
    max_rampup_increments: int = Field(
        default=10_000,
        description="Most batch-size increments of a `counter.rampup_batch_size` ramp-up.",
    )
    expression_max_length: int = Field(default=1000, description="Longest lr_lambda expression.")
    expression_max_depth: int = Field(
        default=32, description="Deepest lr_lambda expression nesting."
    )
    expression_max_nodes: int = Field(default=256, description="Most AST nodes in one lr_lambda.")
    batch_max_specs: int = Field(default=1000, description="Most specs in one batch request.")
    batch_max_points: int = Field(
        default=10_000_000,
        description="Most values (points × param groups, × 2 with momentum) over all results "
        "of one batch: at most ~220 MB of JSON or 80 MB of npy (1000 × 10k steps fits).",
    )
    stream_min_bytes: int = Field(
        default=8 << 20,
        description="JSON, CSV and npy bodies estimated above this are streamed in chunks of "
        "~5 MB and not cached (memory stays bounded; the ETag is still the spec's).",
    )
    stream_max_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Longest a streamed body (JSON, CSV or npy above LRS_STREAM_MIN_BYTES, "
        "a large batch) may take to send: past it the connection is aborted mid-body (the "
        "client sees an incomplete read), so a client that reads very slowly frees the "
        "computed schedule and its connection. The largest body, 16 groups × 1M steps of "
        "JSON (~330 MB), needs a client that reads ~1.1 MB/s. Job event streams last as "
        "long as their job and are not held to it.",
    )
    stream_send_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest one piece (at most 1 MB) of a streamed body, or one job "
        "event or ping, may wait for the client to take it; a client that stops reading "
        "is disconnected after this (its connection aborted, what it held freed).",
    )
    stream_max_per_client: int = Field(
        default=8,
        ge=0,
        description="Streamed bodies (JSON, CSV or npy above LRS_STREAM_MIN_BYTES, a large "
        "batch) one client (API key, else address) may have in flight at once in one API "
        "process; one more gets 429 with Retry-After (bodies sent in one piece never count). "
        "Each holds its computed schedule (128 MB of lrs for 16 groups × 1M steps) and a "
        "connection until it is sent, cut or dropped; 0: no cap.",
    )
    cache_max_bytes: int = Field(
        default=64 << 20, description="Byte budget of the schedule result cache."
    )
    cache_url: str | None = Field(
        default=None,
        description="Redis URL of a schedule result cache the API replicas share (e.g. "
        "`redis://redis:6379/2`), behind the in-process one; unset: in-process only.",
    )
    cache_timeout_s: float = Field(
        default=0.25,
        gt=0,
        le=5,
        description="Longest a request waits for the shared cache's Redis (connecting, a "
        "free pooled connection, the answer) before it goes on without it (computing, or "
        "not sharing what it computed); Redis is then left alone for 5 s, so a hung Redis "
        "costs one request per process every 5 s. Other requests are served meanwhile.",
    )
    torch_threads: int = Field(
        default=1,
        description="torch intra-op threads in the API process; requests already run in "
        "parallel threads, and on a busy 2-core machine more threads only spin.",
    )
    malloc_retain_mb: int = Field(
        default=64,
        ge=0,
        le=2047,
        description="glibc's allocator keeps up to this many MB of freed memory per heap for "
        "the next request (blocks up to 32 MB from its heaps) instead of handing it back to "
        "the kernel and faulting it in again: a 1M-step JSON response 92 -> 80 ms, ~3,400 -> "
        "~200 page faults. 0 keeps glibc's defaults, as do the operator's own MALLOC_* "
        "variables.",
    )
    compute_inline_max_cost: int = Field(
        default=500_000,
        ge=0,
        description="Vectorized JSON, CSV and npy requests costing at most this many value "
        "operations (about 1 ns of CPU each: a 10k-step warmup + cosine costs 230 000) are "
        "computed on the event loop instead of a compute thread: no thread hop, the body "
        "cached without a copy, the loop yielding after each 5 ms of inline work; 0: always "
        "in a thread. Interleaved A/B on the busy 2-core machine (load ~8, 16 connections, "
        "distinct 10k-step specs): 223 and 203 requests/s on the loop against 199 and 144 in "
        "threads, 3.3-3.4 against 4.5-4.8 ms of server CPU per request "
        "(bench/bench_http.py measures both).",
    )
    compute_processes: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Child processes that compute and render the requests the event loop "
        "would compute itself (LRS_COMPUTE_INLINE_MAX_COST), so the API process serves other "
        "requests meanwhile; each is a Python with torch (about 400 MB resident). 0: the event "
        "loop computes them. A child starting, busy with 32 requests or gone is not waited for. "
        "Vectorized bodies too long to cache (LRS_STREAM_MIN_BYTES) are computed, rendered and "
        "streamed from a child too, up to 128 MB of them in flight (docs/deploy.md).",
    )
    compute_concurrency: int = Field(
        default=2,
        description="Schedule computations allowed to run at once (threads); more threads "
        "only fight over the GIL (on 2 cores: 1 thread 381 req/s, 2 → 313, 4 → 252).",
    )

    # Dropout
    dropout_max_elements: int = Field(
        default=4_000_000, description="Most input elements in one dropout request."
    )
    dropout_max_samples: int = Field(default=1000, description="Most repetitions (`samples`).")
    dropout_max_total: int = Field(
        default=20_000_000, description="Most elements × samples in one dropout request."
    )
    dropout_max_dims: int = Field(default=8, description="Most dims of a dropout input.")
    dropout_json_max_values: int = Field(
        default=1_000_000,
        description="Most numbers the tensors of one JSON dropout response carry; npy beyond.",
    )

    # Jobs
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("LRS_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL of the job store; SQLite in data_dir when unset.",
    )
    job_workers: int = Field(
        default=1,
        ge=0,
        description="Training jobs that run at once in the API process (local executor); 0: "
        "none, jobs run on `python -m service.jobs.worker` processes.",
    )
    job_executor: Literal["local", "celery"] = Field(
        default="local",
        description="Where jobs run: `local` worker processes of the API (or of "
        "`python -m service.jobs.worker`), or `celery` workers fed through the broker.",
    )
    celery_broker_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL of the Celery broker (`LRS_JOB_EXECUTOR=celery`).",
    )
    job_lease_s: float = Field(
        default=30.0,
        gt=0,
        description="A running job whose worker sent no heartbeat for this long is taken "
        "away: interrupted, or queued again when its spec asks for retries.",
    )
    job_heartbeat_s: float = Field(
        default=10.0, gt=0, description="How often a running job renews its lease."
    )
    job_max_epochs: int = Field(default=1000, description="Most epochs in one job.")
    job_max_series: int = Field(default=100_000, description="Longest user series in one job.")
    job_max_seconds: float = Field(default=300.0, description="Wall time after which a job fails.")
    job_max_example_values: int = Field(
        default=10_000_000,
        description="Most values in a job's examples, (series length - tau) × tau (40 MB float32).",
    )
    job_progress_every: int = Field(
        default=50, ge=1, description="Optimizer steps between progress events (and every epoch)."
    )
    job_events_poll_s: float = Field(
        default=0.2, gt=0, description="How often an event stream looks for new job events."
    )
    job_events_max_streams: int = Field(
        default=1000,
        ge=0,
        description="Event streams open at once over all jobs; more get 503 with Retry-After.",
    )
    job_events_max_streams_per_job: int = Field(
        default=100, ge=0, description="Event streams open at once on one job (503 beyond)."
    )
    job_events_max_streams_per_client: int = Field(
        default=32, ge=0, description="Event streams one client keeps open at once (429 beyond)."
    )
    job_max_parameters: int = Field(
        default=1_000_000,
        ge=1,
        description="Most parameters in a job's model (model.pt is about 4 bytes each).",
    )
    job_queue_max: int = Field(
        default=500,
        ge=0,
        description="Queued and running jobs over all clients; a submit beyond is a 503.",
    )
    job_queue_max_per_client: int = Field(
        default=16, ge=0, description="Queued and running jobs of one client (429 beyond)."
    )
    job_retry_after_s: int = Field(
        default=10, ge=1, description="Retry-After (seconds) of the queue and stream caps' answers."
    )
    job_data_max_bytes: int = Field(
        default=2 << 30,
        ge=0,
        description="Quota of the data directory (records and artifacts): the oldest "
        "succeeded jobs' artifacts are removed beyond it, and submits get 503 while the "
        "records alone exceed it.",
    )
    job_artifacts_keep: int = Field(
        default=1000,
        ge=1,
        description="Succeeded jobs whose artifacts are kept; older ones' are removed "
        "(their records stay).",
    )
    job_page_max_bytes: int = Field(
        default=8 << 20,
        ge=1,
        description="Largest GET /v1/jobs page in bytes: a page ends early (with a "
        "next_page_token) rather than exceed it.",
    )
    job_table_prefix: str = Field(
        default="", description="Prefix of the job store's table names (one store, many apps)."
    )
    job_page_size_max: int = Field(default=100, description="Largest page_size of GET /v1/jobs.")

    # Access: keys, rate limits, CORS, logs
    api_keys: str = Field(
        default="",
        description="Comma-separated SHA-256 hex digests of the accepted API keys "
        "(`printf %s KEY | sha256sum`); when set (or `LRS_API_KEYS_FILE`), every job endpoint "
        "needs `Authorization: Bearer KEY` and a key lists and reaches only its own jobs. "
        "Empty: no keys.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="A file of SHA-256 hex digests, one a line (`#` comments), read at start.",
    )
    require_key_for_all: bool = Field(
        default=False,
        description="With keys set, every /v1 endpoint needs a key, schedules included.",
    )
    rate_limit_compute_per_s: float = Field(
        default=0.0,
        ge=0,
        description="Schedule computations (compute, GET form, batch, ...) per second per key "
        "(or client address without a key), refilled continuously; 0: no limit.",
    )
    rate_limit_compute_burst: int = Field(
        default=60, ge=1, description="Computations a key may send at once before the rate applies."
    )
    rate_limit_jobs_per_s: float = Field(
        default=0.0, ge=0, description="Job submissions per second per key or address; 0: no limit."
    )
    rate_limit_jobs_burst: int = Field(
        default=10, ge=1, description="Job submissions a key may send at once."
    )
    rate_limit_url: str | None = Field(
        default=None,
        description="Redis URL of the rate limits' buckets, shared by every API process and "
        "replica (one atomic script per limited request), so the limits hold in total, not "
        "per process; unset: `LRS_CACHE_URL`'s Redis when that is set, else in-process "
        "buckets; `local`: in-process buckets even with `LRS_CACHE_URL`. While Redis does "
        "not answer (`LRS_RATE_LIMIT_TIMEOUT_S`, then left alone for 5 s) each process "
        "falls back to its own buckets, with a warning and `lrs_rate_limit_fallback_total`.",
    )
    rate_limit_timeout_s: float = Field(
        default=0.1,
        gt=0,
        le=5,
        description="Longest a limited request waits for the rate limits' Redis (connecting, "
        "a free pooled connection, the script) before its process decides alone; what a "
        "hung Redis costs one request per process every 5 s.",
    )
    rate_limit_prefix: str = Field(
        default="lrs:ratelimit:",
        description="Prefix of the rate limits' Redis keys (deployments sharing one Redis "
        "database need different ones).",
    )
    cors_origins: str = Field(
        default="",
        description="Comma-separated origins a browser page may call the API from "
        "(`https://dash.example.com`, or `*`); none by default.",
    )
    access_log: bool = Field(
        default=True,
        description="One JSON line per request on stderr (logger `service.access`): request "
        "id, method, route, status, duration, engine.",
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> "Settings":
        if self.job_heartbeat_s >= self.job_lease_s:
            raise ValueError(
                f"LRS_JOB_HEARTBEAT_S ({self.job_heartbeat_s:g}) must be below LRS_JOB_LEASE_S "
                f"({self.job_lease_s:g}), or every lease expires between two heartbeats"
            )
        return self

    @model_validator(mode="after")
    def _redis_urls_parse(self) -> "Settings":
        """A Redis URL the service would only fail to parse at its first cache miss or
        limited request (every one then a 500) is refused at start, naming the setting."""
        from redis.connection import parse_url

        for name, url in (
            ("LRS_RATE_LIMIT_URL", self.rate_limit_url),
            ("LRS_CACHE_URL", self.cache_url),
        ):
            if not url or (name == "LRS_RATE_LIMIT_URL" and url == "local"):
                continue
            also = " or `local`" if name == "LRS_RATE_LIMIT_URL" else ""
            if not url.startswith(REDIS_SCHEMES):
                raise ValueError(f"{name} must be a Redis URL ({', '.join(REDIS_SCHEMES)}){also}")
            try:
                parse_url(url)
            except ValueError as exc:
                raise ValueError(f"{name} is not a Redis URL redis-py can use: {exc}") from None
        return self


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment."""
    return Settings()


_CURRENT: ContextVar["Settings | None"] = ContextVar("lrs_settings", default=None)


def current_settings() -> Settings:
    """Return the settings bound to this request (or block), else the environment's."""
    return _CURRENT.get() or get_settings()


def bind_settings(settings: Settings) -> None:
    """Make ``settings`` the current ones for the rest of this task (one request)."""
    _CURRENT.set(settings)


@contextmanager
def using_settings(settings: Settings) -> Iterator[Settings]:
    """Make ``settings`` the current ones inside the ``with`` block."""
    token = _CURRENT.set(settings)
    try:
        yield settings
    finally:
        _CURRENT.reset(token)
