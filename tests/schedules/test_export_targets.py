"""POST /v1/schedules/export for every target: each script, run with this venv's python in a
subprocess, prints the lrs the API computes: bit for bit for the torch-based targets (torch
with pytorch_warmup, transformers, timm, megatron, lightning), within 1e-9 relative for optax.

Each library's scripts run in one interpreter (importing torch, jax or Lightning once).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

ADAM = {"type": "Adam", "lr": 0.001, "betas": [0.9, 0.999]}

TORCH = {  # target torch: the first cases, pytorch_warmup's warmups, LBFGS, counters
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
    "pw-exponential-two-groups": {
        "optimizer": ADAM,
        "param_groups": [{"lr": 0.001}, {"lr": 0.0005}],
        "scheduler": {"type": "CosineAnnealingLR", "T_max": 40},
        "warmup": {"type": "exponential", "warmup_period": 10},
        "steps": 50,
    },
    "pw-linear-periods": {
        "optimizer": ADAM,
        "param_groups": [{"lr": 0.002}, {"lr": 0.001}],
        "scheduler": {"type": "OneCycleLR", "max_lr": [0.01, 0.005]},
        "warmup": {"type": "linear", "warmup_period": [5, 12]},
        "steps": 40,
    },
    "pw-untuned-linear": {
        "optimizer": {"type": "AdamW", "lr": 0.001, "betas": [0.9, 0.98]},
        "scheduler": {"type": "StepLR", "step_size": 10, "gamma": 0.5},
        "warmup": {"type": "untuned_linear"},
        "steps": 120,
    },
    "pw-untuned-exponential-plateau": {
        "optimizer": {"type": "Adam", "lr": 0.01, "betas": [0.9, 0.9]},
        "scheduler": {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 1},
        "warmup": {"type": "untuned_exponential"},
        "steps": 10,
        "metrics": [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8],
    },
    "lbfgs-step": {  # LBFGS.step takes a closure
        "optimizer": {"type": "LBFGS", "lr": 1.0},
        "scheduler": {"type": "StepLR", "step_size": 3, "gamma": 0.5},
        "steps": 10,
        "engine": "vectorized",  # the script does not depend on engine or device
        "device": "cpu",
    },
    "skipped-steps-and-counter": {  # AMP skips leave torch's lr per optimizer step as it is
        "scheduler": {"type": "CosineAnnealingLR", "T_max": 20},
        "steps": 20,
        "skipped_steps": [0, 5],
        "accumulation_steps": 2,
    },
    "pw-radam": {
        "optimizer": ADAM,
        "scheduler": {"type": "ExponentialLR", "gamma": 0.99},
        "warmup": {"type": "radam"},
        "steps": 30,
    },
}

CHECKPOINT = {  # checkpoint=true: save halfway, rebuild, load, continue
    "sequential-warmup-cosine": (
        "torch",
        {
            "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
            "param_groups": [{"lr": 0.1}, {"lr": 0.01}],
            "scheduler": {"type": "CosineAnnealingLR", "T_max": 30},
            "warmup": {"type": "linear", "steps": 10, "start_factor": 0.0},
            "steps": 40,
        },
    ),
    "plateau": (
        "torch",
        {
            "scheduler": {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 1},
            "steps": 8,
            "metrics": [1.0, 0.8, 0.8, 0.8, 0.8, 0.79, 0.79],
        },
    ),
    "onecycle-epochs": (
        "torch",
        {
            "optimizer": ADAM,
            "scheduler": {"type": "OneCycleLR", "max_lr": 0.01},
            "interval": "epoch",
            "steps_per_epoch": 3,
            "steps": 30,
        },
    ),
    "pw-exponential": ("torch", TORCH["pw-exponential-two-groups"]),
    "transformers-cosine": (
        "transformers",
        {
            "optimizer": {"type": "AdamW", "lr": 0.001},
            "scheduler": {
                "type": "transformers",
                "name": "cosine",
                "num_warmup_steps": 10,
                "num_training_steps": 40,
            },
            "steps": 40,
        },
    ),
}

TRANSFORMERS = {
    "cosine-warmup-ratio": {
        "optimizer": {"type": "AdamW", "lr": 0.001},
        "scheduler": {
            "type": "transformers",
            "name": "cosine",
            "num_warmup_steps": 0.1,
            "num_training_steps": 60,
        },
        "steps": 70,
    },
    "polynomial-two-groups": {
        "optimizer": {"type": "SGD", "lr": 0.1},
        "param_groups": [{"lr": 0.1}, {"lr": 0.05}],
        "scheduler": {
            "type": "transformers",
            "name": "polynomial",
            "num_warmup_steps": 5,
            "num_training_steps": 50,
            "scheduler_specific_kwargs": {"lr_end": 1e-4, "power": 2.0},
        },
        "steps": 50,
    },
    "wsd": {
        "scheduler": {
            "type": "transformers",
            "name": "warmup_stable_decay",
            "num_warmup_steps": 5,
            "num_training_steps": 60,
            "scheduler_specific_kwargs": {"num_decay_steps": 20, "min_lr_ratio": 0.01},
        },
        "steps": 60,
    },
    "plateau": {
        "scheduler": {
            "type": "transformers",
            "name": "reduce_lr_on_plateau",
            "scheduler_specific_kwargs": {"factor": 0.5, "patience": 1},
        },
        "steps": 10,
        "metrics": [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.85, 0.85, 0.85],
    },
    "min-lr-epochs": {
        "scheduler": {
            "type": "transformers",
            "name": "cosine_with_min_lr",
            "num_warmup_steps": 2,
            "num_training_steps": 10,
            "scheduler_specific_kwargs": {"min_lr_rate": 0.1},
        },
        "interval": "epoch",
        "steps_per_epoch": 4,
        "steps": 40,
    },
    "service-warmup-then-linear": {
        "scheduler": {
            "type": "transformers",
            "name": "linear",
            "num_warmup_steps": 0,
            "num_training_steps": 30,
        },
        "warmup": {"type": "linear", "steps": 5, "start_factor": 0.1},
        "steps": 35,
        "batch_scaling": {"base_batch_size": 256, "batch_size": 512},
    },
    "pw-exponential-constant": {
        "optimizer": ADAM,
        "scheduler": {"type": "transformers", "name": "constant"},
        "warmup": {"type": "exponential", "warmup_period": 8},
        "steps": 25,
    },
}

TIMM = {
    "cosine-updates": {
        "scheduler": {
            "type": "timm",
            "sched": "cosine",
            "num_epochs": 5,
            "warmup_epochs": 1,
            "warmup_lr": 0.0,
            "updates_per_epoch": 8,
            "step_on_epochs": False,
        },
        "steps": 50,
    },
    "cosine-epochs-two-groups": {
        "param_groups": [{"lr": 0.1}, {"lr": 0.02}],
        "scheduler": {
            "type": "timm",
            "sched": "cosine",
            "num_epochs": 6,
            "warmup_epochs": 2,
            "cycle_limit": 2,
            "min_lr": 1e-4,
        },
        "interval": "epoch",
        "steps_per_epoch": 4,
        "steps": 60,
    },
    "multistep-per-step": {
        "scheduler": {
            "type": "timm",
            "sched": "multistep",
            "num_epochs": 30,
            "decay_milestones": [10, 20],
        },
        "steps": 30,
    },
    "tanh-noise": {
        "scheduler": {
            "type": "timm",
            "sched": "tanh",
            "num_epochs": 20,
            "warmup_epochs": 3,
            "noise": [0.2, 0.8],
        },
        "steps": 25,
    },
    "plateau": {
        "scheduler": {"type": "timm", "sched": "plateau", "num_epochs": 30, "patience_epochs": 1},
        "interval": "epoch",
        "steps_per_epoch": 2,
        "steps": 20,
        "metrics": [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.8, 0.8, 0.8],
    },
    "cosine-noise-lr-scale": {
        "param_groups": [{"lr": 0.1, "lr_scale": 0.4225}, {"lr": 0.1, "lr_scale": 0.65}, {}],
        "scheduler": {"type": "timm", "sched": "cosine", "num_epochs": 8, "noise": 0.3},
        "steps": 12,
    },
    "plateau-lr-scale": {
        "param_groups": [{"lr": 0.1, "lr_scale": 0.5}, {"lr": 0.2}],
        "scheduler": {
            "type": "timm",
            "sched": "plateau",
            "num_epochs": 30,
            "patience_epochs": 1,
            "warmup_epochs": 2,
        },
        "steps": 10,
        "metrics": [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.8, 0.8, 0.8],
    },
    "wsd-updates-per-epoch-interval": {
        "scheduler": {
            "type": "timm",
            "sched": "wsd",
            "num_epochs": 10,
            "warmup_epochs": 2,
            "updates_per_epoch": 3,
            "step_on_epochs": False,
        },
        "interval": "epoch",
        "steps_per_epoch": 2,
        "steps": 70,
    },
}

MEGATRON = {
    "wsd": {
        "scheduler": {
            "type": "megatron",
            "lr_decay_style": "WSD",
            "max_lr": 3e-4,
            "min_lr": 3e-5,
            "lr_warmup_steps": 10,
            "lr_decay_steps": 100,
            "wsd_decay_steps": 20,
            "lr_wsd_decay_style": "minus_sqrt",
        },
        "steps": 110,
    },
    "cosine-per-group-epochs": {
        "param_groups": [{}, {}],
        "scheduler": {
            "type": "megatron",
            "lr_decay_style": "cosine",
            "max_lr": [1e-3, 5e-4],
            "min_lr": [1e-5, 0.0],
            "lr_warmup_steps": 3,
            "lr_decay_steps": 20,
            "start_wd": 0.0,
            "end_wd": 0.1,
            "wd_incr_style": "linear",
        },
        "interval": "epoch",
        "steps_per_epoch": 2,
        "steps": 50,
    },
    "inverse-sqrt": {
        "scheduler": {
            "type": "megatron",
            "lr_decay_style": "inverse-square-root",
            "max_lr": 1e-3,
            "min_lr": 1e-5,
            "lr_warmup_steps": 10,
            "lr_decay_steps": 100,
        },
        "steps": 120,
    },
}

LIGHTNING = {
    "warmup-cosine-two-groups": {
        "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
        "param_groups": [{"lr": 0.1}, {"lr": 0.01}],
        "scheduler": {"type": "CosineAnnealingLR", "T_max": 20},
        "warmup": {"type": "linear", "steps": 5, "start_factor": 0.0},
        "steps": 25,
    },
    "multistep-epochs": {
        "scheduler": {"type": "MultiStepLR", "milestones": [2, 4], "gamma": 0.5},
        "interval": "epoch",
        "steps_per_epoch": 3,
        "steps": 17,
    },
    "transformers-linear": {
        "optimizer": {"type": "AdamW", "lr": 0.001},
        "scheduler": {
            "type": "transformers",
            "name": "linear",
            "num_warmup_steps": 4,
            "num_training_steps": 20,
        },
        "steps": 20,
    },
    "pw-exponential": {
        "optimizer": ADAM,
        "scheduler": {"type": "StepLR", "step_size": 5, "gamma": 0.5},
        "warmup": {"type": "exponential", "warmup_period": 6},
        "steps": 20,
    },
    "plateau-steps": {  # "monitor": the metric logged in training_step
        "scheduler": {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 1},
        "steps": 12,
        "metrics": [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7],
    },
    "plateau-epochs": {  # the metric logged in on_train_epoch_end
        "scheduler": {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 0},
        "interval": "epoch",
        "steps_per_epoch": 2,
        "steps": 10,
        "metrics": [1.0, 1.0, 0.5, 0.5],
    },
    "transformers-greedy": {  # not a ReduceLROnPlateau: "reduce_on_plateau": True
        "scheduler": {
            "type": "transformers",
            "name": "greedy",
            "scheduler_specific_kwargs": {"patience": 1, "min_lr": 0.001},
        },
        "steps": 12,
        "metrics": [1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9],
    },
    "pw-untuned-exponential-plateau": TORCH["pw-untuned-exponential-plateau"],
}

# timm's __init__ imports torchvision, which cannot be installed beside this torch; the script's
# `from timm.scheduler import ...` is what a timm user writes, so the runner lets it import
# timm.scheduler without timm/__init__ (as the service does).
RUNNER = """
import contextlib, importlib.util, io, json, sys, types
spec = importlib.util.find_spec("timm")
if spec is not None:
    shell = types.ModuleType("timm")
    shell.__path__ = list(spec.submodule_search_locations)
    shell.__spec__ = spec
    sys.modules["timm"] = shell
