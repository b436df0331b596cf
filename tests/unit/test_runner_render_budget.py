"""A render is bounded while it happens: what it writes (RUNNER_MAX_RENDER_BYTES) and what its
expressions do. The pathological templates of a review — a thousand copies of a 1 MB body, a
join of a thousand references to a 1 MB string — stop with RenderTooLarge before they are built
(measured: tracemalloc's peak stays a few megabytes where the render would be a gigabyte)."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from services.runner.expressions import MAX_STEPS, Budget, LargeRender
from services.runner.template import (
    MAX_RENDER_BYTES,
    RenderError,
    RenderTooLarge,
    compile_headers,
    compile_template,
)

MB = 1_000_000
BIG = {
    "body": {"s": "x" * MB, "n": list(range(1000)), "lead": {"email": "ada@example.test"}},
    "headers": {},
    "query": {},
    "received_at": "2024-05-01T12:00:00+00:00",
}


def refs(expression: str, count: int) -> str:
    return "[" + ", ".join([expression] * count) + "]"


def peak_of(call: Callable[[], Any]) -> tuple[BaseException | None, int, float]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        call()
        raised = None
    except BaseException as error:  # noqa: BLE001 - returned to the test
        raised = error
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return raised, peak, time.perf_counter() - started


@pytest.mark.parametrize(
    "template",
    [
        ["{{ body }}"] * 1000,  # 1 GB as JSON: the review's first finding
        "{{ join('', " + refs("body.s", 400) + ") }}",  # 400 MB in one string
        "lead: {{ body }} " * 500,  # text placeholders: each would be json.dumps'd
        "{{ to_string(" + refs("body", 400) + ") }}",
        "{{ " + refs("reverse(body.s)", 200) + " }}",  # 200 copies held in one array
        {"a": "{{ " + refs("body", 300) + " }}"},
        {f"k{i}": "{{ body.s }}" for i in range(1000)},
        # Ten references to ten references…: 10⁸ copies of the body once written out.
        "{{ [@,@,@,@,@,@,@,@,@,@]" + "[*].[@,@,@,@,@,@,@,@,@,@]" * 7 + " }}",
        "{{ to_string([@,@,@,@,@,@,@,@,@,@]" + "[*].[@,@,@,@,@,@,@,@,@,@]" * 7 + ") }}",
    ],
    ids=[
        "copies",
        "join",
        "text",
        "to_string",
        "reverse",
        "array",
        "object",
        "projections",
        "projections-to_string",
    ],  # fmt: skip
)
def test_a_render_past_the_limit_stops_before_it_is_built(template: Any) -> None:
    compiled = compile_template(template)
    raised, peak, seconds = peak_of(lambda: compiled.encode(BIG))
    assert isinstance(raised, RenderTooLarge), raised
    assert isinstance(raised, RenderError)  # what the worker fails a run with, never retried
    assert f"larger than {MAX_RENDER_BYTES} bytes" in str(raised) or "build more than" in str(
        raised
    )
    assert peak < 8 * MB, peak
    assert seconds < 2, seconds


@pytest.mark.parametrize(
    "expression",
    [
        "length(map(&map(&map(&[@, @, @], "
        + refs("@", 100)
        + "), "
        + refs("@", 100)
        + "), "
        + refs("@", 100)
        + "))",
        "length(body.n[*]." + refs("@", 100) + " | [] | [*]." + refs("@", 100) + " | [])",
        "length(sort_by(body.n[*]."
        + refs("@", 100)
        + " | [] | [*]."
        + refs("@", 20)
        + " | [], &@))",
    ],  # fmt: skip
    ids=["map", "flatten", "sort_by"],
)
def test_the_work_of_expressions_is_bounded(expression: str) -> None:
    compiled = compile_template("{{ " + expression + " }}")
    started = time.perf_counter()
    with pytest.raises(RenderTooLarge, match=f"more than {MAX_STEPS} steps"):
        compiled.encode({"body": {"n": list(range(1000))}})
    # A million steps of the interpreter: about half a second here; each case would otherwise
    # build 10⁶ to 10⁸ elements.
    assert time.perf_counter() - started < 5


def test_the_limit_is_the_encoded_size_exactly() -> None:
    compiled = compile_template({"a": "{{ body.text }}"})
    fits = {"body": {"text": "x" * (2000 - len('{"a":""}'))}}
    assert len(compiled.encode(fits, Budget(2000))) == 2000
    with pytest.raises(RenderTooLarge):
        compiled.encode({"body": {"text": "x" * 2000}}, Budget(2000))
    # Counted in characters while rendering, but the body's bytes are what is limited:
    # json.dumps writes é as \u00e9, six bytes.
    with pytest.raises(RenderTooLarge, match="larger than 2000 bytes"):
        compiled.encode({"body": {"text": "é" * 1000}}, Budget(2000))


def test_headers_count_against_the_same_budget() -> None:
    headers = compile_headers({"X-Lead": "{{ body.s }}"})
    with pytest.raises(RenderTooLarge) as caught:
        headers.render(BIG, Budget(64 * 1024))
    assert caught.value.path == "headers"


def test_a_large_render_within_the_limit_leaves_the_inline_budget_for_a_thread() -> None:
    compiled = compile_template({"s": "{{ body.s }}"})
    with pytest.raises(LargeRender):
        compiled.encode(BIG, Budget(2 * MB, inline=True))
    assert len(compiled.encode(BIG, Budget(2 * MB))) == MB + len('{"s":""}')


def test_an_ordinary_render_stays_inline() -> None:
    compiled = compile_template(
        {"email": "{{ body.lead.email }}", "first": "{{ body.n[0] }}", "note": "from {{ query }}"}
    )
    assert compiled.render(BIG, Budget(MAX_RENDER_BYTES, inline=True)) == {
        "email": "ada@example.test",
        "first": 0,
        "note": "from {}",
    }


def test_a_type_error_names_the_types_never_the_value() -> None:
    compiled = compile_template("{{ join(', ', body.lead) }}")
    with pytest.raises(RenderError) as caught:
        compiled.render(BIG)
    assert "join() expects array-string, not object" in str(caught.value)
    assert "ada@example.test" not in str(caught.value)
