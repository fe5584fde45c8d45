"""What the rate limiter adds to a limited request, by where its buckets live.

The middleware (:class:`service.ratelimit.RateLimitMiddleware`) wraps an ASGI app that answers
at once, and each setup's request (``GET /v1/schedules/StepLR``, the compute limit) is timed
on one event loop, the setups interleaved round by round:

- ``off``: no limit (the baseline);
- ``local``: the in-process bucket (the default);
- ``redis``: the shared bucket in Redis (``--url``, a unique key prefix deleted at the end);
- ``refused``: a Redis port where nothing listens (the process's own bucket decides; Redis
  is tried again every 5 s);
- ``hung``: a socket that takes connections and never answers (the first request of each
  5 s waits the ``--timeout``).

The burst is large enough that no request is refused. Prints medians and p99 of the wall
time, the CPU time per request (``time.process_time``), requests a second with
``--concurrency`` in flight on the one loop, and how many requests the process decided alone
(the fallback), with the machine and its load.

    .venv/bin/python bench/bench_ratelimit.py [--requests 2000] [--rounds 5] [--url redis://127.0.0.1:6379/3]

With ``--http`` it times the same setups end to end instead (``off``, ``local``, ``redis``,
``refused``; ``hung`` is the same as refused between timeouts): one uvicorn server each, a
cached ``GET /v1/schedules/StepLR`` over a keep-alive connection, the servers taken in turn
request by request, medians of the client's wall time.
"""

import argparse
import asyncio
import contextlib
import socket
import statistics
import tempfile
import time
import uuid

import httpx
import redis
from harness import loadavg, machine, server  # first: puts the repository root on sys.path

from service import metrics
from service.ratelimit import RateLimitMiddleware
from service.settings import Settings


async def ok_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


SCOPE = {
    "type": "http",
    "method": "GET",
    "path": "/v1/schedules/StepLR",
    "headers": [],
    "client": ("192.0.2.7", 5000),
}


