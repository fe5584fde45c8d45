"""Item 7 of issue 15: ids, duplicate keys, racing deletes and cancels, on the real server."""

import threading

import httpx

from .conftest import FINISHED, LONG, QUICK, HealthProbe, wait_status


def test_any_non_id_character_is_a_404_problem_on_every_job_route(server):
    with server.client() as client, HealthProbe(server.url) as probe:
        for bad in ("%00", "abc%00def", "%00" * 32, "x" * 32, "%E2%80%AE", "..", "A" * 33, "%20"):
            for method, path in (
                ("GET", f"/v1/jobs/{bad}"),
                ("DELETE", f"/v1/jobs/{bad}"),
                ("POST", f"/v1/jobs/{bad}/cancel"),
                ("GET", f"/v1/jobs/{bad}/events"),
                ("GET", f"/v1/jobs/{bad}/artifacts/model.pt"),
            ):
                response = client.request(method, path)
                if bad == ".." and response.status_code == 404 and method != "GET":
                    continue  # the client normalizes the path: another route's 404/405
                assert response.status_code in (404, 405), (method, path, response.text)
                assert response.headers["content-type"] == "application/problem+json"
        # the keep-alive connection survived all of it
        assert client.get("/healthz").status_code == 200
    assert probe.failures == [] and probe.worst < 0.5


def test_duplicate_json_keys_are_a_422_naming_the_key_on_every_endpoint(server):
    bodies = {
        "/v1/schedules/compute": b'{"scheduler": {"type": "StepLR", "step_size": 3}, '
        b'"steps": 10, "steps": 20}',
        "/v1/schedules/batch": b'{"requests": [{"scheduler": {"type": "StepLR", "step_size": 3,'
        b' "gamma": 0.5, "gamma": 0.1}, "steps": 10}]}',
        "/v1/dropout": b'{"p": 0.3, "p": 0.5, "shape": [2]}',
        "/v1/jobs": b'{"epochs": 1, "epochs": 2}',
    }
    expected = {
        "/v1/schedules/compute": ["body", "steps"],
        "/v1/schedules/batch": ["body", "requests", 0, "scheduler", "gamma"],
        "/v1/dropout": ["body", "p"],
        "/v1/jobs": ["body", "epochs"],
    }
    with server.client() as client:
        for path, body in bodies.items():
            for ctype in ("application/json", None):  # curl -d sends no JSON type
                headers = {"content-type": ctype} if ctype else {}
                response = client.post(path, content=body, headers=headers)
                assert response.status_code == 422, (path, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                problem = response.json()
                assert problem["errors"][0]["loc"] == expected[path]
                assert "appears twice" in problem["detail"]
        ok = client.post(
            "/v1/schedules/compute",
            json={"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 10},
        )
        assert ok.status_code == 200


def test_racing_deletes_answer_404_once_the_job_is_gone(server):
    with server.client() as client:
        ids = [client.post("/v1/jobs", json=QUICK).json()["id"] for _ in range(3)]
        for job_id in ids:
            assert wait_status(client, job_id, FINISHED)["status"] == "succeeded"
        for job_id in ids:
            statuses: list[int] = []
            barrier = threading.Barrier(8)

            def delete(job_id=job_id, barrier=barrier, statuses=statuses):
                with httpx.Client(base_url=server.url, timeout=30) as c:
                    barrier.wait()
                    statuses.append(c.delete(f"/v1/jobs/{job_id}").status_code)

            threads = [threading.Thread(target=delete) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(statuses) == [204] + [404] * 7, statuses
            assert client.get(f"/v1/jobs/{job_id}").status_code == 404


def test_a_cancel_that_loses_to_completion_says_so(server):
    """Cancels sent while a short job runs: each either stops it or says it came too late."""
    with server.client() as client:
        for _ in range(3):
            job_id = client.post("/v1/jobs", json=QUICK).json()["id"]
            answers = []
            while True:
                response = client.post(f"/v1/jobs/{job_id}/cancel")
                answers.append(response)
                if response.status_code != 202:
                    break
            job = wait_status(client, job_id, FINISHED)
            last = answers[-1]
            if job["status"] == "cancelled":
                assert job["cancel"]["outcome"] == "cancelled"
                continue
            # it finished first: the answer (and the job) say the cancel lost
            assert last.status_code == 409, last.text
            assert last.headers["content-type"] == "application/problem+json"
            assert "finished" in last.json()["detail"]
            if any(a.status_code == 202 for a in answers):
                assert job["cancel"]["outcome"] == "too_late", job["cancel"]
                assert job["status"] in job["cancel"]["detail"]


def test_a_cancel_of_a_running_job_is_pending_then_cancelled(server):
    with server.client() as client:
        job_id = client.post("/v1/jobs", json={**QUICK, **LONG}).json()["id"]
        wait_status(client, job_id, {"running"})
        response = client.post(f"/v1/jobs/{job_id}/cancel")
        answer = response.json()
        # 202 pending, unless the worker stopped (its batches are one sample each) between
        # the cancel being recorded and the route reading the job back: then 200, cancelled
        if response.status_code == 200:
            assert answer["status"] == "cancelled", answer
            assert answer["cancel"]["outcome"] == "cancelled", answer
        else:
            assert response.status_code == 202, answer
            assert answer["status"] == "running" and answer["cancel"]["outcome"] == "pending"
        job = wait_status(client, job_id, FINISHED, timeout=10)
        assert job["status"] == "cancelled" and job["cancel"]["outcome"] == "cancelled"
