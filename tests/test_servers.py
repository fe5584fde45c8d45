"""The test servers' helper (tests/servers.py): a server that cannot start fails with what it
said, and leaves no process behind."""

import os
import sys
import time
from collections.abc import Callable

import pytest

from tests.servers import Process, ServerNotReady, _descendants, _start_time, start_server


def test_a_server_that_exits_fails_the_wait_with_its_log_tail(tmp_path):
    server = start_server(tmp_path / "data", {"LRS_JOB_WORKERS": "0"}, flags=["--no-such-flag"])
    with pytest.raises(ServerNotReady) as raised:
        server.wait_ready("/healthz", timeout=60)
    message = str(raised.value)
    assert "exited with status 2 before /healthz answered 200" in message
    assert "No such option '--no-such-flag'" in message  # uvicorn's own words, from its log
    assert str(server.log) in message
    assert not server.alive()
    server.stop()  # again: nothing to do


def _tree(
    script: str, tmp_path, ready: Callable[[Process], bool] = lambda tree: True
) -> tuple[Process, int]:
    """Start ``script`` (which prints its child's pid) as a Process; return it and the pid."""
    tree = Process("tree", [sys.executable, "-c", script], dict(os.environ), tmp_path / "t.log")
    deadline = time.monotonic() + 30
    while not (tree.log_text().strip() and ready(tree)):
        assert time.monotonic() < deadline, tree.tail()
        time.sleep(0.05)
    return tree, int(tree.log_text().split()[0])


def test_stop_kills_a_tree_that_ignores_sigterm(tmp_path):
    # a parent and its child both ignore SIGTERM (as a stuck server and a worker would)
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    tree, child = _tree(script, tmp_path, lambda tree: bool(_descendants(tree.pid)))
    tree.stop(timeout=1)
    assert not tree.alive()
    assert _start_time(child) is None, f"{child} outlived stop()"


def test_stop_after_kill_leaves_no_orphan(tmp_path):
    # a parent killed as a crash would be leaves its child to init: stop() still finds it
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    tree, child = _tree(script, tmp_path)
    tree.kill()
    assert not tree.alive() and _start_time(child) is not None  # an orphan now
    tree.stop()
    assert _start_time(child) is None, f"{child} outlived stop()"
    assert tree.family() == set()


@pytest.mark.slow
def test_a_killed_server_with_workers_leaves_no_process(tmp_path):
    server = start_server(tmp_path / "data", {"LRS_JOB_WORKERS": "0"}, flags=["--workers", "2"])
    try:
        server.wait_ready("/healthz", timeout=240)
        workers = _descendants(server.pid)  # uvicorn's 2 and multiprocessing's tracker
        assert len(workers) >= 2, workers
        server.kill()
        time.sleep(1)
        assert [w for w, started in workers if _start_time(w) == started]  # orphans, alive
    finally:
        server.stop()
    assert [w for w, started in workers if _start_time(w) == started] == []
