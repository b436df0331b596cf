"""Body and header templates: JSON values whose strings hold ``{{ expression }}`` placeholders.

Each placeholder is a JMESPath expression evaluated over the incoming event
``{"body": …, "headers": {…}, "query": {…}, "received_at": "<iso>"}``. A string that is exactly
one placeholder becomes the value itself, JSON type kept (missing → ``None``); a string mixing
text and placeholders stays a string (strings as is, ``None`` → ``""``, anything else as
compact JSON). ``\\{{`` writes a literal ``{{``; any other backslash is literal. Dict keys are
never templated.

Everything is parsed once by ``compile_template``/``compile_headers`` into a tree of closures;
rendering never parses. Each render runs under a ``Budget`` (``services.runner.expressions``):
what it writes and what its expressions do are counted as they happen, so a render past the
runner's ``RUNNER_MAX_RENDER_BYTES`` stops with ``RenderTooLarge`` before it is built. This module
must never evaluate anything but JMESPath (no eval, no format strings) and never let a rendered
header value carry CR, LF, NUL or a lone surrogate.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from services.runner.expressions import (
    FUNCTIONS,
    Budget,
    ExpressionInvalid,
    LargeRender,
    TooLarge,
    failure,
    json_size,
    parse,
)

MAX_DEPTH = 32  # nested objects/arrays
MAX_BYTES = 64 * 1024  # serialized as JSON (UTF-8)
MAX_PLACEHOLDERS = 1000
MAX_RENDER_BYTES = 1024 * 1024  # RUNNER_MAX_RENDER_BYTES's default

Event = Mapping[str, Any]
Render = Callable[[Event, Budget], Any]
Placeholder = tuple[Render, str]  # its render, and where it is ("path: {{expression}}")

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 7230 token
_FORBIDDEN_IN_HEADER = re.compile(r"[\r\n\0]")
_UNSENDABLE_IN_HEADER = re.compile(r"[\r\n\0\ud800-\udfff]")  # surrogates cannot be encoded
_QUOTES = {"'": "'", '"': '"', "`": "`"}


class TemplateError(ValueError):
    """A template that cannot be saved: where (path, character position) and why."""

    def __init__(self, path: str, position: int | None, message: str) -> None:
        self.path = path
        self.position = position
        self.message = message
        where = path if position is None else f"{path}: position {position}"
        super().__init__(f"{where}: {message}")


class RenderError(ValueError):
    """A placeholder whose expression failed on this event (e.g. join() over a non-array).
    Deterministic: the same event fails the same way, so a run never retries it."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class RenderTooLarge(RenderError):
    """A render past its budget (``RUNNER_MAX_RENDER_BYTES``, or the steps its expressions may
    take): refused as the run's error, never retried."""


class Template:
    """A compiled body template; ``render(event)`` builds a fresh JSON value."""

    __slots__ = ("_render", "placeholders", "_field")

    def __init__(self, render: Render, placeholders: int, field: str) -> None:
        self._render = render
        self.placeholders = placeholders
        self._field = field

    def render(self, event: Event, budget: Budget | None = None) -> Any:
        """RenderError, RenderTooLarge; LargeRender when an inline ``budget`` runs out."""
        try:
            return self._render(event, budget or Budget(MAX_RENDER_BYTES))
        except TooLarge as error:
            raise RenderTooLarge(self._field, str(error)) from None

    def encode(self, event: Event, budget: Budget | None = None) -> bytes:
        """The rendered value as a request's JSON body: at most the budget's bytes, exactly."""
        budget = budget or Budget(MAX_RENDER_BYTES)
        value = self.render(event, budget)
        try:
            content = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        except (ValueError, TypeError) as error:
            raise RenderError(self._field, _not_json(error)) from None
        if len(content) > budget.max_bytes:  # the budget counted characters, before escapes
            raise RenderTooLarge(
                self._field, f"the rendered request is larger than {budget.max_bytes} bytes"
            )
        return content


