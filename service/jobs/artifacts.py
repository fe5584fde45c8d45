"""Per-job artifact folders and the ``latest`` link, on the local file system.

``<data_dir>/runs/<job id>/model.pt`` (a ``state_dict`` that ``torch.load(weights_only=True)``
reads) and ``metrics.json``, written into a hidden staging folder and renamed into place as the
job's folder only once the store accepted the run's ``succeeded``, so a reader sees both files
or none, and a run that lost its job (to recovery) leaves nothing behind.
``<data_dir>/runs/latest`` is a relative symlink to the newest succeeded job's folder,
retargeted the way ``ln -snf`` is meant to be, but atomically: a new link under a temporary
name, renamed over the old one.

Deleting a job removes its own folder only: a symlink is unlinked, never followed (the seed's
``rm -rf link/`` trap deletes the *target's* contents). Both the delete and a run that
published after its job was deleted call :meth:`Artifacts.unpublish`, so whichever comes last
leaves ``latest`` at an existing succeeded job's folder, or no ``latest``.

Retention (:meth:`Artifacts.retain`) removes the oldest folders first, by the time their files
were written, and never the one ``latest`` points at, so ``latest`` always names a folder.
"""

import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ARTIFACTS = ("model.pt", "metrics.json")
"""The files a succeeded job leaves, by name."""

LATEST = "latest"


class Artifacts:
    """The runs folder of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.runs = data_dir / "runs"

    def folder(self, job_id: str) -> Path:
        """Return the job's folder (it may not exist)."""
        return self.runs / job_id

    def path(self, job_id: str, name: str) -> Path | None:
        """Return the artifact's path when it is one of ours and exists as a regular file."""
        if name not in ARTIFACTS:
            return None
        path = self.folder(job_id) / name
        return path if path.is_file() and not path.is_symlink() else None

    def sweep(self, active: Callable[[str], bool] = lambda _job_id: False) -> list[str]:
        """Remove what runs that died left half-done: hidden staging folders and link temps.

        Other processes may be running jobs on this folder (a shared volume): a staging folder
        of a job ``active(job_id)`` says is running is left (a link temp swept under a live
        run makes its :meth:`point_latest` try again). Returns the names removed.
        """
        if not self.runs.is_dir():
            return []
        removed = []
        for entry in self.runs.iterdir():
            if not entry.name.startswith("."):
                continue
            if not entry.name.startswith(f".{LATEST}.") and active(entry.name[1:].split(".", 1)[0]):
                continue
            if entry.is_symlink() or entry.is_file():
                entry.unlink(missing_ok=True)
            else:
                shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        return removed

    def retain(self, keep: int, max_bytes: int | None = None) -> list[str]:
        """Remove the oldest job folders until at most ``keep`` remain and they hold at most
        ``max_bytes`` (None: no byte budget); never the folder ``latest`` points at. Return
        the ids whose folders were removed, oldest first."""
        if not self.runs.is_dir():
            return []
        latest = self.latest()
        folders: list[tuple[int, str, int]] = []
        for entry in os.scandir(self.runs):
            if entry.name.startswith(".") or entry.name == LATEST:
                continue
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                size = sum(
                    f.stat(follow_symlinks=False).st_size
                    for f in os.scandir(entry.path)
                    if f.is_file(follow_symlinks=False)
                )
                folders.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name, size))
            except OSError:
                continue  # deleted while we looked
        folders.sort()
        count, total = len(folders), sum(size for _, _, size in folders)
        removed = []
        for _, job_id, size in folders:
            over_bytes = max_bytes is not None and total > max_bytes
            if count <= keep and not over_bytes:
                break
            if job_id == latest:
                continue
            self.delete(job_id)
            removed.append(job_id)
            count, total = count - 1, total - size
        return removed

    def stage(self, job_id: str, state_dict: dict[str, torch.Tensor], metrics: Any) -> Path:
        """Write ``model.pt`` and ``metrics.json`` into a hidden staging folder next to the
        job's; return that folder, for :meth:`publish` or :meth:`discard`."""
        self.runs.mkdir(parents=True, exist_ok=True)
        staged = self.runs / f".{job_id}.{secrets.token_hex(6)}.tmp"
        staged.mkdir()
        try:
            cpu_state = {k: v.detach().cpu() for k, v in state_dict.items()}
            _atomic(staged / "model.pt", lambda f: torch.save(cpu_state, f))
            text = json.dumps(metrics, allow_nan=False).encode()
            _atomic(staged / "metrics.json", lambda f: f.write(text))
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def publish(self, job_id: str, staged: Path) -> None:
        """Rename the staged folder into place as the job's folder (both files at once)."""
        staged.rename(self.folder(job_id))

    def discard(self, staged: Path) -> None:
        """Remove a staged folder that will not be published."""
        shutil.rmtree(staged)

    def point_latest(self, job_id: str | None) -> None:
        """Retarget ``runs/latest`` at the job's folder atomically; remove it for None."""
        link = self.runs / LATEST
        if job_id is None:
            if link.is_symlink():
                link.unlink()
            return
        self.runs.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            tmp = self.runs / f".{LATEST}.{secrets.token_hex(6)}"
            os.symlink(job_id, tmp, target_is_directory=True)
            try:
                os.replace(tmp, link)  # rename(2) over the old link: never a moment without one
                return
            except FileNotFoundError:  # another process's start-up swept our temp
                if attempt == 2:
                    raise

    def latest(self) -> str | None:
        """Return the job id ``latest`` points at, or None."""
        link = self.runs / LATEST
        return os.readlink(link) if link.is_symlink() else None

    def unpublish(self, job_id: str, newest: Callable[[], str | None]) -> None:
        """Remove the folder of a job the store no longer has and, when ``latest`` points at
        it, retarget ``latest`` at ``newest()`` (the store's newest succeeded job, read only
        then, after the job's removal)."""
        self.delete(job_id)
        if self.latest() == job_id:
            self.point_latest(newest())

    def delete(self, job_id: str) -> None:
        """Remove the job's folder and nothing outside it: links inside are unlinked, and a
        job "folder" that is itself a link is unlinked, not followed."""
        folder = self.folder(job_id)
        if folder.is_symlink() or folder.is_file():
            folder.unlink()
        elif folder.is_dir():
            shutil.rmtree(folder)  # rmtree unlinks symlinks; it never descends into them


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