async def one(app) -> int:
    status = 0

    async def send(message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    await app(dict(SCOPE), receive, send)
    return status


async def time_sequential(app, n: int) -> tuple[list[float], float]:
    """Return each request's wall time and the CPU seconds per request."""
    times = []
    cpu = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        status = await one(app)
        times.append(time.perf_counter() - start)
        assert status == 200, status
    return times, (time.process_time() - cpu) / n


async def time_concurrent(app, n: int, concurrency: int) -> float:
    """Return requests per second with ``concurrency`` requests in flight."""
    start = time.perf_counter()
    for _ in range(n // concurrency):
        statuses = await asyncio.gather(*(one(app) for _ in range(concurrency)))
        assert set(statuses) == {200}, statuses
    return (n // concurrency) * concurrency / (time.perf_counter() - start)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def http(args: argparse.Namespace, refused_port: int, prefix: str) -> None:
    """Time a cached schedule request through real servers, one per setup, interleaved."""
    limits = {
        "LRS_RATE_LIMIT_COMPUTE_PER_S": "1000000",
        "LRS_RATE_LIMIT_COMPUTE_BURST": "1000000000",
        "LRS_RATE_LIMIT_TIMEOUT_S": str(args.timeout),
        "LRS_ACCESS_LOG": "false",
        "LRS_JOB_WORKERS": "0",
    }
    setups = {
        "off": {"LRS_ACCESS_LOG": "false", "LRS_JOB_WORKERS": "0"},
        "local": limits,
        "redis": {**limits, "LRS_RATE_LIMIT_URL": args.url, "LRS_RATE_LIMIT_PREFIX": prefix},
        "refused": {**limits, "LRS_RATE_LIMIT_URL": f"redis://127.0.0.1:{refused_port}/0"},
    }
    path = "/v1/schedules/StepLR?step_size=3&steps=10"
    with contextlib.ExitStack() as stack:
        clients = {}
        for name, env in setups.items():
            data = stack.enter_context(tempfile.TemporaryDirectory())
            url, _ = stack.enter_context(server(data, env))
            clients[name] = stack.enter_context(httpx.Client(base_url=url, timeout=30))
            for _ in range(50):  # warm: the cache, the connection, the script
                assert clients[name].get(path).status_code == 200
        times: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(args.rounds * args.requests):
            for name, client in clients.items():
                start = time.perf_counter()
                status = client.get(path).status_code
                times[name].append(time.perf_counter() - start)
                assert status == 200, (name, status)
    print(machine())
    print(f"load average {loadavg()}; {args.rounds * args.requests} requests each, interleaved")
    base = statistics.median(times["off"])
    print(f"{'setup':8} {'median':>9} {'p99':>9} {'added':>9}")
    for name, values in times.items():
        med = statistics.median(values)
        print(
            f"{name:8} {med * 1e3:7.3f}ms {pct(values, 0.99) * 1e3:7.2f}ms "
            f"{(med - base) * 1e3:7.3f}ms"
        )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--timeout", type=float, default=0.1, help="LRS_RATE_LIMIT_TIMEOUT_S")
    parser.add_argument("--http", action="store_true", help="through real servers")
    args = parser.parse_args()

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        refused_port = free.getsockname()[1]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1024)
    hung_port = silent.getsockname()[1]

    prefix = f"bench{uuid.uuid4().hex[:8]}:"
    if args.http:
        silent.close()
        try:
            http(args, refused_port, prefix)
        finally:
            client = redis.Redis.from_url(args.url)
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
            client.close()
        return
    limits = {
        "rate_limit_compute_per_s": 1e6,
        "rate_limit_compute_burst": 10**9,
        "rate_limit_timeout_s": args.timeout,
    }
    setups = {
        "off": Settings(),
        "local": Settings(**limits),
        "redis": Settings(**limits, rate_limit_url=args.url, rate_limit_prefix=prefix),
        "refused": Settings(**limits, rate_limit_url=f"redis://127.0.0.1:{refused_port}/0"),
        "hung": Settings(**limits, rate_limit_url=f"redis://127.0.0.1:{hung_port}/0"),
    }
    apps = {name: RateLimitMiddleware(ok_app, settings=s) for name, s in setups.items()}
    walls: dict[str, list[float]] = {name: [] for name in apps}
    cpus: dict[str, list[float]] = {name: [] for name in apps}
    rates: dict[str, list[float]] = {name: [] for name in apps}
    fallbacks: dict[str, float] = dict.fromkeys(apps, 0.0)
    counter = metrics.RATE_LIMIT_FALLBACK.labels("compute")
    for app in apps.values():  # warm: connect, load the script, trip the breakers
        await one(app)
    try:
        for _ in range(args.rounds):
            for name, app in apps.items():
                before = counter._value.get()
                times, cpu = await time_sequential(app, args.requests)
                walls[name] += times
                cpus[name].append(cpu)
                rates[name].append(await time_concurrent(app, args.requests, args.concurrency))
                fallbacks[name] += counter._value.get() - before
    finally:
        client = redis.Redis.from_url(args.url)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
        for app in apps.values():
            if app.shared is not None:
                await app.shared.aclose()
        silent.close()

    print(machine())
    print(f"load average {loadavg()}; {args.rounds} rounds x {args.requests} requests, interleaved")
    base = statistics.median(walls["off"])
    base_cpu = statistics.median(cpus["off"])
    print(
        f"{'setup':8} {'median':>9} {'p99':>9} {'added':>9} {'CPU/req':>9} {'added CPU':>10} "
        f"{'req/s @' + str(args.concurrency):>10} {'fallbacks':>9}"
    )
    for name in apps:
        med = statistics.median(walls[name])
        cpu = statistics.median(cpus[name])
        print(
            f"{name:8} {med * 1e6:7.1f}us {pct(walls[name], 0.99) * 1e6:7.1f}us "
            f"{(med - base) * 1e6:7.1f}us {cpu * 1e6:7.1f}us {(cpu - base_cpu) * 1e6:8.1f}us "
            f"{statistics.median(rates[name]):10.0f} {fallbacks[name]:9.0f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
