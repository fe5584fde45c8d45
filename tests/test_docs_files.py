"""docs/jobs.md says what the code does, and its commands run as pasted."""

import re
from pathlib import Path

from service.jobs import executor

JOBS = (Path(__file__).parent.parent / "docs" / "jobs.md").read_text()


def test_jobs_doc_names_only_files_in_the_repository():
    assert "../" not in JOBS


def test_jobs_doc_gives_the_workers_niceness_the_code_uses():
    assert f"nice +{executor.NICENESS}" in JOBS
    assert re.findall(r"nice \+(\d+)", JOBS) == [str(executor.NICENESS)]


def test_jobs_doc_commands_paste_as_they_are():
    assert "[...]" not in JOBS
    assert re.findall(r"(?<![/\w])python -c", JOBS) == []  # torch is only in .venv/bin/python


def test_jobs_doc_resumes_events_by_the_last_id_not_a_count():
    assert "Last-Event-ID: 4" not in JOBS
    assert "never a count of events" in JOBS