class HeaderTemplate:
    """Compiled header templates; ``render(event)`` gives ``{name: value}``, all strings."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, Render]]) -> None:
        self._items = items

    def render(self, event: Event, budget: Budget | None = None) -> dict[str, str]:
        budget = budget or Budget(MAX_RENDER_BYTES)
        try:
            return {name: _clean_header(render(event, budget)) for name, render in self._items}
        except TooLarge as error:
            raise RenderTooLarge("headers", str(error)) from None


def compile_template(value: Any, *, field: str = "body_template") -> Template:
    _check_size(value, field)
    compiler = _Compiler()
    render = compiler.value(value, field)
    return Template(render, compiler.count, field)


def compile_headers(headers: Mapping[str, str]) -> HeaderTemplate:
    compiler = _Compiler()
    seen: set[str] = set()
    items: list[tuple[str, Render]] = []
    for name, value in headers.items():
        path = f"headers.{name}"
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise TemplateError(path, None, "a header name must be an RFC 7230 token")
        if name.lower() in seen:
            raise TemplateError(path, None, "duplicate header name (names ignore case)")
        seen.add(name.lower())
        if not isinstance(value, str):
            raise TemplateError(path, None, "a header value must be a string")
        bad = _FORBIDDEN_IN_HEADER.search(value)
        if bad:
            raise TemplateError(path, bad.start(), "CR, LF and NUL are not allowed in headers")
        items.append((name, compiler.text(value, path)))
    _check_size(dict(headers), "headers")
    return HeaderTemplate(items)


# --- compilation ---


class _Compiler:
    def __init__(self) -> None:
        self.count = 0

    def value(self, value: Any, path: str) -> Render:
        """Compile a JSON value already checked by _check_size (types, depth)."""
        if isinstance(value, str):
            return self.string(value, path)
        if isinstance(value, dict):
            items = [(key, self.value(item, f"{path}.{key}")) for key, item in value.items()]
            frame = json_size({key: None for key in value}, MAX_BYTES) - 4 * len(value)

            def render_object(event: Event, budget: Budget) -> dict[str, Any]:
                budget.write(frame)
                return {key: render(event, budget) for key, render in items}

            return render_object
        if isinstance(value, list | tuple):
            renders = [self.value(item, f"{path}[{i}]") for i, item in enumerate(value)]
            frame = 1 + len(renders)

            def render_array(event: Event, budget: Budget) -> list[Any]:
                budget.write(frame)
                return [render(event, budget) for render in renders]

            return render_array
        return _constant(value, len(json.dumps(value)))  # None, bool, int, float: immutable

    def string(self, text: str, path: str) -> Render:
        """Exactly one placeholder keeps the value's type; anything else renders as text."""
        parts = self._parts(text, path)
        if len(parts) == 1 and isinstance(parts[0], tuple):
            return _as_value(parts[0][0])
        return _join(parts, quotes=2)

    def text(self, text: str, path: str) -> Render:
        return _join(self._parts(text, path), quotes=0)

    def _parts(self, text: str, path: str) -> list[str | Placeholder]:
        """Split ``text`` into literal strings (unescaped) and compiled placeholders."""
        if "{{" not in text:
            return [text]
        parts: list[str | Placeholder] = []
        literal = ""
        i = 0
        while (j := text.find("{{", i)) >= 0:
            if j > 0 and text[j - 1] == "\\":  # \{{ is a literal {{
                literal += text[i : j - 1] + "{{"
                i = j + 2
                continue
            end = _closing(text, j + 2)
            if end < 0:
                raise self._unclosed(text, path, j)
            literal += text[i:j]
            if literal:
                parts.append(literal)
            literal = ""
            parts.append(self._placeholder(text[j + 2 : end], path, j, j + 2))
            i = end + 2
        literal += text[i:]
        if literal or not parts:
            parts.append(literal)
        return parts

    @staticmethod
    def _unclosed(text: str, path: str, start: int) -> TemplateError:
        """A ``}}`` hidden by an unclosed quote: report the quote (jmespath's error)."""
        naive = text.find("}}", start + 2)
        if naive >= 0:
            try:
                parse(text[start + 2 : naive])
            except ExpressionInvalid as error:
                return TemplateError(path, start + 2 + error.position, error.message)
        return TemplateError(path, start, "unclosed '{{' (no matching '}}')")

    def _placeholder(self, expression: str, path: str, start: int, offset: int) -> Placeholder:
        self.count += 1
        if self.count > MAX_PLACEHOLDERS:
            raise TemplateError(path, start, f"more than {MAX_PLACEHOLDERS} placeholders")
        if not expression.strip():
            raise TemplateError(path, start, "empty expression")
        try:
            parsed = parse(expression)
        except ExpressionInvalid as error:
            raise TemplateError(path, offset + error.position, error.message) from None
        _check_functions(parsed, expression, path, offset)
        where = f"{path}: {{{{{expression}}}}}"

        def render(event: Event, budget: Budget) -> Any:
            try:
                return budget.evaluate(parsed, event)
            except (TooLarge, LargeRender):
                raise
            except Exception as error:  # noqa: BLE001 - any failure over this event is the run's
                raise RenderError(where, failure(error)) from None

        return render, where


