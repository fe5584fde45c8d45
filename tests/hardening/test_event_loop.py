"""Item 5 of issue 15: 300 open event streams and a large listing leave /healthz fast."""

import json
import random
import socket
import statistics
import threading
import time

import httpx

from service.jobs.store import Store, sqlite_url

from .conftest import FINISHED, LONG, QUICK, HealthProbe, new_address, wait_status

STREAMS = 300
ADDRESSES = 10  # 30 streams each: CAPS allow 30 per client, 40 per job, 400 in all


def _open_stream(server, address: str, job_id: str) -> tuple[socket.socket, int]:
    """Open GET /events from ``address``; return the socket and the response status."""
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(address, 0))
    sock.sendall(
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"
        .encode()
    )  # fmt: skip
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the stream before answering"
        head += chunk
    return sock, int(head.split(b" ", 2)[1])


def _p95(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[int(0.95 * (len(ordered) - 1))]


def _summary(latencies: list[float]) -> str:
    return (
        f"n={len(latencies)} median {statistics.median(latencies) * 1000:.0f} ms, "
        f"p95 {_p95(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )


def _big_result(n: int) -> dict:
    lr = [random.random() for _ in range(n)]
    return {
        "lr": lr,
        "lr_groups": [lr],
        "train_loss": [0.1],
        "test_loss": [0.1],
        "scheduler_metrics": None,
        "predictions": {"t": [1], "observed": [0.0], "one_step": [0.0], "recursive": [0.0],
                        "k_step": {"4": [0.0]}},
        "optimizer_steps": n,
        "steps_per_epoch": n,
        "effective_batch_size": 1,
        "n_train": 60,
        "n_test": 36,
        "wall_time_s": 1.0,
        "device": "cpu",
        "torch_version": "2.13.0",
    }  # fmt: skip


def _add_big_jobs(server, count: int, values: int) -> list[str]:
    """Store ``count`` succeeded jobs whose results hold ``values`` floats twice (about
    ``values`` × 40 bytes of JSON each), straight into the server's store (while its one
    worker is busy, so none claims them)."""
    url = server.database_url or sqlite_url(server.data_dir)
    store = Store(url, server.prefix)
    ids = []
    try:
        result = _big_result(values)
        for _ in range(count):
            record, _ = store.create(
                {"epochs": 1, "data": QUICK["data"]}, "big", client="ip:test-listing"
            )
            assert store.finish(record.id, "succeeded", from_status=("queued",), result=result)
            ids.append(record.id)
    finally:
        store.dispose()
    return ids


def test_300_streams_and_a_24_mb_listing_leave_healthz_fast_and_memory_flat(server):
    submitters = [server.client() for _ in range(3)]
    jobs: list[str] = []
    for k in range(8):  # 8 jobs that stay open (one running, seven queued): CAPS allow 8
        r = submitters[k % 3].post("/v1/jobs", json={**QUICK, **LONG})
        assert r.status_code == 202, r.text
        jobs.append(r.json()["id"])
    wait_status(submitters[0], jobs[0], {"running"})
    big = _add_big_jobs(server, 24, 25_000)  # 24 × ~1 MB: the 24 MB listing
    addresses = [new_address() for _ in range(ADDRESSES)]
    rss_before = server.rss_bytes()
    sockets: list[socket.socket] = []
    listing: dict[str, list] = {"seconds": [], "sizes": [], "statuses": []}
    stop = threading.Event()

    def list_all():
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                start = time.monotonic()
                r = c.get("/v1/jobs", params={"page_size": 100})
                listing["seconds"].append(time.monotonic() - start)
                listing["sizes"].append(len(r.content))
                listing["statuses"].append(r.status_code)

    try:
        opened = time.monotonic()
        for k in range(STREAMS):
            sock, status = _open_stream(server, addresses[k % ADDRESSES], jobs[k % len(jobs)])
            assert status == 200, k
            sockets.append(sock)
        opened = time.monotonic() - opened
        with HealthProbe(server.url) as streams_only:
            time.sleep(3.0)
        lister = threading.Thread(target=list_all)
        with HealthProbe(server.url) as with_listing:
            lister.start()
            time.sleep(4.0)
            stop.set()
            lister.join()
        rss_growth = server.rss_bytes() - rss_before

        # the caps: one client's 31st stream, one job's 41st
        sock, status = _open_stream(server, addresses[0], jobs[1])
        sock.close()
        assert status == 429
        fresh = new_address()
        statuses = []
        for _ in range(3):  # jobs[0] has 38 streams: 2 more fit
            sock, status = _open_stream(server, fresh, jobs[0])
            if status == 200:
                sockets.append(sock)
            else:
                sock.close()
            statuses.append(status)
        assert statuses == [200, 200, 503]

        lines = [f"\n{STREAMS} streams opened in {opened:.2f} s, RSS +{rss_growth / 2**20:.1f} MB"]
        for name, probe in (("streams", streams_only), ("streams+listing", with_listing)):
            assert probe.failures == []
            lines.append(f"healthz under {name}: {_summary(probe.latencies)}")
        lines.append(
            f"listing: {len(listing['seconds'])} pages, slowest {max(listing['seconds']):.2f} s, "
            f"largest {max(listing['sizes']) / 2**20:.2f} MB"
        )
        print("; ".join(lines))
        # Targets 100 ms over the whole sample (p95 of ~100 answers each), on 2 cores shared
        # with other test runs (load average 9-17 when this was written): with the listing
        # running, p95 within 100 ms, or 3x the p95 of the streams alone, measured just
        # before, when the machine alone is slower than that. The listing stalled /healthz
        # 1.3 s, and its p95 was 169-282 ms, while jobs were parsed and re-serialized.
        for probe in (streams_only, with_listing):
            assert len(probe.latencies) >= 20, _summary(probe.latencies)
        assert _p95(streams_only.latencies) < 0.1, _summary(streams_only.latencies)
        bound = max(0.1, 3 * _p95(streams_only.latencies))
        assert _p95(with_listing.latencies) <= bound, _summary(with_listing.latencies)
        assert max(with_listing.latencies) < 1.0, _summary(with_listing.latencies)
        # the server keeps no freed memory for reuse (LRS_MALLOC_RETAIN_MB=0, conftest's CAPS):
        # with the default's retention this measured +58-76 MB
        assert rss_growth < 64 << 20, rss_growth / 2**20
        assert set(listing["statuses"]) == {200}
        assert max(listing["sizes"]) < 2_000_000 + 1_100_000  # CAPS: 2 MB pages (+ one job)

        # every stream hears its job end: the shared poll serves them all
        for job_id in jobs:
            submitters[0].post(f"/v1/jobs/{job_id}/cancel")
        deadline = time.monotonic() + 20
        for sock in sockets:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            seen = b""
            while b"event: done" not in seen:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                seen += chunk
            assert b"event: done" in seen, seen[-300:]
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
        for c in submitters:
            for job_id in jobs:
                c.post(f"/v1/jobs/{job_id}/cancel")
        for job_id in jobs:
            wait_status(submitters[0], job_id, FINISHED)
        for job_id in big:
            submitters[0].delete(f"/v1/jobs/{job_id}")
        for c in submitters:
            c.close()


def test_a_listing_pages_through_big_jobs_within_the_byte_bound(server):
    with server.client() as client:
        blocker = client.post("/v1/jobs", json={**QUICK, **LONG}).json()["id"]
        wait_status(client, blocker, {"running"})  # the worker is busy: ours stay ours
        big = _add_big_jobs(server, 6, 25_000)
        client.post(f"/v1/jobs/{blocker}/cancel")
        seen: list[str] = []
        token = None
        while True:
            params = {"page_size": 100, **({"page_token": token} if token else {})}
            r = client.get("/v1/jobs", params=params)
            assert r.status_code == 200 and len(r.content) < 2_000_000 + 1_100_000
            page = json.loads(r.content)
            seen += [job["id"] for job in page["jobs"]]
            token = page["next_page_token"]
            if token is None:
                break
        assert len(seen) == len(set(seen)) and set(big) <= set(seen)
        for job_id in big:
            assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
