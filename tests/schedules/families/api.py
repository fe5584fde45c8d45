"""Requests for the family parity tests: one compute per engine, the lr (and more) per group."""

import numpy as np


def compute(client, scheduler: dict, n: int, engine: str, **request) -> dict:
    """POST a compute request and return its JSON body (asserting a 200)."""
    body = {"scheduler": scheduler, "steps": n, "engine": engine, **request}
    response = client.post("/v1/schedules/compute", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert engine == "auto" or out["engine"] == engine
    return out


def groups_for(lrs: list[float]) -> dict:
    """Return the optimizer and param_groups of a request whose groups start at ``lrs``."""
    return {"optimizer": {"type": "SGD", "lr": lrs[0]}, "param_groups": [{"lr": lr} for lr in lrs]}


def lr(body: dict) -> np.ndarray:
    return np.asarray(body["lr"], dtype=np.float64)
