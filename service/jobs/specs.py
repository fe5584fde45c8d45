"""Training-job specifications and the job resource, as pydantic models.

A job spec is the seed's task with every field defaulted: noisy sine data, the named
``Sequential`` MLP, and the schedule API's own optimizer, param-group, scheduler and warmup
models: ``JobSpec`` extends :class:`~service.schedules.specs.ScheduleConfig`, so a schedule
that ``POST /v1/schedules/compute`` accepts trains as written, and one it refuses (a limit,
a bad value) is refused here the same way.
"""

import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    Field,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)

from service.devices import DeviceName
from service.errors import register_union_tags
from service.schedules.specs import (
    ExponentialLR,
    Number,
    ParamGroup,
    ScheduleConfig,
    SchedulerSpec,
    SpecModel,
)

Activation = Literal["ReLU", "Tanh", "Sigmoid", "GELU", "SiLU", "ELU", "LeakyReLU"]

MAX_WIDTH = 4096
"""Widest layer of a job's model: each hidden width, and ``tau`` (the first layer's input)."""

FLOAT32_MAX = 3.4028234663852886e38
"""Largest finite float32: a job trains in float32, so an lr or optimizer argument above it
cannot be converted (torch raises an overflow RuntimeError at the first step)."""
MAX_DATA_ABS = 1e18
"""Largest magnitude of a series value or of ``noise_std``: the squared error of values up to
this size (1e36, and 25× that for 5-sigma noise) stays below float32's 3.4e38; beyond it the
loss is infinite at the first batch whatever the learning rate."""

JOB_ID = re.compile(r"[0-9a-f]{32}")
"""What every job id looks like (the store issues ``uuid4().hex``); anything else, a NUL or
any other character, names no job."""


def _check_magnitude(value: float, field: str, fix: str) -> float:
    if math.fabs(value) > MAX_DATA_ABS:
        raise ValueError(
            f"{field}={value:g} is beyond ±{MAX_DATA_ABS:g}: the model trains in float32 "
            f"(largest 3.4e38), and the squared error of such values overflows it; {fix}"
        )
    return value


class NoisySine(SpecModel):
    """The seed's series: ``x = sin(0.01 t) + N(0, noise_std)`` for ``t = 1..n``.

    Each example is ``tau`` consecutive values (features) and the value after them (label);
    the first ``n_train`` examples train, the rest test.
    """

    type: Literal["noisy_sine"] = "noisy_sine"
    n: PositiveInt = Field(default=1000, description="Length of the series (time steps).")
    tau: PositiveInt = Field(default=4, description="Previous values each prediction sees.")
    noise_std: Number = Field(default=0.02, ge=0.0, description="Std of the Gaussian noise.")
    n_train: PositiveInt = Field(default=600, description="Examples used for training.")

    @field_validator("noise_std")
    @classmethod
    def _noise_fits_float32(cls, value: float) -> float:
        return _check_magnitude(value, "noise_std", "lower noise_std")

    @property
    def length(self) -> int:
        """Return the number of values in the series."""
        return self.n

    @model_validator(mode="after")
    def _fits(self) -> "NoisySine":
        _check_split(self.length, self.tau, self.n_train)
        return self


class Series(SpecModel):
    """Your own series: ``values`` in time order, split as for ``noisy_sine``.

    ``n_train`` defaults to 60% of the examples (``len(values) - tau``).
    """

    type: Literal["series"] = "series"
    values: list[Number] = Field(min_length=2, description="The series, oldest first.")
    tau: PositiveInt = Field(default=4, description="Previous values each prediction sees.")
    n_train: PositiveInt | None = Field(
        default=None, description="Examples used for training; 60% of them when null."
    )

    @field_validator("values")
    @classmethod
    def _values_fit_float32(cls, values: list[float]) -> list[float]:
        if values and max(map(abs, values)) > MAX_DATA_ABS:
            index = next(i for i, v in enumerate(values) if abs(v) > MAX_DATA_ABS)
            _check_magnitude(values[index], f"values[{index}]", "rescale the series")
        return values

    @property
    def length(self) -> int:
        """Return the number of values in the series."""
        return len(self.values)

    @model_validator(mode="after")
    def _fits(self) -> "Series":
        if self.tau >= self.length:
            raise ValueError(
                f"tau={self.tau} must be smaller than the series length {self.length}: each "
                "example needs tau values and one label"
            )
        if self.n_train is None:
            self.n_train = max(1, round(0.6 * (self.length - self.tau)))
        _check_split(self.length, self.tau, self.n_train)
        return self


