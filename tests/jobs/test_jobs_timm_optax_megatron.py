"""Training jobs with timm, optax and Megatron schedules report the lr the schedule API predicts."""

import pytest

from .support import FINISHED, wait_for
from .test_jobs_api import compute_lr, submit

SMALL = {"epochs": 2, "data": {"type": "noisy_sine", "n": 200, "n_train": 120}, "batch_size": 8}


@pytest.mark.parametrize(
    "scheduler",
    [
        {"type": "timm", "sched": "cosine", "num_epochs": 3, "warmup_epochs": 1, "step_on_epochs": False, "updates_per_epoch": 8},
        {"type": "optax", "schedule": "warmup_cosine_decay_schedule", "init_value": 0.0, "peak_value": 0.05, "warmup_steps": 5, "decay_steps": 25},
        {"type": "megatron", "lr_decay_style": "WSD", "max_lr": 0.05, "lr_warmup_steps": 3, "lr_decay_steps": 25, "wsd_decay_steps": 10},
    ],
    ids=["timm", "optax", "megatron"],
)  # fmt: skip
def test_a_job_reports_the_lr_compute_predicts(jobs_client, scheduler):
    job = submit(jobs_client, {**SMALL, "scheduler": scheduler})
    job = wait_for(jobs_client, job.json()["id"], FINISHED)
    assert job["status"] == "succeeded", job["error"]
    lr = job["result"]["lr"]
    assert job["result"]["optimizer_steps"] == 30 and len(lr) == 30
    assert lr == compute_lr(jobs_client, job)[0]
    assert lr == pytest.approx(compute_lr(jobs_client, job, engine="vectorized")[0], rel=1e-9)