out = {}
for name, path in json.loads(sys.argv[1]).items():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(open(path).read(), path, "exec"), {"__name__": "__main__"})
    lines = [line for line in buf.getvalue().splitlines() if line.strip()]
    out[name] = json.loads(lines[-1])
print(json.dumps(out))
"""


def run_scripts(client, tmp_path, cases: dict[str, tuple[str, str, dict]]) -> dict[str, list]:
    """Export every case (name -> (target, query, spec)), run all in one interpreter and return
    what each printed."""
    paths = {}
    for name, (target, query, spec) in cases.items():
        r = client.post(f"/v1/schedules/export?target={target}{query}", json=spec)
        assert r.status_code == 200, (name, r.text)
        assert r.headers["content-type"].startswith("text/x-python")
        path = tmp_path / f"{name}.py"
        path.write_text(r.text)
        paths[name] = str(path)
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    done = subprocess.run(
        [sys.executable, str(runner), json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def api_lr(client, spec: dict) -> list[list[float]]:
    r = client.post("/v1/schedules/compute", json={**spec, "engine": "torch"})
    assert r.status_code == 200, r.text
    return r.json()["lr"]


def catalog_examples(client, family: str) -> dict[str, dict]:
    """Return the catalog's ready example request of every schedule of ``family``."""
    out = {}
    for entry in client.get("/v1/schedulers").json()["schedulers"]:
        example = entry["example"]
        scheduler = example["scheduler"]
        kind = scheduler["type"] if scheduler["type"] in FAMILIES else "torch"
        if kind == family and scheduler["type"] not in ("LambdaLR", "MultiplicativeLR"):
            name = entry.get("name") or next(
                (scheduler[k] for k in ("sched", "lr_decay_style", "schedule") if k in scheduler),
                scheduler["type"],
            )
            # the script prints every step (sample only picks the API's indices); at most 300
            spec = {k: v for k, v in example.items() if k not in ("sample", "include")}
            spec["steps"] = min(spec["steps"], 300)
            out[f"catalog-{family}-{name}"] = spec
    return out