def _check_split(length: int, tau: int, n_train: int) -> None:
    examples = length - tau
    if examples < 2:
        raise ValueError(
            f"tau={tau} must be at most {length - 2} for a series of length {length}: "
            "training and testing need at least one example each"
        )
    if n_train >= examples:
        raise ValueError(
            f"n_train={n_train} leaves no test examples: the series gives {examples} "
            f"examples (length {length} - tau {tau}); use at most {examples - 1}"
        )


DataSpec = Annotated[NoisySine | Series, Field(discriminator="type")]
register_union_tags({"noisy_sine", "series"})


class ModelSpec(SpecModel):
    """The MLP: ``Linear(tau, h1) → activation → … → Linear(h_last, 1)``, xavier-initialised.

    The default is the seed's ``Sequential(OrderedDict(first=Linear(4, 10), active=ReLU(),
    second=Linear(10, 1)))``; further layers are ``third``, ``fourth``…, activations
    ``active``, ``active2``…, and dropout (when > 0) ``drop``, ``drop2``… after each activation.
    """

    hidden: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(
        default_factory=lambda: [10], max_length=8, description="Width of each hidden layer."
    )
    activation: Activation = Field(default="ReLU", description="A torch.nn activation class.")
    dropout: Number = Field(default=0.0, ge=0.0, lt=1.0, description="nn.Dropout p after each.")


MAX_RETRIES = 5
"""Most ``retries`` a job may ask for."""


def _default_scheduler() -> ExponentialLR:
    return ExponentialLR(gamma=0.98)


class JobSpec(ScheduleConfig):
    """What to train and how: data, model, optimizer, schedule, epochs, batches, seed.

    Every field has the seed's default, so ``{}`` trains the seed's model on the seed's data
    with ``SGD(lr=0.1)`` and ``ExponentialLR(gamma=0.98)``. Gradients are accumulated over
    ``accumulation_steps`` batches per optimizer step (the effective batch is their product).
    With ``interval: "step"`` the scheduler steps after every optimizer step, with ``"epoch"``
    after every epoch; ``ReduceLROnPlateau`` is fed the training loss of that step or epoch.
    """

    model_config = ScheduleConfig.model_config | {
        "json_schema_extra": {
            "examples": [
                {},
                {
                    "optimizer": {"type": "SGD", "lr": 0.05, "momentum": 0.9},
                    "scheduler": {"type": "CosineAnnealingLR", "T_max": 200},
                    "warmup": {"type": "linear", "steps": 20, "start_factor": 0.0},
                    "epochs": 10,
                    "batch_size": 16,
                    "accumulation_steps": 2,
                    "seed": 1,
                },
            ]
        }
    }

    data: DataSpec = Field(default_factory=NoisySine, description="The series to learn.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="The MLP.")
    param_groups: list[ParamGroup] | None = Field(
        default=None,
        min_length=1,
        description="Per-group overrides; one group (all parameters) when absent, otherwise "
        "one group per Linear layer in order (first, second, …).",
    )
    scheduler: SchedulerSpec = Field(default_factory=_default_scheduler)
    epochs: PositiveInt = Field(default=5, description="Passes over the training examples.")
    batch_size: PositiveInt = Field(default=16, description="Examples per batch.")
    accumulation_steps: PositiveInt = Field(
        default=1, description="Batches whose gradients are summed into one optimizer step."
    )
    seed: NonNegativeInt = Field(default=0, description="Seeds the data, the init and shuffling.")
    device: DeviceName = Field(default="auto", description="'auto' (CUDA when available), ...")
    retries: int = Field(
        default=0,
        ge=0,
        le=MAX_RETRIES,
        description="Times the job is queued again when its worker dies (its lease expires) "
        "mid-run; it reruns from scratch, so retries need a deterministic run: device 'cpu'.",
    )

    @model_validator(mode="after")
    def _retries_deterministic(self) -> "JobSpec":
        if self.retries and self.device != "cpu":
            raise ValueError(
                f"retries={self.retries} needs a deterministic run, which only the CPU gives "
                f"(device={self.device!r}): set device to 'cpu' or retries to 0"
            )
        return self

    @model_validator(mode="after")
    def _batch_fits(self) -> "JobSpec":
        n_train = self.data.n_train or 0
        if self.batch_size > n_train:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the training set "
                f"({n_train} examples, data.n_train)"
            )
        return self


JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
"""Statuses a job never leaves."""


class Progress(BaseModel):
    """Where a running job is: counts are 1-based (``epoch`` 2 of 5 is the second)."""

    epoch: int = Field(description="The epoch being trained, 1-based.")
    epochs: int
    step: int = Field(description="Optimizer steps done so far.")
    optimizer_steps: int = Field(description="Optimizer steps the job will make in total.")
    loss: float | None = Field(description="Training loss (MSE) of the latest optimizer step.")
    lr: float | None = Field(description="Group 0's lr at the latest optimizer step.")
    train_loss: float | None = Field(default=None, description="Last finished epoch's mean.")
    test_loss: float | None = Field(default=None, description="Last finished epoch's test MSE.")


