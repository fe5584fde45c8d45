"""Who runs a job: the lease a worker process holds on it in the store.

A worker that claims a job writes its :func:`identity` (``lease_owner``) and a lease expiry,
and renews the expiry every ``LRS_JOB_HEARTBEAT_S`` while the job runs (:class:`Heartbeat`).
Any process may then take the job away (mark it ``interrupted``, or requeue it when its spec
asked for retries) once the lease has expired: nobody heard from its worker for
``LRS_JOB_LEASE_S``. Expiry is compared with the database's own clock, so the hosts' clocks do
not need to agree.

One shortcut, for a worker that died on this very machine: the identity names the host, its
boot, the PID namespace, the PID and the process's start time, so a process on the same host
can see at once that the owner no longer exists (:func:`owner_state`) instead of waiting for
the lease to run out. A restarted ``make serve`` therefore reports the job it was running as
``interrupted`` at start-up, as it did before leases. Conversely a live owner on this machine
keeps its job even when a heartbeat came late (a worker at ``nice 19`` on a busy machine can
be starved for seconds). For any other owner (another host, another container) only the
expiry counts.
"""

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("service.jobs")

SEP = "/"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "noboot"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        return "nons"


def _start_time(pid: int) -> str | None:
    """Return the process's start time (clock ticks since boot), or None when it does not
    exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited, waiting for its parent to reap it
        return None
    return fields[19]  # field 22 of proc(5), counted after "pid (comm)"


@functools.cache
def _machine() -> tuple[str, str, str]:
    return socket.gethostname(), _boot_id(), _pid_namespace()


def identity(pid: int | None = None) -> str:
    """Return the lease owner's identity of process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    host, boot, ns = _machine()
    return SEP.join((host, boot, ns, str(pid), _start_time(pid) or "?"))


def owner_state(owner: str | None) -> str:
    """Return ``"gone"`` when ``owner`` names a process of this machine that no longer
    exists, ``"alive"`` when it names one that does, else ``"unknown"`` (another host,
    container or boot: only the lease's expiry tells)."""
    if not owner:
        return "unknown"
    parts = owner.rsplit(SEP, 4)
    if len(parts) != 5 or tuple(parts[:3]) != _machine() or not parts[3].isdigit():
        return "unknown"
    if not Path("/proc/self/stat").exists():
        return "unknown"  # no /proc: cannot tell
    return "alive" if _start_time(int(parts[3])) == parts[4] else "gone"


def owner_gone(owner: str | None) -> bool:
    """Return True when ``owner`` names a process of this machine that no longer exists."""
    return owner_state(owner) == "gone"


class Heartbeat:
    """A daemon thread renewing a running job's lease every ``every_s`` seconds.

    ``renew()`` returns False once the job is no longer this run's (then :attr:`lost` is set
    and the thread stops). Renewals stop at ``until`` (a ``time.monotonic()`` deadline, the
    job's wall-time limit plus a grace), so a worker wedged inside torch cannot keep a job
    forever: its lease runs out and another process takes the job away.
    """

    def __init__(self, renew: Callable[[], bool], every_s: float, until: float) -> None:
        self._renew = renew
        self._every_s = every_s
        self._until = until
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            if time.monotonic() > self._until:
                log.warning("job heartbeat stopped: the run is past its wall-time limit")
                return
            try:
                if not self._renew():
                    self.lost.set()
                    return
            except Exception:  # the store is unreachable: try again next beat
                log.warning("job heartbeat failed; retrying", exc_info=True)
