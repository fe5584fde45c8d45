"""A real server killed with SIGKILL while jobs run, then restarted on the same data."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
LONG = {
    "data": {"type": "noisy_sine", "n": 200, "n_train": 120},
    "epochs": 1000,
    "batch_size": 1,
}
SMALL = {"data": {"type": "noisy_sine", "n": 200, "n_train": 120}, "epochs": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data_dir: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "LRS_DATA_DIR": str(data_dir),
        "LRS_JOB_WORKERS": "1",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("DATABASE_URL", None)
    env.pop("LRS_DATABASE_URL", None)
    command = [sys.executable, "-m", "uvicorn", "service.main:app", "--port", str(port)]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become ready")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(p) for p in text]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigkill_loses_no_job_and_restart_gives_each_a_sensible_status(tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = _start(tmp_path, port)
    try:
        _wait_ready(base, server)
        running = httpx.post(f"{base}/v1/jobs", json=LONG).json()["id"]
        queued = [httpx.post(f"{base}/v1/jobs", json=SMALL).json()["id"] for _ in range(2)]
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/v1/jobs/{running}").json()["progress"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        workers = _children(server.pid)
        server.send_signal(signal.SIGKILL)
        server.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers):  # they die with the server
            assert time.monotonic() < deadline, "worker processes outlived the server"
            time.sleep(0.1)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    server = _start(tmp_path, port)
    try:
        _wait_ready(base, server)
        listed = {j["id"]: j for j in httpx.get(f"{base}/v1/jobs").json()["jobs"]}
        assert set(listed) == {running, *queued}
        assert listed[running]["status"] == "interrupted"
        assert listed[running]["error"]["type"] == "interrupted"
        assert listed[running]["progress"]["step"] > 0
        deadline = time.monotonic() + 60
        for job_id in queued:  # picked up again after the restart
            while (job := httpx.get(f"{base}/v1/jobs/{job_id}").json())["status"] != "succeeded":
                assert job["status"] in {"queued", "running"}, job
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
