"""Training jobs with other libraries' schedules report the lr the schedule API predicts."""

import pytest

from .support import FINISHED, wait_for
from .test_jobs_api import compute_lr, submit

SMALL = {"epochs": 2, "data": {"type": "noisy_sine", "n": 200, "n_train": 120}, "batch_size": 8}


@pytest.mark.parametrize(
    ("scheduler", "warmup", "optimizer"),
    [
        ({"type": "transformers", "name": "cosine", "num_warmup_steps": 5, "num_training_steps": 20}, None,
         {"type": "SGD", "lr": 0.05}),
        ({"type": "CosineAnnealingLR", "T_max": 30}, {"type": "untuned_exponential"}, {"type": "Adam", "lr": 0.01}),
    ],
    ids=["transformers-cosine", "pytorch_warmup-untuned"],
)  # fmt: skip
def test_a_job_reports_the_lr_compute_predicts(jobs_client, scheduler, warmup, optimizer):
    job = submit(
        jobs_client, {**SMALL, "scheduler": scheduler, "warmup": warmup, "optimizer": optimizer}
    )
    job = wait_for(jobs_client, job.json()["id"], FINISHED)
    assert job["status"] == "succeeded", job["error"]
    lr = job["result"]["lr"]
    assert job["result"]["optimizer_steps"] == 30 and len(lr) == 30
    assert lr == compute_lr(jobs_client, job)[0]
    assert lr == pytest.approx(compute_lr(jobs_client, job, engine="auto")[0], rel=1e-12)
