"""Every limit, path and switch of the service, in one place.

Each field can be set from the environment with the ``LRS_`` prefix, e.g.
``LRS_TORCH_MAX_STEPS=50000``. ``DATABASE_URL`` is also read without the prefix.
"""

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service configuration. Defaults are the embedded, single-machine setup."""

    model_config = SettingsConfigDict(env_prefix="LRS_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Job records, artifacts and runs.")

    # HTTP
    max_body_bytes: int = Field(default=1 << 20, description="Request bodies above this get 413.")

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
        description="Largest vectorized cost accepted: scheduler steps × (param groups × "
        "schedulers × 4 + 3 × lr_lambda operations), plus the scan of a ChainedScheduler "
        "(the 753-character lr_lambda probe, 511 per step, is refused above 1.5M steps).",
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
    cache_max_bytes: int = Field(
        default=64 << 20, description="Byte budget of the schedule result cache."
    )
    torch_threads: int = Field(
        default=1,
        description="torch intra-op threads in the API process; requests already run in "
        "parallel threads, and on a busy 2-core machine more threads only spin.",
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
    job_workers: int = Field(default=1, description="Training jobs that run at once.")
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
    job_table_prefix: str = Field(
        default="", description="Prefix of the job store's table names (one store, many apps)."
    )
    job_page_size_max: int = Field(default=100, description="Largest page_size of GET /v1/jobs.")


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment."""
    return Settings()