FAMILIES = {"transformers", "timm", "optax", "megatron", "noam", "rex"}


def test_torch_based_targets_print_the_apis_lrs_bit_for_bit(client, tmp_path):
    cases = {f"torch-{n}": ("torch", "", s) for n, s in TORCH.items()}
    # and every catalog example of torch's own schedulers and of the torch-based families
    for family in ("torch", "transformers", "timm", "megatron"):
        examples = catalog_examples(client, family)
        assert len(examples) >= 5, family
        cases |= {n: (family, "", s) for n, s in examples.items()}
    cases |= {f"ckpt-{n}": (t, "&checkpoint=true", s) for n, (t, s) in CHECKPOINT.items()}
    cases |= {f"transformers-{n}": ("transformers", "", s) for n, s in TRANSFORMERS.items()}
    cases |= {f"timm-{n}": ("timm", "", s) for n, s in TIMM.items()}
    cases |= {f"megatron-{n}": ("megatron", "", s) for n, s in MEGATRON.items()}
    printed = run_scripts(client, tmp_path, cases)
    for name, (_, _, spec) in cases.items():
        assert printed[name] == api_lr(client, spec), name


def test_checkpoint_scripts_resume_from_both_state_dicts(client):
    spec = CHECKPOINT["sequential-warmup-cosine"][1]
    text = client.post("/v1/schedules/export?target=torch&checkpoint=true", json=spec).text
    assert "scheduler.load_state_dict(state['scheduler'])" in text
    assert "optimizer.load_state_dict(state['optimizer'])" in text
    assert "weights_only=True" in text
    # without it the recipe is a comment, and the loop runs uninterrupted
    plain = client.post("/v1/schedules/export?target=torch", json=spec).text
    assert "#   scheduler.load_state_dict(state['scheduler'])" in plain
    assert "RESUME_AT" not in plain


