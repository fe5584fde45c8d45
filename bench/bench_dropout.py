"""Benchmark of POST /v1/dropout: compute time in-process and end-to-end HTTP time.

Starts the service with uvicorn on a free loopback port, measures the median of
``--repeat`` calls per case, prints a markdown table and the machine, stops the server.

    .venv/bin/python bench/bench_dropout.py [--repeat 15]
"""

import argparse
import tempfile
from typing import Any

import harness  # first: puts the repository root on sys.path for `service`
import httpx
import torch
from harness import machine, median_seconds

from service.dropout import sampler, specs
from service.settings import Settings


def cases(settings: Settings) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """Return (label, request body, query) per case: the issue's two, then the largest."""
    largest_k = settings.dropout_max_samples
    per_sample = settings.dropout_max_total // largest_k
    stats_only = {"return": []}
    return [
        ("1M elements, stats only", {"p": 0.3, "shape": [1000, 1000], **stats_only}, {}),
        (
            "K = 100 samples of 10k elements, stats only",
            {"p": 0.3, "shape": [10_000], "samples": 100, **stats_only},
            {},
        ),
        (
            f"largest input: {settings.dropout_max_elements:,} elements, stats only",
            {"p": 0.3, "shape": [settings.dropout_max_elements], **stats_only},
            {},
        ),
        (
            f"largest total: K = {largest_k} × {per_sample:,} elements, stats only",
            {"p": 0.3, "shape": [per_sample], "samples": largest_k, **stats_only},
            {},
        ),
        (
            f"largest JSON: output of {settings.dropout_json_max_values:,} elements",
            {"p": 0.3, "shape": [settings.dropout_json_max_values], "return": ["output"]},
            {},
        ),
        (
            f"largest input as npy: output of {settings.dropout_max_elements:,} elements",
            {"p": 0.3, "shape": [settings.dropout_max_elements], "return": ["output"]},
            {"format": "npy"},
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed calls per case")
    args = parser.parse_args()

    settings = Settings()
    rows = []
    with (
        tempfile.TemporaryDirectory() as data_dir,
        harness.server(data_dir) as (url, _),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        for label, body, query in cases(settings):
            spec = specs.DropoutRequest.model_validate({**body, "seed": 0})
            checked = specs.check_request(spec, settings)
            compute = median_seconds(lambda c=checked: sampler.sample(c), args.repeat)

            def http(body=body, query=query) -> int:
                response = client.post("/v1/dropout", json=body, params=query)
                response.raise_for_status()
                return len(response.content)

            size = http()
            end_to_end = median_seconds(http, args.repeat)
            rows.append((label, compute, end_to_end, size))

    threads = torch.get_num_threads()
    print(f"Median of {args.repeat} calls; machine: {machine()}; {threads} torch threads\n")
    print("| case | compute in-process (ms) | HTTP end-to-end (ms) | response bytes |")
    print("| --- | ---: | ---: | ---: |")
    for label, compute, end_to_end, size in rows:
        print(f"| {label} | {compute * 1e3:.1f} | {end_to_end * 1e3:.1f} | {size:,} |")


if __name__ == "__main__":
    main()
