"""Noam and REX against their papers' formulas, written out here in plain Python floats.

No library ships either under one name, so the reference is the published formula itself
(Noam: Vaswani et al. 2017 eq. 3, as the Annotated Transformer's ``rate()`` evaluates it,
step 0 counting as 1; REX: Chen, Wolfe & Kyrillidis, arXiv:2107.04197), run as a real
``LambdaLR`` on a real optimizer. Torch engine: identical; vectorized: within 1e-9.
"""

import numpy as np
import pytest
from torch.optim import lr_scheduler as L

from tests.schedules.helpers import torch_loop


def rate(step, model_size, factor, warmup):
    """The Annotated Transformer's Noam rate (harvardnlp), verbatim."""
    if step == 0:
        step = 1
    return factor * (model_size ** (-0.5) * min(step ** (-0.5), step * warmup ** (-1.5)))


def rex(step, total):
    z = 1 - min(step, total) / total
    return z / (0.5 + 0.5 * z)


GROUPS = [None, [{"lr": 1.0}, {"lr": 0.5}], [{"lr": 1.0}, {"lr": 0.1}, {"lr": 2.0}]]
CASES = [
    ("noam", {"type": "noam", "d_model": 512, "warmup_steps": 40}, lambda e: rate(e, 512, 1.0, 40), 120, GROUPS[0]),
    ("noam-warmup-1", {"type": "noam", "d_model": 64, "warmup_steps": 1, "factor": 2.0}, lambda e: rate(e, 64, 2.0, 1), 30, GROUPS[1]),
    ("noam-long-warmup", {"type": "noam", "d_model": 1, "warmup_steps": 4000, "factor": 0.5},
     lambda e: rate(e, 1, 0.5, 4000), 50, GROUPS[2]),
    ("rex", {"type": "rex", "total_steps": 100}, lambda e: rex(e, 100), 120, GROUPS[0]),
    ("rex-1", {"type": "rex", "total_steps": 1}, lambda e: rex(e, 1), 5, GROUPS[1]),
    ("rex-groups", {"type": "rex", "total_steps": 37}, lambda e: rex(e, 37), 40, GROUPS[2]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "spec", "formula", "steps", "groups"), CASES, ids=[c[0] for c in CASES]
)
def test_both_engines_follow_the_paper(client, case, spec, formula, steps, groups):
    want, _ = torch_loop(lambda o: L.LambdaLR(o, formula), steps, groups=groups, lr=1.0)
    body = {"optimizer": {"type": "SGD", "lr": 1.0}, "scheduler": spec, "steps": steps}
    if groups:
        body["param_groups"] = groups
    torch_run = client.post("/v1/schedules/compute", json={**body, "engine": "torch"}).json()
    np.testing.assert_allclose(torch_run["lr"], want, rtol=1e-15, atol=0)
    closed = client.post("/v1/schedules/compute", json={**body, "engine": "vectorized"}).json()
    assert closed["engine"] == "vectorized"
    np.testing.assert_allclose(closed["lr"], want, rtol=1e-9, atol=0)
    assert closed["families"][0]["family"] == spec["type"]
    assert closed["families"][0]["library"] is None
