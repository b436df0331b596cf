"""The processes' log: one JSON object a line, on standard error, without the libraries' chatter."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from services.kit.logs import setup_logging


@pytest.fixture
def restored() -> Iterator[None]:
    root, scheduler = logging.getLogger(), logging.getLogger("apscheduler")
    handlers, level, scheduler_level = root.handlers[:], root.level, scheduler.level
    yield
    root.handlers[:], root.level = handlers, level
    scheduler.setLevel(scheduler_level)


def test_a_line_is_one_json_object_and_the_schedulers_job_chatter_is_left_out(
    restored, capsys: pytest.CaptureFixture[str]
):
    setup_logging("runner", "info")
    logging.getLogger("leadmesh.runner").info("scheduled run queued", extra={"run_id": "r-1"})
    scheduler = logging.getLogger("apscheduler.executors.default")
    scheduler.info('Running job "Schedule.discover"')
    scheduler.warning('Run time of job "Schedule.discover" was missed by 0:00:05')
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["service"], e["level"], e["event"]) for e in lines] == [
        ("runner", "info", "scheduled run queued"),
        ("runner", "warning", 'Run time of job "Schedule.discover" was missed by 0:00:05'),
    ]
    assert lines[0]["run_id"] == "r-1"


def test_debug_lets_the_scheduler_speak_too(restored, capsys: pytest.CaptureFixture[str]):
    setup_logging("retention", "DEBUG")
    logging.getLogger("apscheduler.scheduler").debug("Looking for jobs to run")
    assert "Looking for jobs to run" in capsys.readouterr().err
