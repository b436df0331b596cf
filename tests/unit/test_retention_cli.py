"""`leadmesh retention`: TIME as ISO 8601 or relative to now, and bad input as one line, exit 2
(before anything is dialled)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from cli.retention import BadInput, parse_time

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2027-01-05T00:00:00Z", datetime(2027, 1, 5, tzinfo=UTC)),
        ("2027-01-05T01:00:00+01:00", datetime(2027, 1, 5, tzinfo=UTC)),
        ("+8d", NOW + timedelta(days=8)),
        ("-12h", NOW - timedelta(hours=12)),
        ("+30m", NOW + timedelta(minutes=30)),
        ("+90s", NOW + timedelta(seconds=90)),
    ],
)
def test_times(text: str, expected: datetime):
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["tomorrow", "+8", "8d", "+8w", "2027-01-05T00:00:00", ""])
def test_bad_times(text: str):
    with pytest.raises(BadInput):
        parse_time(text, NOW)


@pytest.mark.parametrize(
    "args",
    [
        ["retention", "run", "--as-of", "soon"],
        ["retention", "erasures", "process", "--as-of", "+3x"],
        ["retention", "status", "--bogus"],
        ["retention"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], tmp_path):
    env = dict(os.environ, LEADMESH_VAR_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""
