"""The cross-library surprises of the torch-based families, both sides through the API.

Each test computes the two schedules that disagree at the same nominal config and asserts
the documented difference, and that the response warns about it.
"""

import math

import pytest


def compute(client, **body):
    response = client.post("/v1/schedules/compute", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("engine", ["torch", "vectorized"])
def test_hf_and_torch_cosine_rise_after_the_end(client, engine):
    """W=10, T=100: transformers' cosine and torch's CosineAnnealingLR both climb after T."""
    hf = compute(client, scheduler={"type": "transformers", "name": "cosine", "num_warmup_steps": 10,
                                    "num_training_steps": 100}, steps=150, engine=engine)  # fmt: skip
    torch_cos = compute(client, scheduler={"type": "CosineAnnealingLR", "T_max": 90},
                        warmup={"type": "linear", "steps": 10}, steps=150, engine=engine)  # fmt: skip
    for result in (hf, torch_cos):
        lr = result["lr"][0]
        assert lr[100] == pytest.approx(0.0, abs=1e-15)
        assert lr[149] > lr[120] > lr[101] > lr[100]
    assert hf["lr"][0][101:] == pytest.approx(torch_cos["lr"][0][101:], rel=1e-9)
    assert any("rises again after num_training_steps=100" in w for w in hf["warnings"])


@pytest.mark.parametrize("engine", ["torch", "vectorized"])
def test_cosine_warmup_with_min_lr_starts_at_a_tenth_not_zero(client, engine):
    common = {
        "num_warmup_steps": 10,
        "num_training_steps": 100,
        "scheduler_specific_kwargs": {"min_lr_rate": 0.1},
    }
    starts_at_tenth = compute(client, scheduler={"type": "transformers", "name": "cosine_warmup_with_min_lr", **common},
                              steps=100, engine=engine)  # fmt: skip
    starts_at_zero = compute(client, scheduler={"type": "transformers", "name": "cosine_with_min_lr", **common},
                             steps=100, engine=engine)  # fmt: skip
    assert starts_at_tenth["lr"][0][0] == pytest.approx(0.1 * 0.1, rel=1e-12)
    assert starts_at_zero["lr"][0][0] == 0.0
    assert starts_at_tenth["lr"][0][9] == pytest.approx(0.1, rel=1e-12)  # (9 + 1) / 10
    assert starts_at_zero["lr"][0][9] == pytest.approx(0.09, rel=1e-12)  # 9 / 10
    assert any(
        "starts at 1/num_warmup_steps = 0.1 of the lr" in w for w in starts_at_tenth["warnings"]
    )
    assert not any("starts at" in w for w in starts_at_zero["warnings"])


@pytest.mark.parametrize("engine", ["torch", "vectorized"])
def test_polynomial_ends_each_group_at_its_share_of_lr_end(client, engine):
    """transformers divides lr_end by optimizer.defaults['lr']: a group with a tenth of the
    optimizer's lr ends at a tenth of lr_end; with the optimizer's lr it ends at lr_end."""
    spec = {"type": "transformers", "name": "polynomial", "num_warmup_steps": 10, "num_training_steps": 100,
            "scheduler_specific_kwargs": {"lr_end": 1e-4}}  # fmt: skip
    alone = compute(client, scheduler=spec, steps=120, engine=engine)
    groups = compute(client, scheduler=spec, steps=120, engine=engine,
                     optimizer={"type": "SGD", "lr": 0.1}, param_groups=[{"lr": 0.1}, {"lr": 0.01}])  # fmt: skip
    assert alone["summary"][0]["final"] == pytest.approx(1e-4, rel=1e-12)
    assert groups["summary"][0]["final"] == pytest.approx(1e-4, rel=1e-12)
    assert groups["summary"][1]["final"] == pytest.approx(1e-5, rel=1e-12)  # not lr_end=1e-4
    assert any("ends group 1 at its lr x lr_end / optimizer lr" in w for w in groups["warnings"])
    assert not any("ends group" in w for w in alone["warnings"])


@pytest.mark.parametrize("engine", ["torch", "vectorized"])
def test_untuned_linear_warmup_lasts_1999_steps_for_beta2_0999(client, engine):
    """pytorch_warmup's tau = int(2 / (1 - 0.999)) = 1999, not the 2000 its docs' formula gives."""
    common = {"optimizer": {"type": "Adam", "lr": 1e-3}, "scheduler": {"type": "ConstantLR", "factor": 1.0, "total_iters": 0},
              "steps": 2001, "sample": {"at": [0, 1997, 1998, 1999]}, "engine": engine}  # fmt: skip
    untuned = compute(client, warmup={"type": "untuned_linear"}, **common)
    tuned = compute(client, warmup={"type": "linear", "warmup_period": 2000}, **common)
    assert untuned["lr"][0][0] == pytest.approx(1e-3 / 1999, rel=1e-12)
    assert tuned["lr"][0][0] == pytest.approx(1e-3 / 2000, rel=1e-12)
    assert untuned["lr"][0][2] == 1e-3  # full lr at step 1998: (1998 + 1) / 1999
    assert tuned["lr"][0][2] < 1e-3 and tuned["lr"][0][3] == 1e-3
    assert any("= 1999 steps for beta2=0.999, not 2000" in w for w in untuned["warnings"])
    assert not math.isclose(untuned["lr"][0][1], tuned["lr"][0][1], rel_tol=1e-6)