class Predictions(BaseModel):
    """Predictions on the test range, aligned with ``t`` (the seed's 1-based time)."""

    t: list[int]
    observed: list[float]
    one_step: list[float] = Field(description="Each value predicted from the tau observed before.")
    recursive: list[float] = Field(
        description="Predicted from the training range alone, feeding predictions back in."
    )
    k_step: dict[str, list[float]] = Field(
        description="k-step-ahead: predicted from values observed k steps earlier, recursing "
        "k-1 times (d2l's sequence chapter), for k in 4, 16, 64."
    )


class JobResult(BaseModel):
    """What a succeeded job reports."""

    lr: list[float] = Field(description="Group 0's lr at every optimizer step.")
    lr_groups: list[list[float]] = Field(description="Every group's lr per optimizer step.")
    train_loss: list[float] = Field(description="Mean training MSE per epoch.")
    test_loss: list[float] = Field(description="Test MSE after each epoch (last = final).")
    scheduler_metrics: list[float] | None = Field(
        description="The metric fed to ReduceLROnPlateau at each scheduler step (null for "
        "other schedulers): pass it as `metrics` to /v1/schedules/compute to replay the lr."
    )
    predictions: Predictions
    optimizer_steps: int
    steps_per_epoch: int = Field(description="Optimizer steps per epoch.")
    effective_batch_size: int = Field(description="batch_size × accumulation_steps.")
    n_train: int
    n_test: int
    wall_time_s: float = Field(description="Seconds from the first batch to the end.")
    device: str
    torch_version: str


class JobError(BaseModel):
    """Why a job failed, was cancelled or interrupted."""

    type: str = Field(description="e.g. time_limit, non_finite_loss, cancelled, interrupted.")
    detail: str


class CancelState(BaseModel):
    """What became of a cancel: ``pending`` (asked; a running job stops before its next
    batch), ``cancelled``, or ``too_late`` (the job finished first, as its status says)."""

    outcome: Literal["pending", "cancelled", "too_late"]
    detail: str


def cancel_state(status: str, requested: bool) -> CancelState | None:
    """Return what the job's record says about a cancel, or None when none was asked."""
    if status == "cancelled":
        return CancelState(outcome="cancelled", detail="the job was cancelled on request")
    if not requested:
        return None
    if status == "running":
        return CancelState(outcome="pending", detail="asked; the job stops before its next batch")
    return CancelState(
        outcome="too_late",
        detail=f"the cancel arrived after the job's last batch: it finished as {status}",
    )


class Job(BaseModel):
    """A training job as the API shows it."""

    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress | None
    spec: JobSpec
    result: JobResult | None
    error: JobError | None
    cancel: CancelState | None = Field(
        default=None,
        description="Null unless a cancel was asked: whether it took effect, or came too late "
        "(the job had finished its last batch).",
    )

    @classmethod
    def from_record(cls, record: Any) -> "Job":
        """Return the API view of a store record."""
        job = cls.model_validate(record, from_attributes=True)
        job.cancel = cancel_state(record.status, bool(record.cancel_requested))
        return job


class JobHead(BaseModel):
    """The small fields of :class:`Job`: the API renders them through this model and
    copies ``spec`` and ``result`` from the store as stored (:func:`job_json`)."""

    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress | None
    error: JobError | None


def _json_value(value: Any) -> Any:
    """Return a stored JSON value for orjson: text (a raw read) is copied as it is."""
    return orjson.Fragment(value) if isinstance(value, str | bytes) else value


def job_json(record: Any) -> bytes:
    """Return the JSON of the API view of a store record (:class:`Job`'s fields, in order).

    ``spec`` and ``result`` are copied from the record without validating them again (they
    were validated at submit, and written by the worker from :class:`JobResult`): with a
    raw read (:meth:`Store.get`), a result of millions of values is copied as text, never
    parsed and re-serialized, so rendering holds the GIL only for a memcpy."""
    head = JobHead.model_validate(record, from_attributes=True).model_dump(mode="json")
    cancel = cancel_state(record.status, bool(record.cancel_requested))
    view = {
        **head,
        "spec": _json_value(record.spec),
        "result": _json_value(record.result),
        "cancel": None if cancel is None else cancel.model_dump(mode="json"),
    }
    return orjson.dumps({name: view[name] for name in Job.model_fields})


class JobPage(BaseModel):
    """One page of jobs, newest first; pass ``next_page_token`` back for the next page."""

    jobs: list[Job]
    next_page_token: str | None
