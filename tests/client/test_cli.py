"""The `lrs` command line against a real server: output, exit codes, and the live progress
bars as a terminal shows them (run in a pseudo-terminal)."""

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np

from tests.client.conftest import API_KEY
from tests.servers import free_port

LRS = str(Path(sys.executable).parent / "lrs")
STEP_ARGS = ["schedule", "StepLR", "--step-size", "3", "--gamma", "0.5", "--steps", "10"]


def env_for(server: str, key: str | None = API_KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LRS_URL", "LRS_API_KEY")}
    env.update(LRS_URL=server, COLUMNS="120", TERM="xterm-256color")
    if key:
        env["LRS_API_KEY"] = key
    return env


def lrs(server: str, *args: str, key: str | None = API_KEY) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LRS, *args], env=env_for(server, key), capture_output=True, text=True, timeout=60
    )


def in_pty(server: str, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run `lrs` with a pseudo-terminal as stdout and stderr; return its exit code and all it
    wrote, escape sequences included."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.execve(LRS, [LRS, *args], env_for(server))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def percents(text: str) -> list[int]:
    return [int(p) for p in re.findall(r"(\d{1,3})%", text)]


def test_schedule_table_json_csv_plot_and_the_catalog(server):
    table = lrs(server, *STEP_ARGS)
    assert table.returncode == 0, table.stderr
    assert "0.0125" in table.stdout and "step" in table.stdout
    as_json = lrs(server, *STEP_ARGS, "--json")
    assert json.loads(as_json.stdout)["lr"][0][3] == 0.05
    csv = lrs(server, *STEP_ARGS, "--csv")
    assert csv.stdout.splitlines()[:2] == ["step,lr", "0,0.1"]
    plot = lrs(server, *STEP_ARGS, "--plot")
    assert "│" in plot.stdout and "└" in plot.stdout
    catalog = lrs(server, "catalog", "StepLR", "--json")
    assert json.loads(catalog.stdout)["required"] == ["step_size"]
    assert "CosineAnnealingLR" in lrs(server, "catalog").stdout


def test_exit_codes_refused_usage_and_unreachable(server, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scheduler": {"type": "StepLR", "step_size": -1}, "steps": 5}))
    import httpx

    detail = httpx.post(f"{server}/v1/schedules/compute", content=bad.read_text()).json()["detail"]
    refused = lrs(server, "compute", str(bad))
    assert refused.returncode == 3
    assert detail in refused.stderr.replace("\n", "")

    assert lrs(server, "compute", str(tmp_path / "missing.json")).returncode == 2
    assert lrs(server, "schedule", "StepLR").returncode == 2  # --steps is required
    assert lrs(server, "frobnicate").returncode == 2

    down = f"http://127.0.0.1:{free_port()}"
    unreachable = lrs(server, "--url", down, "--retries", "0", "info")
    assert unreachable.returncode == 4
    assert "cannot reach the service" in unreachable.stderr

    anonymous = lrs(server, "jobs", "submit", key=None)
    assert anonymous.returncode == 3 and "401" in anonymous.stderr


def test_jobs_submit_follow_draws_a_bar_that_advances_in_a_terminal(server, tmp_path):
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({
        "data": {"type": "noisy_sine", "n": 400, "n_train": 300},
        "epochs": 30, "batch_size": 8,
    }))  # fmt: skip
    code, text = in_pty(server, "jobs", "submit", str(spec), "--follow")
    assert code == 0, text
    seen = percents(text)
    assert len(set(seen)) >= 3, text[-2000:]
    assert seen == sorted(seen) and seen[-1] == 100
    steps = [(int(a), int(b)) for a, b in re.findall(r"step (\d+)/(\d+)", text)]
    total = steps[-1][1]
    assert len({a for a, _ in steps}) >= 3, text[-2000:]
    assert steps[-1] == (total, total) and total == 30 * 38  # 300 examples in batches of 8
    assert "succeeded" in text
    job_id = re.search(r"submitted job ([0-9a-f]{32})", text).group(1)

    listed = json.loads(lrs(server, "jobs", "list", "--json").stdout)
    assert job_id in [j["id"] for j in listed["jobs"]]
    got = json.loads(lrs(server, "jobs", "get", job_id, "--json").stdout)
    assert got["status"] == "succeeded" and got["spec"]["epochs"] == 30
    folder = tmp_path / "artifacts"
    assert lrs(server, "jobs", "artifacts", job_id, "-o", str(folder)).returncode == 0
    metrics = json.loads((folder / f"{job_id}-metrics.json").read_text())
    assert metrics["test_loss"] == got["result"]["test_loss"]
    assert (folder / f"{job_id}-model.pt").stat().st_size > 0
    again = lrs(server, "jobs", "cancel", job_id)
    assert again.returncode == 3 and "already finished" in again.stderr
    assert lrs(server, "jobs", "delete", job_id).returncode == 0
    assert lrs(server, "jobs", "get", job_id).returncode == 3


def test_a_large_download_shows_a_progress_bar(server, tmp_path):
    spec = tmp_path / "long.json"
    spec.write_text(json.dumps({
        "scheduler": {"type": "CosineAnnealingLR", "T_max": 1_000_000},
        "steps": 1_000_000, "engine": "vectorized",
    }))  # fmt: skip
    out = tmp_path / "long.npy"
    code, text = in_pty(server, "compute", str(spec), "--out", str(out))
    assert code == 0, text
    lr = np.load(out)
    assert lr.shape == (1, 1_000_000) and lr[0, 0] == 0.1
    seen = percents(text)
    assert seen and seen[-1] == 100, text[-2000:]
    assert "8.0 MB" in text or "8.0/8.0 MB" in text


def test_batch_dropout_info_health_and_job_events_as_json(server, tmp_path):
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps([
        {"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 6},
        {"scheduler": {"type": "StepLR", "step_size": 0}, "steps": 6},
    ]))  # fmt: skip
    slots = json.loads(lrs(server, "batch", str(specs), "--json").stdout)
    assert [s["status"] for s in slots] == [200, 422]
    assert slots[0]["result"]["lr"][0][3] == 0.1 * 0.1 and "step_size" in str(slots[1]["problem"])
    out = tmp_path / "batch.npy"
    assert lrs(server, "batch", str(specs), "--out", str(out)).returncode == 3  # 422: use json

    drop = tmp_path / "drop.json"
    drop.write_text(json.dumps({"variant": "Dropout", "p": 0.5, "shape": [3, 3], "seed": 1}))
    body = json.loads(lrs(server, "dropout", str(drop), "--json").stdout)
    assert body["seed"] == 1 and body["scale"] == 2.0

    info = json.loads(lrs(server, "info", "--json", "--url", server).stdout)
    assert info["torch_version"] == "2.13.0"
    assert json.loads(lrs(server, "health", "--json").stdout)["status"] == "ready"

    job = json.loads(lrs(server, "jobs", "submit", "--json").stdout)  # the seed's task
    lines = lrs(server, "jobs", "events", job["id"], "--json").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "succeeded"
    record = json.loads(lrs(server, "jobs", "get", job["id"], "--json").stdout)
    assert [e["data"] for e in events if e["event"] == "progress"][-1] == record["progress"]


def test_lint_prints_a_table_of_findings_and_fails_only_when_asked(server, tmp_path):
    spec = tmp_path / "cosine.json"
    spec.write_text(
        json.dumps({"scheduler": {"type": "CosineAnnealingLR", "T_max": 40}, "steps": 100})
    )
    done = lrs(server, "lint", str(spec))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["step", "code", "kind", "message"]
    row = next(line for line in lines if "cosine-rises-after-t-max" in line)
    assert row.split()[:3] == ["41", "cosine-rises-after-t-max", "caveat"]
    assert "CosineAnnealingLR with T_max=40 runs for" in " ".join(done.stdout.split())
    # the link stays whole on its own line, whatever the terminal's width
    assert re.search(r"^ +see https://pytorch\.org/docs/\S+CosineAnnealingLR\.html$",
                     done.stdout, re.M)  # fmt: skip
    assert re.search(r"^\d+ findings? \(", lines[-1])

    assert lrs(server, "lint", str(spec), "--fail-on-findings").returncode == 1
    raw = lrs(server, "lint", str(spec), "--json", "--fail-on-findings")
    assert raw.returncode == 1
    findings = json.loads(raw.stdout)
    assert findings[0]["code"] == "cosine-rises-after-t-max" and findings[0]["step"] == 41

    clean = tmp_path / "clean.json"
    clean.write_text(
        json.dumps({"scheduler": {"type": "LambdaLR", "lr_lambda": "0.9 ** epoch"}, "steps": 10})
    )
    passed = lrs(server, "lint", str(clean), "--fail-on-findings")
    assert passed.returncode == 0 and passed.stdout.strip() == "no findings"
    assert json.loads(lrs(server, "lint", str(clean), "--json").stdout) == []

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scheduler": {"type": "StepLR", "step_size": -1}, "steps": 5}))
    refused = lrs(server, "lint", str(bad))
    assert refused.returncode == 3 and "step_size" in refused.stderr


def test_resume_from_a_saved_pt_and_export_targets(server, tmp_path):
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    for _ in range(4):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "state.pt")
    (tmp_path / "state.json").write_text(json.dumps(sched.state_dict()))
    following = []
    for _ in range(5):
        following.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    spec = tmp_path / "step.json"
    spec.write_text(
        json.dumps({"scheduler": {"type": "StepLR", "step_size": 3, "gamma": 0.5}, "steps": 10})
    )
    pt = tmp_path / "state.pt"
    raw = lrs(server, "resume", str(spec), "--state", str(pt), "--next-steps", "5", "--json")
    assert raw.returncode == 0, raw.stderr
    answer = json.loads(raw.stdout)
    assert answer["recipes"]["state"]["lr"][0] == following
    assert answer["state"]["source"] == "pt"
    as_json = lrs(server, "resume", str(spec), "--state", str(tmp_path / "state.json"),
                  "--next-steps", "5", "--json")  # fmt: skip
    assert json.loads(as_json.stdout)["recipes"] == answer["recipes"]

    table = lrs(server, "resume", str(spec), "--state", str(pt), "--next-steps", "5")
    assert table.returncode == 0, table.stderr
    assert "state (pt): last_epoch 4" in table.stdout
    rows = [line.split() for line in table.stdout.splitlines()[2:]]
    assert [float(r[1]) for r in rows] == following
    recipes = lrs(server, "resume", str(spec), "--at", "5")
    assert recipes.returncode == 0 and "state_dict" in recipes.stdout
    assert "identical" in recipes.stdout
    assert lrs(server, "resume", str(spec)).returncode == 2  # neither --at nor --state
    assert lrs(server, "resume", str(spec), "--state", str(tmp_path / "no.pt")).returncode == 2

    exported = lrs(server, "export", str(spec), "--target", "lightning")
    assert exported.returncode == 0 and "configure_optimizers" in exported.stdout
    saved = tmp_path / "train.py"
    assert lrs(server, "export", str(spec), "--checkpoint", "--out", str(saved)).returncode == 0
    assert "load_state_dict" in saved.read_text()
    wrong = lrs(server, "export", str(spec), "--target", "optax")
    assert wrong.returncode == 3 and "torch" in wrong.stderr  # the targets that can
