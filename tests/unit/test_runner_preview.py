"""The connection editor's preview: built by the delivery's code, never resolving a credential,
its template errors located by line and column."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.kit.clock import SettableClock
from services.kit.errors import InvalidArgument
from services.runner.guard import EgressPolicy
from services.runner.preview import Preview, check_body_template, line_and_column
from services.runner.rendering import Renderer

URL = "https://api.example.com/leads"


def _action(**fields: Any) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "url": URL, "headers": {}, **fields}


@pytest.fixture
def preview():
    renderer = Renderer(1024 * 1024, "test-preview")
    yield Preview(EgressPolicy(), SettableClock(), renderer)
    renderer.close()


def _show(preview: Preview, action: dict[str, Any], event: Any = None, kind: str = ""):
    return asyncio.run(preview.request(action, event, kind))


@pytest.mark.parametrize(
    ("text", "position", "expected"),
    [("abc", 0, (1, 1)), ("abc", 2, (1, 3)), ("a\nbc", 2, (2, 1)), ("a\nb\ncd", 5, (3, 2))],
)
def test_line_and_column_count_from_one_as_editors_do(text, position, expected):
    assert line_and_column(text, position) == expected


def test_a_template_error_is_on_the_body_template_field_with_its_line_and_column():
    with pytest.raises(InvalidArgument) as raised:
        check_body_template({"a": [{"b": "x\n  {{ body.( }}"}]})
    assert raised.value.field == "action.body_template"
    assert raised.value.message.startswith("a[0].b: ")
    assert raised.value.message.endswith("at line 2, column 11")


def test_an_error_with_no_position_says_what_is_wrong_alone():
    deep: Any = "x"
    for _ in range(40):
        deep = [deep]
    with pytest.raises(InvalidArgument) as raised:
        check_body_template(deep)
    assert raised.value.field == "action.body_template"
    assert "line" not in raised.value.message


def test_the_request_is_rendered_and_an_oauth_token_shows_redacted(preview):
    action = _action(
        headers={"X-Source": "{{ headers.source }}"}, body_template={"to": "{{ body.email }}"}
    )
    event = {"body": {"email": "ada@example.com"}, "headers": {"source": "form"}}
    shown = _show(preview, action, event, "oauth2")
    assert shown["body"] == '{"to":"ada@example.com"}'
    assert shown["headers"]["X-Source"] == "form"
    assert shown["headers"]["Authorization"] == "[redacted]"
    assert shown["headers"]["Idempotency-Key"] == "[the run's id]"


def test_an_event_left_out_is_a_manual_runs_and_a_wrong_one_is_refused(preview):
    shown = _show(preview, _action(body_template="{{ received_at }}"))
    assert shown["body"].startswith('"') and "T" in shown["body"]
    for event, field in (
        ([], "event"),
        ({"leads": 1}, "event.leads"),
        ({"query": 3}, "event.query"),
    ):
        with pytest.raises(InvalidArgument) as raised:
            _show(preview, _action(), event)
        assert raised.value.field == field


def test_a_placeholder_failing_on_the_event_names_where(preview):
    with pytest.raises(InvalidArgument) as raised:
        _show(preview, _action(headers={"X-A": "{{ join(',', body) }}"}), {"body": 3})
    assert (raised.value.reason, raised.value.field) == ("RENDER_FAILED", "action.headers.X-A")


def test_an_unknown_credential_kind_is_refused(preview):
    with pytest.raises(InvalidArgument) as raised:
        _show(preview, _action(), None, "password_of_the_day")
    assert raised.value.reason == "INVALID_CREDENTIAL_KIND"