def test_optax_scripts_print_the_apis_lrs_in_float64(client, tmp_path):
    cases = {n: ("optax", "", s) for n, s in catalog_examples(client, "optax").items()}
    assert len(cases) >= 14
    cases["optax-per-group-epochs"] = (
        "optax",
        "",
        {
            "param_groups": [{}, {}],
            "scheduler": {
                "type": "optax",
                "schedule": "warmup_cosine_decay_schedule",
                "init_value": [0.0, 0.001],
                "peak_value": [0.1, 0.05],
                "warmup_steps": 3,
                "decay_steps": 12,
                "end_value": [0.001, 0.0],
            },
            "interval": "epoch",
            "steps_per_epoch": 3,
            "steps": 50,
        },
    )
    printed = run_scripts(client, tmp_path, cases)
    for name, (_, _, spec) in cases.items():
        got, want = np.asarray(printed[name]), np.asarray(api_lr(client, spec))
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15, err_msg=name)


def test_lightning_scripts_step_the_scheduler_as_the_api_does(client, tmp_path):
    # never skipped: pytorch-lightning is in parity-nodeps-requirements.txt, which make installs
    cases = {f"lightning-{n}": ("lightning", "", s) for n, s in LIGHTNING.items()}
    printed = run_scripts(client, tmp_path, cases)
    for name, (_, _, spec) in cases.items():
        assert printed[name] == api_lr(client, spec), name


