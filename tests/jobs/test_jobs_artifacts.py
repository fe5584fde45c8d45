"""Artifacts on disk: atomic files, the ``latest`` link, and deletes that never follow links."""

import os
import subprocess

import torch

from service.jobs.artifacts import Artifacts


def _job(artifacts: Artifacts, job_id: str) -> None:
    artifacts.publish(job_id, artifacts.stage(job_id, {"w": torch.ones(2)}, {"id": job_id}))


def test_files_are_written_whole_and_load_with_weights_only(tmp_path):
    artifacts = Artifacts(tmp_path)
    _job(artifacts, "a")
    folder = artifacts.folder("a")
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "model.pt"]
    assert torch.equal(torch.load(folder / "model.pt", weights_only=True)["w"], torch.ones(2))
    assert artifacts.path("a", "model.pt") == folder / "model.pt"
    assert artifacts.path("a", "../a/model.pt") is None


def test_latest_is_retargeted_by_renaming_a_new_link_over_it(tmp_path):
    artifacts = Artifacts(tmp_path)
    _job(artifacts, "a")
    _job(artifacts, "b")
    artifacts.point_latest("a")
    link = artifacts.runs / "latest"
    before = os.lstat(link).st_ino
    artifacts.point_latest("b")
    assert os.readlink(link) == "b" and (link / "model.pt").is_file()
    assert os.lstat(link).st_ino != before  # a new link, not an edited one
    assert sorted(p.name for p in artifacts.runs.iterdir()) == ["a", "b", "latest"]
    artifacts.point_latest(None)
    assert not link.exists() and not link.is_symlink()


def test_the_seeds_rm_rf_link_slash_trap_is_real(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    (tmp_path / "link").symlink_to(target)
    subprocess.run(["rm", "-rf", "link/"], cwd=tmp_path, check=True)
    # The trailing slash made rm delete what the link points at, and left the link.
    assert (tmp_path / "link").is_symlink() and not (target / "keep.txt").exists()


def test_deleting_a_job_never_follows_a_link_into_another_jobs_files(tmp_path):
    artifacts = Artifacts(tmp_path)
    _job(artifacts, "victim")
    _job(artifacts, "doomed")
    # Links inside the deleted job's folder and a job "folder" that is itself a link.
    (artifacts.folder("doomed") / "link").symlink_to(artifacts.folder("victim"))
    (artifacts.folder("doomed") / "file_link").symlink_to(artifacts.folder("victim") / "model.pt")
    os.symlink("victim", artifacts.runs / "aliased")
    artifacts.point_latest("victim")

    artifacts.delete("doomed")
    artifacts.delete("aliased")
    artifacts.delete("latest")

    assert not artifacts.folder("doomed").exists()
    assert not (artifacts.runs / "aliased").is_symlink()
    victim = artifacts.folder("victim")
    assert sorted(p.name for p in victim.iterdir()) == ["metrics.json", "model.pt"]
    assert torch.load(victim / "model.pt", weights_only=True)["w"].sum() == 2


def test_start_up_sweeps_what_dead_runs_left_and_keeps_the_rest(tmp_path):
    artifacts = Artifacts(tmp_path)
    kept = artifacts.stage("kept", {"w": torch.zeros(1)}, {"ok": True})
    artifacts.publish("kept", kept)
    artifacts.point_latest("kept")
    artifacts.stage("dead", {"w": torch.zeros(1)}, {"ok": True})  # never published
    (artifacts.runs / ".latest.abc123").symlink_to("kept")  # a link temp never renamed
    removed = artifacts.sweep()
    assert len(removed) == 2 and all(name.startswith(".") for name in removed)
    assert sorted(p.name for p in artifacts.runs.iterdir()) == ["kept", "latest"]
    assert (artifacts.runs / "latest" / "model.pt").is_file()
