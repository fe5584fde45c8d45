"""A real server killed with SIGKILL while jobs run, then restarted on the same data."""

import time
from pathlib import Path

import httpx
import pytest

from tests.servers import start_server

ENV = {"LRS_JOB_WORKERS": "1"}
LONG = {
    "data": {"type": "noisy_sine", "n": 200, "n_train": 120},
    "epochs": 1000,
    "batch_size": 1,
}
SMALL = {"data": {"type": "noisy_sine", "n": 200, "n_train": 120}, "epochs": 2}


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
    server = start_server(tmp_path, ENV)
    base, port = server.url, server.port
    try:
        server.wait_ready("/readyz", timeout=90)
        running = httpx.post(f"{base}/v1/jobs", json=LONG).json()["id"]
        queued = [httpx.post(f"{base}/v1/jobs", json=SMALL).json()["id"] for _ in range(2)]
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/v1/jobs/{running}").json()["progress"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        workers = _children(server.pid)
        server.kill()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers):  # they die with the server
            assert time.monotonic() < deadline, "worker processes outlived the server"
            time.sleep(0.1)
    finally:
        server.stop()

    server = start_server(tmp_path, ENV, port=port)  # the same data and address
    try:
        server.wait_ready("/readyz", timeout=90)
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
        server.stop(timeout=30)
