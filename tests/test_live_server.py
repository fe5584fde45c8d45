"""The real server, started the way `make serve` starts it, answers over HTTP."""

import threading
import time

import httpx


def test_the_readme_curl_answers(live_server):
    r = httpx.get(f"{live_server}/v1/schedules/StepLR?step_size=30&gamma=0.65&steps=100")
    assert r.status_code == 200
    lr = r.json()["lr"][0]
    assert len(lr) == 100 and lr[0] == 0.1 and lr[30] == 0.1 * 0.65


def test_healthz_answers_while_a_long_computation_runs(live_server):
    heavy = {
        "scheduler": {"type": "LambdaLR", "lr_lambda": "+".join(["sin(epoch) * cos(epoch)"] * 12)},
        "param_groups": [{"lr": 0.1}] * 16,
        # the most the torch engine's cost model accepts for this lr_lambda (LRS_TORCH_MAX_WORK)
        "steps": 45_000,
        "engine": "torch",
    }
    finished = {}

    def long_request():
        start = time.monotonic()
        response = httpx.post(f"{live_server}/v1/schedules/compute", json=heavy, timeout=60)
        finished["status"] = response.status_code
        finished["seconds"] = time.monotonic() - start

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(0.5)
    latencies = []
    while worker.is_alive() and len(latencies) < 20:
        start = time.monotonic()
        assert httpx.get(f"{live_server}/healthz", timeout=5).status_code == 200
        latencies.append(time.monotonic() - start)
        time.sleep(0.1)
    worker.join()
    assert latencies, "the long request finished before /healthz could be asked"
    assert max(latencies) < 1.0, latencies
    # the worst request the torch engine allows answers within its time limit (422 past it)
    assert finished["status"] in (200, 422)
    assert finished["seconds"] < 5.5
