"""Body and header templates: JMESPath placeholders, JSON types kept, errors located exactly."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.runner.template import (
    MAX_DEPTH,
    MAX_PLACEHOLDERS,
    RenderError,
    TemplateError,
    compile_headers,
    compile_template,
)

EVENT: dict[str, Any] = {
    "body": {
        "name": "Ada Lovelace",
        "age": 36,
        "price": 9.5,
        "vip": True,
        "nothing": None,
        "address": {"city": "London", "zip": "W1"},
        "tags": ["math", "poetry"],
        "emails": ["ada@example.test", "a@example.test"],
        "note": "héllo",
    },
    "headers": {"x-source": "landing-page", "user-agent": "curl/8"},
    "query": {"campaign": "spring"},
    "received_at": "2024-05-01T12:00:00+00:00",
}


def render(template: Any) -> Any:
    return compile_template(template).render(EVENT)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ body.age }}", 36),
        ("{{body.price}}", 9.5),
        ("{{ body.vip }}", True),
        ("{{ body.address }}", {"city": "London", "zip": "W1"}),
        ("{{ body.tags }}", ["math", "poetry"]),
        ("{{ body.nothing }}", None),
        ("{{ body.name }}", "Ada Lovelace"),
        ("{{   body.age   }}", 36),
    ],
)
def test_a_lone_placeholder_keeps_the_json_type(template: str, expected: Any) -> None:
    assert render(template) == expected
    assert type(render(template)) is type(expected)


def test_a_missing_field_is_null_alone_and_empty_in_text() -> None:
    assert render("{{ body.missing.deeper }}") is None
    assert render("x={{ body.missing }};") == "x=;"
    assert render("x={{ body.nothing }};") == "x=;"


def test_mixed_text_renders_compact_json_and_raw_strings() -> None:
    assert render("Hi {{ body.name }}, {{ body.age }} {{ body.vip }} {{ body.price }}") == (
        "Hi Ada Lovelace, 36 true 9.5"
    )
    assert render("{{ body.address }}|{{ body.tags }}") == (
        '{"city":"London","zip":"W1"}|["math","poetry"]'
    )
    assert render("{{ body.note }} {{ body.address.city }}") == "héllo London"
    assert render(" {{ body.age }}") == " 36"  # outside the braces: text


def test_nested_templates_render_every_level() -> None:
    template = {
        "lead": {
            "full_name": "{{ body.name }}",
            "contact": {"emails": ["{{ body.emails[0] }}", "fixed@example.test"]},
            "age": "{{ body.age }}",
            "static": [1, 2.5, False, None, "plain"],
        },
        "{{ not a key placeholder }}": "kept",
    }
    assert render(template) == {
        "lead": {
            "full_name": "Ada Lovelace",
            "contact": {"emails": ["ada@example.test", "fixed@example.test"]},
            "age": 36,
            "static": [1, 2.5, False, None, "plain"],
        },
        "{{ not a key placeholder }}": "kept",
    }


def test_each_render_builds_fresh_containers() -> None:
    template = compile_template({"a": [1, {"b": 2}]})
    first = template.render(EVENT)
    first["a"][1]["b"] = 99
    assert template.render(EVENT) == {"a": [1, {"b": 2}]}


def test_headers_query_and_received_at_are_reachable() -> None:
    assert render('{{ headers."x-source" }}') == "landing-page"
    assert render("{{ query.campaign }}") == "spring"
    assert render("at {{ received_at }}") == "at 2024-05-01T12:00:00+00:00"


def test_jmespath_functions_and_projections() -> None:
    assert render("{{ join(', ', body.tags) }}") == "math, poetry"
    assert render("{{ to_string(body.age) }}") == "36"
    assert render("{{ length(body.emails) }}") == 2
    assert render("{{ {city: body.address.city, first: body.tags[0]} }}") == {
        "city": "London",
        "first": "math",
    }
    assert render("{{ body.missing || 'n/a' }}") == "n/a"
    assert render('{{ `{"literal": 1}` }}') == {"literal": 1}


def test_escaped_braces_stay_literal() -> None:
    assert render(r"\{{ body.name }}") == "{{ body.name }}"
    assert render(r"{{ body.age }} \{{ x }}") == "36 {{ x }}"
    assert render(r"a\b}}") == r"a\b}}"


def test_a_type_error_in_a_function_is_a_render_error_naming_the_place() -> None:
    template = compile_template({"lead": {"tags": "{{ join(',', body.age) }}"}})
    with pytest.raises(RenderError) as caught:
        template.render(EVENT)
    assert caught.value.path.startswith("body_template.lead.tags")


@pytest.mark.parametrize(
    ("template", "path", "position", "message"),
    [
        ({"lead": {"email": "mail: {{ body. }}"}}, "body_template.lead.email", 15, "expecting"),
        ({"lead": {"emails": ["a", "b", "x {{ a & b }}"]}}, "body_template.lead.emails[2]", 7, ""),
        ("abc {{ body.name", "body_template", 4, "unclosed"),
        ("ok {{ body.age }} then {{  }}", "body_template", 23, "empty expression"),
        ("{{ body.tags[ }}", "body_template", 14, "incomplete expression"),
        ({"a": "{{ 'unclosed }}"}, "body_template.a", 3, "unclosed ' delimiter"),
        ({"a": ["{{ a.$b }}"]}, "body_template.a[0]", 5, "unknown token"),
        ({"a": "-- {{ nope(body) }}"}, "body_template.a", 6, "unknown function nope()"),
        ({"a": "{{ join(body.tags) }}"}, "body_template.a", 3, "join() takes 2 arguments"),
    ],
)
def test_errors_name_the_path_and_the_exact_position(
    template: Any, path: str, position: int, message: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(template)
    error = caught.value
    assert (error.path, error.position) == (path, position)
    assert message in error.message
    assert str(error).startswith(f"{path}: position {position}: ")
    assert isinstance(error, ValueError)


def test_the_field_name_prefixes_every_path() -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template({"x": "{{ a..b }}"}, field="query_template")
    assert caught.value.path == "query_template.x"


def test_nesting_is_limited() -> None:
    def nested(levels: int, leaf: Any) -> Any:
        for _ in range(levels):
            leaf = [leaf]
        return leaf

    deepest = compile_template(nested(MAX_DEPTH, "{{ body.age }}"))
    assert deepest.render(EVENT) == nested(MAX_DEPTH, 36)
    with pytest.raises(TemplateError) as caught:
        compile_template(nested(MAX_DEPTH + 1, "x"))
    assert "deeper than 32" in caught.value.message
    assert caught.value.position is None
    assert caught.value.path == "body_template" + "[0]" * MAX_DEPTH


def test_size_is_limited_to_64_kib_of_json() -> None:
    compile_template({"a": "x" * (64 * 1024 - 100)})
    with pytest.raises(TemplateError) as caught:
        compile_template({"a": "x" * (64 * 1024)})
    assert "larger than 65536 bytes" in str(caught.value)


def test_placeholders_are_limited() -> None:
    compile_template(["{{ body.age }}"] * MAX_PLACEHOLDERS)
    with pytest.raises(TemplateError) as caught:
        compile_template(["{{ body.age }}"] * MAX_PLACEHOLDERS + ["x {{ body.age }}"])
    assert caught.value.path == f"body_template[{MAX_PLACEHOLDERS}]"
    assert caught.value.position == 2


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1: "a"}, {"a": {1, 2}}, b"raw"])
def test_only_json_values_are_templates(value: Any) -> None:
    with pytest.raises(TemplateError):
        compile_template(value)


def test_headers_render_as_strings() -> None:
    headers = compile_headers(
        {
            "Authorization": "Bearer {{ query.campaign }}",
            "X-Age": "{{ body.age }}",
            "X-Missing": "{{ body.missing }}",
            "X-Static": "static",
        }
    )
    assert headers.render(EVENT) == {
        "Authorization": "Bearer spring",
        "X-Age": "36",
        "X-Missing": "",
        "X-Static": "static",
    }


def test_rendered_header_values_cannot_split_headers() -> None:
    headers = compile_headers({"X-Name": "{{ body.name }}"})
    event = {"body": {"name": "Ada\r\nSet-Cookie: x=1\0"}}
    assert headers.render(event) == {"X-Name": "Ada  Set-Cookie: x=1 "}


@pytest.mark.parametrize(
    ("headers", "path", "position"),
    [
        ({"X Name": "a"}, "headers.X Name", None),
        ({"X-Name:": "a"}, "headers.X-Name:", None),
        ({"": "a"}, "headers.", None),
        ({"X-A": "ok", "x-a": "dup"}, "headers.x-a", None),
        ({"X-Name": "line\r\nInjected: 1"}, "headers.X-Name", 4),
        ({"X-Name": "nul\0"}, "headers.X-Name", 3),
        ({"X-Name": "Bearer {{ query. }}"}, "headers.X-Name", 17),
    ],
)
def test_header_errors(headers: dict[str, str], path: str, position: int | None) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_headers(headers)
    assert (caught.value.path, caught.value.position) == (path, position)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text().filter(lambda s: "{{" not in s)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_a_value_without_placeholders_renders_to_itself(value: Any) -> None:
    rendered = compile_template(value).render(EVENT)
    assert json.dumps(rendered, sort_keys=True) == json.dumps(value, sort_keys=True)


# --- odd input: the compiler's own error, nothing else ---


@pytest.mark.parametrize(
    ("expression", "position", "message"),
    [
        ("(" * 600 + "a" + ")" * 600, 3 + 64, "nested deeper than 64 levels"),
        ("[" * 100 + "]" * 100, 3 + 64, "nested deeper than 64 levels"),
        ("!" * 3000 + "a", 2, "nested too deeply"),  # the whole expression: from its start
        ("`" + "[" * 2000 + "]" * 2000 + "`", 2, "nested too deeply"),
        ("a || " * 100 + "a", 2, "nested deeper than 64 levels"),
        ("a" * 5000, 2, "at most 4096 characters"),
    ],
    ids=["parentheses", "brackets", "nots", "literal", "or-chain", "length"],
)
def test_expressions_too_deep_or_long_are_template_errors(expression, position, message) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template({"x": "{{ " + expression + " }}"})
    assert (caught.value.path, caught.value.position) == ("body_template.x", position)
    assert message in caught.value.message


JMESPATH_CHARACTERS = st.sampled_from(
    list("()[]{}.,:|&!*@?-=<>'\"`\\ ") + ["a", "b", "0", "1", "body", "join", "é", "\ud800", "\x00"]
)
expressions = st.lists(JMESPATH_CHARACTERS, max_size=60).map("".join)
texts = st.lists(expressions | st.just("{{") | st.just("}}"), max_size=6).map("".join)


@given(st.lists(texts, max_size=4))
def test_the_compiler_only_ever_raises_template_errors(parts: list[str]) -> None:
    for template in (" ".join(parts), {"a": parts}, "{{ " + " ".join(parts) + " }}"):
        try:
            compiled = compile_template(template)
        except TemplateError:
            continue
        try:
            compiled.encode(EVENT)
        except RenderError:
            pass
    try:
        compile_headers({"X-A": " ".join(parts)}).render(EVENT)
    except (TemplateError, RenderError):
        pass


@given(st.text(max_size=80))
def test_any_text_in_a_placeholder_compiles_or_is_a_template_error(text: str) -> None:
    try:
        compile_template("{{" + text + "}}").encode(EVENT)
    except (TemplateError, RenderError):
        pass


def _grammar() -> st.SearchStrategy[str]:
    """Expressions that parse, as JMESPath's grammar builds them, over the fields of EVENT."""
    fields = st.sampled_from(["body", "body.tags", "body.age", "body.name", "headers", "@"])
    literals = st.sampled_from(["`1e999`", "`-1`", "`[]`", "`{}`", "'x'", "`null`", "`0`"])
    names = st.sampled_from(sorted(_FUNCTION_NAMES))

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        pair = st.tuples(inner, inner)
        return st.one_of(
            st.builds(
                lambda n, args: f"{n}({', '.join(args)})", names, st.lists(inner, max_size=3)
            ),
            pair.map(lambda p: f"{p[0]} || {p[1]}"),
            pair.map(lambda p: f"{p[0]} < {p[1]}"),
            pair.map(lambda p: f"[{p[0]}, {p[1]}]"),
            pair.map(lambda p: f"{{a: {p[0]}, b: {p[1]}}}"),
            pair.map(lambda p: f"{p[0]}[?{p[1]}]"),
            inner.map(lambda e: f"{e}[*]"),
            inner.map(lambda e: f"{e}[]"),
            inner.map(lambda e: f"{e}[::-1]"),
            inner.map(lambda e: f"&{e}"),
            inner.map(lambda e: f"!{e}"),
        )

    return st.recursive(fields | literals, extend, max_leaves=8)


_FUNCTION_NAMES = frozenset(
    ["abs", "avg", "ceil", "contains", "ends_with", "floor", "join", "keys", "length", "map"]
    + ["max", "max_by", "merge", "min", "min_by", "not_null", "reverse", "sort", "sort_by"]
    + ["starts_with", "sum", "to_array", "to_number", "to_string", "type", "values"]
)


@given(_grammar())
def test_any_expression_renders_or_is_a_render_error(expression: str) -> None:
    for template in ("{{ " + expression + " }}", "x {{ " + expression + " }}"):
        try:
            compiled = compile_template(template)
        except TemplateError:  # wrong argument counts
            continue
        try:
            compiled.encode(EVENT)
            compile_headers({"X-A": template}).render(EVENT)
        except RenderError:
            pass