def _closing(text: str, i: int) -> int:
    """Index of the ``}}`` closing a placeholder whose expression starts at ``i``, or -1.

    Braces of JMESPath multiselect hashes (``{a: {b: c}}``) and quoted text are skipped.
    """
    depth = 0
    n = len(text)
    while i < n:
        char = text[i]
        if char in _QUOTES:
            i += 1
            while i < n and text[i] != char:
                i += 2 if text[i] == "\\" else 1
        elif char == "{":
            depth += 1
        elif char == "}":
            if depth == 0 and text.startswith("}}", i):
                return i
            depth -= 1
        i += 1
    return -1


def _check_functions(node: dict[str, Any], expression: str, path: str, offset: int) -> None:
    """Unknown functions and wrong argument counts fail at save time, not at each render."""
    for child in node.get("children", ()):
        if isinstance(child, dict):
            _check_functions(child, expression, path, offset)
    if node.get("type") != "function_expression":
        return
    name, given = node["value"], len(node["children"])
    found = re.search(rf"\b{re.escape(name)}\s*\(", expression)
    position = offset + (found.start() if found else 0)
    spec = FUNCTIONS.get(name)
    if spec is None:
        raise TemplateError(path, position, f"unknown function {name}()")
    signature = spec["signature"]
    variadic = bool(signature) and signature[-1].get("variadic")
    if given < len(signature) if variadic else given != len(signature):
        need = f"at least {len(signature)}" if variadic else str(len(signature))
        raise TemplateError(path, position, f"{name}() takes {need} arguments, {given} given")


def _check_size(value: Any, path: str) -> None:
    _check_json(value, path, 0)
    try:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    except UnicodeEncodeError:
        raise TemplateError(path, None, "not valid Unicode (a lone surrogate)") from None
    except ValueError:  # an integer past Python's int-to-text digit limit
        raise TemplateError(path, None, "a number too long to write") from None
    if size > MAX_BYTES:
        raise TemplateError(path, None, f"larger than {MAX_BYTES} bytes as JSON ({size})")


def _check_json(value: Any, path: str, depth: int) -> None:
    """JSON types only, nesting bounded (checked before json.dumps can recurse too deep)."""
    if isinstance(value, dict):
        _check_depth(path, depth)
        for key, item in value.items():
            if not isinstance(key, str):
                raise TemplateError(path, None, "object keys must be strings")
            _check_json(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list | tuple):
        _check_depth(path, depth)
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise TemplateError(path, None, "NaN and infinity are not JSON")
    elif value is not None and not isinstance(value, str | bool | int | float):
        raise TemplateError(path, None, f"{type(value).__name__} is not a JSON value")


def _check_depth(path: str, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise TemplateError(path, None, f"nested deeper than {MAX_DEPTH} levels")


# --- rendering helpers ---


def _join(parts: list[str | Placeholder], quotes: int) -> Render:
    if all(isinstance(part, str) for part in parts):
        literal = "".join(parts)  # type: ignore[arg-type]
        return _constant(literal, len(literal) + quotes)
    renders = [_constant(p, len(p)) if isinstance(p, str) else _as_text(*p) for p in parts]

    def render_text(event: Event, budget: Budget) -> str:
        budget.write(quotes)
        return "".join([render(event, budget) for render in renders])

    return render_text


def _constant(value: Any, size: int) -> Render:
    def render_constant(event: Event, budget: Budget) -> Any:
        budget.write(size)
        return value

    return render_constant


def _as_value(render: Render) -> Render:
    """A lone placeholder: its value is written whole (counted up to what the budget allows)."""

    def value(event: Event, budget: Budget) -> Any:
        found = render(event, budget)
        budget.write(json_size(found, budget.room))
        return found

    return value


def _as_text(render: Render, where: str) -> Render:
    def text(event: Event, budget: Budget) -> str:
        value = render(event, budget)
        if isinstance(value, str):
            budget.write(len(value))
            return value
        if value is None:
            return ""
        estimate = json_size(value, budget.room)
        budget.write(estimate)  # before json.dumps builds it
        try:
            written = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (ValueError, TypeError) as error:
            raise RenderError(where, _not_json(error)) from None
        budget.write(len(written) - estimate)
        return written

    return text


def _not_json(error: Exception) -> str:
    if isinstance(error, TypeError):  # `&expression` evaluates to a reference, not a value
        return "an expression reference (&…) is not a JSON value"
    return "NaN and infinity are not JSON"


def _clean_header(value: str) -> str:
    """Data from the incoming lead must not split a header: CR, LF, NUL become spaces (and a
    lone surrogate, which no encoding can send, U+FFFD)."""
    if not _UNSENDABLE_IN_HEADER.search(value):
        return value
    return _UNSENDABLE_IN_HEADER.sub(lambda m: " " if m.group() in "\r\n\0" else "\ufffd", value)
