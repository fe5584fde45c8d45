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

from tests.client.conftest import API_KEY, free_port

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


def test_lint_prints_each_finding_with_its_step_and_link(server, tmp_path):
    spec = tmp_path / "cosine.json"
    spec.write_text(
        json.dumps({"scheduler": {"type": "CosineAnnealingLR", "T_max": 40}, "steps": 100})
    )
    done = lrs(server, "lint", str(spec))
    assert done.returncode == 0, done.stderr
    assert "cosine-rises-after-t-max: CosineAnnealingLR with T_max=40" in done.stdout
    assert "(step 41)" in done.stdout
    assert "see https://pytorch.org/docs/" in done.stdout
    clean = tmp_path / "clean.json"
    clean.write_text(
        json.dumps({"scheduler": {"type": "LambdaLR", "lr_lambda": "0.9 ** epoch"}, "steps": 10})
    )
    assert lrs(server, "lint", str(clean)).stdout.strip() == "no findings"
