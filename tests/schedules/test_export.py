"""POST /v1/schedules/export?target=torch: the script, run with this venv's python, prints
the lrs the torch engine computes, bit for bit."""

import json
import subprocess
import sys

import pytest

CASES = {
    "warmup-cosine-two-groups": {
        "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
        "param_groups": [{"lr": 0.1}, {"lr": 0.01}],
        "scheduler": {"type": "CosineAnnealingLR", "T_max": 40},
        "warmup": {"type": "linear", "steps": 10, "start_factor": 0.0},
        "steps": 50,
    },
    "onecycle-adam-epochs": {
        "optimizer": {"type": "Adam", "lr": 0.001, "betas": [0.9, 0.99]},
        "scheduler": {"type": "OneCycleLR", "max_lr": 0.01},
        "interval": "epoch",
        "steps_per_epoch": 3,
        "steps": 60,
    },
    "sequential-multistep": {
        "scheduler": {
            "type": "SequentialLR",
            "schedulers": [
                {"type": "ConstantLR", "factor": 0.5, "total_iters": 5},
                {"type": "MultiStepLR", "milestones": [10, 10, 20], "gamma": 0.5},
            ],
            "milestones": [5],
        },
        "steps": 40,
    },
    "step-constant-warmup": {
        "scheduler": {"type": "StepLR", "step_size": 2, "gamma": 0.5},
        "warmup": {"type": "constant", "steps": 3, "factor": 0.2},
        "steps": 12,
    },
    "plateau": {
        "scheduler": {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 1},
        "steps": 8,
        "metrics": [1.0, 0.8, 0.8, 0.8, 0.8, 0.79, 0.79],
    },
}


def test_torch_scripts_print_the_torch_engines_lrs(client, tmp_path):
    scripts = {}
    for name, spec in CASES.items():
        r = client.post("/v1/schedules/export?target=torch", json=spec)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/x-python")
        scripts[name] = r.text
    # one interpreter for all cases (importing torch once)
    runner = tmp_path / "run.py"
    runner.write_text(
        "import contextlib, io, json, sys\nout = {}\n"
        "for name, path in json.loads(sys.argv[1]).items():\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        exec(compile(open(path).read(), path, 'exec'), {'__name__': '__main__'})\n"
        "    out[name] = json.loads(buf.getvalue())\n"
        "print(json.dumps(out))\n"
    )
    paths = {}
    for name, text in scripts.items():
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        paths[name] = str(path)
    done = subprocess.run(
        [sys.executable, str(runner), json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    for name, spec in CASES.items():
        api = client.post("/v1/schedules/compute", json={**spec, "engine": "torch"}).json()
        assert printed[name] == api["lr"], name


@pytest.mark.parametrize(
    ("body", "query", "where"),
    [
        ({"scheduler": {"type": "StepLR", "step_size": 2}, "steps": 5}, "?target=keras", "query"),
        (
            {"scheduler": {"type": "LambdaLR", "lr_lambda": "0.9 ** epoch"}, "steps": 5},
            "",
            "body",
        ),
    ],
)
def test_refusals_are_problem_json(client, body, query, where):
    r = client.post("/v1/schedules/export" + query, json=body)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["loc"][0] == where


def test_the_playground_finds_the_targets_in_openapi(client):
    """The playground shows "copy as code" from the target parameter's enum."""
    operation = client.get("/openapi.json").json()["paths"]["/v1/schedules/export"]["post"]
    (target,) = [p for p in operation["parameters"] if p["name"] == "target"]
    assert target["schema"]["enum"] == [
        "torch",
        "lightning",
        "transformers",
        "timm",
        "optax",
        "megatron",
    ]
