"""The erasure certificate: the subject only by its pseudonymous reference."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from services.retention.erasure import CERTIFICATE, certificate
from services.retention.subjects import subject_ref

USER = "3f0c7d0e-1111-4222-8333-944455556666"


def _case() -> dict:
    when = datetime(2026, 6, 1, tzinfo=UTC)
    steps = [
        {
            "participant": name,
            "state": "done",
            "tries": 1,
            "done_time": when.isoformat(),
            "error": "",
            "categories": [
                {"category": "c", "rows_erased": 2, "rows_kept": 1, "kept_reason": "law"}
            ],
        }
        for name in ("vault", "retention", CERTIFICATE, "identity")
    ]
    return {
        "id": "case-1",
        "user_id": USER,
        "subject_ref": subject_ref(b"k", USER),
        "request_time": when,
        "deadline": when + timedelta(days=60),
        "execute_after": when + timedelta(days=14),
        "end_time": when + timedelta(days=15),
        "steps": steps,
    }


def test_the_certificate_names_the_subject_only_by_reference():
    text = certificate(_case(), ["vault", "retention", CERTIFICATE, "identity"], completed=True)
    document = json.loads(text)
    assert USER not in text
    assert document["subject_ref"] == subject_ref(b"k", USER) != subject_ref(b"other", USER)
    assert document["format_version"] == 1
    assert [p["participant"] for p in document["participants"]] == [
        "vault",
        "retention",
        "identity",
    ]
    assert document["participants"][0]["categories"][0]["kept_reason"] == "law"
    assert document["completion_time"].startswith("2026-06-16")


def test_the_mailed_certificate_has_no_completion_time():
    text = certificate(_case(), ["vault", "retention", CERTIFICATE, "identity"], completed=False)
    assert json.loads(text)["completion_time"] is None


def test_the_subject_key_is_generated_once_and_private(tmp_path):
    from services.retention.subjects import KEY_FILE, load_subject_key

    first = load_subject_key(None, tmp_path / "retention")
    assert load_subject_key(None, tmp_path / "retention") == first and len(first) == 32
    assert (tmp_path / "retention" / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert load_subject_key("configured", tmp_path / "elsewhere") == b"configured"
    assert not (tmp_path / "elsewhere").exists()