def test_lightning_script_sets_interval_and_frequency(client):
    spec = LIGHTNING["multistep-epochs"]
    text = client.post("/v1/schedules/export?target=lightning", json=spec).text
    assert '"interval": "epoch"' in text and '"frequency": 1' in text
    assert "STEPS_PER_EPOCH = 3" in text
    text = client.post(
        "/v1/schedules/export?target=lightning", json=LIGHTNING["pw-exponential"]
    ).text
    assert '"interval": "step"' in text and "def lr_scheduler_step" in text


def test_megatron_script_names_its_command_line_flags(client):
    text = client.post("/v1/schedules/export?target=megatron", json=MEGATRON["wsd"]).text
    for flag in (
        "--lr 0.0003",
        "--min-lr 3e-05",
        "--lr-decay-style WSD",
        "--lr-warmup-iters 10",
        "--lr-decay-iters 100",
        "--lr-wsd-decay-style minus_sqrt",
        "--lr-wsd-decay-iters 20",
    ):
        assert flag in text, flag


def test_timm_script_runs_train_pys_loop(client):
    text = client.post("/v1/schedules/export?target=timm", json=TIMM["cosine-updates"]).text
    assert "create_scheduler_v2(" in text
    assert "scheduler.step_update(num_updates=i)" in text
    assert "UPDATES_PER_EPOCH = 8" in text


PLATEAU = {
    "scheduler": {"type": "ReduceLROnPlateau", "factor": 0.5},
    "steps": 4,
    "metrics": [1.0, 1.0, 1.0],
}
HF = {"scheduler": {"type": "transformers", "name": "constant"}, "steps": 5}
OPTAX = {"scheduler": {"type": "optax", "schedule": "constant_schedule", "value": 0.1}, "steps": 5}


@pytest.mark.parametrize(
    ("target", "body", "names"),
    [
        ("optax", PLATEAU, "torch, lightning"),
        ("timm", HF, "transformers, lightning"),
        ("torch", HF, "transformers, lightning"),
        ("torch", OPTAX, "optax"),
        ("megatron", OPTAX, "optax"),
        ("transformers", {"scheduler": {"type": "StepLR", "step_size": 2}, "steps": 5}, "torch"),
    ],
)
def test_a_target_that_cannot_write_the_spec_names_those_that_can(client, target, body, names):
    r = client.post(f"/v1/schedules/export?target={target}", json=body)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert f"the targets that can: {names}" in problem["detail"]
    assert problem["errors"][0]["loc"] == ["query", "target"]


