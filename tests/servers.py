"""Real servers for the tests: the service under uvicorn on a free loopback port.

One helper for every test that needs the service as a process rather than the in-process
TestClient. :func:`start_server` starts it (settings as ``LRS_`` variables in ``env``, extra
uvicorn ``flags``, its stdout and stderr in a log file next to its data folder, which pytest
keeps with its other temporary folders); :meth:`Server.wait_ready` polls ``/readyz`` (or
``/healthz``) until it answers 200, and a server that exits or stays unready fails the test
with the tail of its log; :meth:`Server.stop` sends SIGTERM, SIGKILL after a timeout, then
SIGKILL to any process of its tree that outlived it (uvicorn's ``--workers``, the job
workers), found by their process group (each process starts a session of its own), so even
after the server was killed or crashed its orphans are. :func:`serve` does all three around a
``with`` block, for fixtures.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

UNSET = ("DATABASE_URL", "LRS_DATABASE_URL", "LRS_URL", "LRS_API_KEY")
"""Variables of the caller's shell that would point a test server at another store (or its
clients at another service); removed from the server's environment unless ``env`` sets them."""


def free_port() -> int:
    """Return a loopback port nothing listened on a moment ago (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def uvicorn_flags() -> list[str]:
    """Return the Makefile's UVICORN_FLAGS, to run a server as `make serve` runs it."""
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("UVICORN_FLAGS :="):
            return line.split(":=", 1)[1].split()
    raise AssertionError("the Makefile sets no UVICORN_FLAGS")


class ServerNotReady(RuntimeError):
    """The server exited, or did not answer 200, before its deadline (the message ends with
    the tail of its log)."""


def _start_time(pid: int) -> str | None:
    """Return the process's start time (field 22 of /proc/PID/stat), or None once it has
    exited (gone, or a zombie): with the pid it names one process, whatever reuses the pid."""
    fields = _stat(pid)
    return None if not fields or fields[0] in ("Z", "X") else fields[19]


def _stat(pid: int) -> list[str] | None:
    """Return the fields of /proc/PID/stat after the command's name (the state first), or
    None once it has exited."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _group(pgid: int) -> list[tuple[int, str]]:
    """Return (pid, start time) of every living process in the process group ``pgid``,
    whoever its parent is now (an orphan's is init)."""
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            found.append((int(entry.name), fields[19]))
    return found


def _descendants(pid: int) -> list[tuple[int, str]]:
    """Return (pid, start time) of every living descendant of ``pid``."""
    found: list[tuple[int, str]] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                for child in (task / "children").read_text().split():
                    started = _start_time(int(child))
                    if started:
                        found.append((int(child), started))
                        todo.append(int(child))
    return found


class Process:
    """A child process (run in the repository's root) whose stdout and stderr go to ``log``.

    It leads a session (and process group) of its own, which its children join: whatever it
    started is found by the group, even once it is gone."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], log: Path):
        self.name = name
        self.log = log
        self.env = dict(env)
        with log.open("ab") as handle:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = _start_time(self.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        """Return what the process wrote to stdout and stderr so far."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the log, headed by the process's name and log."""
        text = self.log_text().splitlines()[-lines:]
        return f"--- {self.name}: last {len(text)} lines of {self.log} ---\n" + "\n".join(text)

    def kill(self) -> None:
        """SIGKILL it (not its children), as a crash or an OOM kill would."""
        if self.alive():
            self.process.kill()
        self.process.wait()

    def family(self) -> set[tuple[int, str]]:
        """Return (pid, start time) of the living processes of its group but itself: its
        descendants, orphaned or not."""
        leader = _start_time(self.pid)
        if leader is not None and leader != self.started:
            return set()  # the pid is another's: the group, and what was in it, are gone
        return {(pid, t) for pid, t in _group(self.pid) if pid != self.pid}

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds; then
        SIGKILL any process of its tree still running a few seconds later (a killed uvicorn
        or Celery leaves its workers; one killed before, see :meth:`kill`, left them already).
        Idempotent."""
        # with the descendants that left the group, if any (none here do)
        family = self.family() | set(_descendants(self.pid) if self.alive() else [])
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()
        deadline = time.monotonic() + 5
        killed = False
        while left := {(pid, t) for pid, t in family if _start_time(pid) == t} | self.family():
            if time.monotonic() > deadline:
                if killed:
                    raise AssertionError(f"processes of {self.name} outlived SIGKILL: {left}")
                for pid, _ in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                killed, deadline = True, time.monotonic() + 5
            time.sleep(0.05)

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Server(Process):
    """A uvicorn process serving ``service.main:app`` at ``url``."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        port: int,
        data_dir: Path,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = data_dir
        super().__init__(f"uvicorn {self.url}", command, env, log)

    def rss_bytes(self) -> int:
        """Return the server process's resident memory."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def wait_ready(
        self, path: str = "/readyz", timeout: float = 180, every: float = 0.2
    ) -> "Server":
        """Poll ``path`` until it answers 200; return the server. If the server exits first,
        or ``timeout`` seconds pass (a loaded 2-core machine takes tens of seconds to import
        torch and warm up), stop it and raise :class:`ServerNotReady` with its log's tail."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise ServerNotReady(
                    f"{self.name} exited with status {code} before {path} "
                    f"answered 200\n{self.tail()}"
                )
            try:
                response = httpx.get(f"{self.url}{path}", timeout=2)
                if response.status_code == 200:
                    return self
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                self.stop()
                raise ServerNotReady(
                    f"{self.url}{path} did not answer 200 within {timeout:g} s "
                    f"(last: {last})\n{self.tail()}"
                )
            time.sleep(every)


def start_server(
    data_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    flags: Sequence[str] = (),
    port: int | None = None,
    log: Path | None = None,
    log_level: str = "warning",
    unset: Sequence[str] = UNSET,
    server_class: type[Server] = Server,
) -> Server:
    """Start uvicorn on 127.0.0.1 (``port``, or a free one) with its data in ``data_dir``
    and ``env`` over this process's environment (less ``unset``); ``flags`` come after
    ``--log-level`` (a later flag wins). Its output is appended to ``log`` (by default
    ``<data_dir>.uvicorn-<port>.log`` beside the data folder). Does not wait for it."""
    port = port or free_port()
    data_dir = Path(data_dir)
    log = log or data_dir.with_name(f"{data_dir.name}.uvicorn-{port}.log")
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    full_env.update(env or {})
    full_env["LRS_DATA_DIR"] = str(data_dir)
    command = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", log_level, *flags]  # fmt: skip
    return server_class(command, full_env, log, port, data_dir)


@contextlib.contextmanager
def serve(
    data_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    ready_path: str = "/readyz",
    ready_timeout: float = 180,
    **options,
) -> Iterator[Server]:
    """Start a server (:func:`start_server`'s arguments), wait until it is ready, yield it,
    and stop it when the block ends."""
    server = start_server(data_dir, env, **options)
    try:
        yield server.wait_ready(ready_path, ready_timeout)
    finally:
        server.stop()
