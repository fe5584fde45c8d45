"""Local job workers outside the API: ``python -m service.jobs.worker [--workers N]``.

Runs the same pool of spawned worker processes the API runs with the local executor, against
the store and data directory the ``LRS_*`` settings name, until SIGTERM or Ctrl-C. Start the
API with ``LRS_JOB_WORKERS=0`` and it runs no job itself: these processes claim the queued
jobs from the store (they look every second), hold their leases, and replace a worker process
that dies. Several of these commands may share one store.
"""

import argparse
import logging
import signal
import threading
from types import FrameType

from service.jobs.executor import ProcessExecutor
from service.jobs.runner import RunConfig
from service.settings import get_settings

log = logging.getLogger("service.jobs")

SUPERVISE_EVERY_S = 1.0


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, settings.job_workers),
        help="worker processes (default: LRS_JOB_WORKERS, at least 1)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = RunConfig.from_settings(settings)
    store = config.store()
    store.create_schema()
    executor = ProcessExecutor(store, config, args.workers)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping the job workers", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    executor.start()
    executor.resume()
    log.info("%d job worker processes on %s", args.workers, store.describe())
    try:
        while not stop.wait(SUPERVISE_EVERY_S):
            executor.supervise()
    finally:
        executor.stop()
        store.dispose()


if __name__ == "__main__":
    main()