@pytest.mark.parametrize(
    ("query", "body", "loc", "words"),
    [
        (
            "?target=torch",
            {
                "scheduler": {
                    "type": "SequentialLR",
                    "schedulers": [
                        {"type": "ConstantLR", "factor": 0.5, "total_iters": 2},
                        {"type": "transformers", "name": "constant"},
                    ],
                    "milestones": [2],
                },
                "steps": 5,
            },
            "scheduler",
            "no export target",
        ),
        (
            "?target=timm",
            {
                "scheduler": {"type": "timm", "sched": "cosine", "num_epochs": 5},
                "warmup": {"type": "linear", "steps": 2},
                "steps": 5,
            },
            "warmup",
            "warmup_epochs",
        ),
        ("?target=timm&checkpoint=true", TIMM["multistep-per-step"], "checkpoint", "torch"),
        (
            "?target=torch",
            {**TORCH["pw-radam"], "accumulation_steps": 4, "index_by": "micro_batch"},
            "index_by",
            "every optimizer step",
        ),
        (
            "?target=megatron",
            {**MEGATRON["wsd"], "skipped_steps": [3]},
            "skipped_steps",
            "drop skipped_steps",
        ),
    ],
)
def test_other_refusals_say_what_to_change(client, query, body, loc, words):
    r = client.post("/v1/schedules/export" + query, json=body)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["errors"][0]["loc"][-1] == loc
    assert words in problem["detail"]


@pytest.mark.parametrize(
    ("target", "body", "loc"),
    [
        # the API refuses these specs, so the export does too (the script would fail)
        (
            "torch",
            {"scheduler": {"type": "ReduceLROnPlateau"}, "steps": 5, "metrics": [1.0]},
            "metrics",
        ),
        (
            "torch",
            {"scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 5}, "steps": 10},
            "scheduler",
        ),
        (
            "megatron",
            {
                "scheduler": {
                    "type": "megatron",
                    "lr_decay_style": "linear",
                    "max_lr": [0.1, 0.2, 0.3],
                    "lr_decay_steps": 10,
                },
                "steps": 5,
            },
            "max_lr",
        ),
        (
            "optax",
            {
                "param_groups": [{}, {}],
                "scheduler": {"type": "optax", "schedule": "constant_schedule", "value": [0.1]},
                "steps": 5,
            },
            "value",
        ),
    ],
)
def test_a_spec_the_api_refuses_is_not_exported(client, target, body, loc):
    r = client.post(f"/v1/schedules/export?target={target}", json=body)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["loc"][-1] == loc


TARGETS = ("torch", "lightning", "transformers", "timm", "optax", "megatron")
WARMUPS = (
    None,
    {"type": "linear", "steps": 3, "start_factor": 0.0},
    {"type": "exponential", "warmup_period": 3},
)


def test_every_catalog_example_and_target_is_a_script_or_a_clear_422(client):
    """Each (catalog example, warmup, target) is a script, or a 422 problem whose detail says
    what to change (never a 500); a target a 422 names as able to write the spec does not
    answer that it cannot."""
    examples = {}
    for family in ("torch", "transformers", "timm", "optax", "megatron", "noam", "rex"):
        examples |= catalog_examples(client, family)
    assert len(examples) > 50
    for name, spec in examples.items():
        for warmup in WARMUPS:
            body = {**spec, "steps": min(spec["steps"], 40)}
            if warmup is not None:
                if spec.get("interval") == "epoch":
                    continue
                body = {**body, "warmup": warmup, "optimizer": ADAM}
            answers = {
                t: client.post(f"/v1/schedules/export?target={t}", json=body) for t in TARGETS
            }
            for target, r in answers.items():
                assert r.status_code in (200, 422), (name, warmup, target, r.text)
                if r.status_code == 422:
                    problem = r.json()
                    assert problem["detail"] and problem["errors"], (name, target)
                    if "the targets that can: " in problem["detail"]:
                        able = problem["detail"].split("the targets that can: ")[1].split(", ")
                        assert target not in able
                        for other in able:  # it writes it, or refuses for another reason
                            theirs = answers[other]
                            assert theirs.status_code == 200 or (
                                "the targets that can" not in theirs.json()["detail"]
                            ), (name, warmup, other, theirs.text)
