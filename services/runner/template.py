"""Body and header templates: JSON values whose strings hold ``{{ expression }}`` placeholders.

Each placeholder is a JMESPath expression evaluated over the incoming event
``{"body": …, "headers": {…}, "query": {…}, "received_at": "<iso>"}``. A string that is exactly
one placeholder becomes the value itself, JSON type kept (missing → ``None``); a string mixing
text and placeholders stays a string (strings as is, ``None`` → ``""``, anything else as
compact JSON). ``\\{{`` writes a literal ``{{``; any other backslash is literal. Dict keys are
never templated.

Everything is parsed once by ``compile_template``/``compile_headers`` into a tree of closures;
rendering never parses. This module must never evaluate anything but JMESPath (no eval, no
format strings) and never let a rendered header value carry CR, LF or NUL.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jmespath
from jmespath import exceptions as jp_errors
from jmespath.functions import Functions
from jmespath.visitor import Options, TreeInterpreter

MAX_DEPTH = 32  # nested objects/arrays
MAX_BYTES = 64 * 1024  # serialized as JSON (UTF-8)
MAX_PLACEHOLDERS = 1000

Event = Mapping[str, Any]
Render = Callable[[Event], Any]

# One interpreter for every placeholder: ParsedResult.search() would build one per call.
_INTERPRETER = TreeInterpreter(Options())
_FUNCTIONS = Functions.FUNCTION_TABLE
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 7230 token
_FORBIDDEN_IN_HEADER = re.compile(r"[\r\n\0]")
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
    """A placeholder whose expression failed on this event (e.g. join() over a non-array)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class Template:
    """A compiled body template; ``render(event)`` builds a fresh JSON value."""

    __slots__ = ("_render", "placeholders")

    def __init__(self, render: Render, placeholders: int) -> None:
        self._render = render
        self.placeholders = placeholders

    def render(self, event: Event) -> Any:
        return self._render(event)


class HeaderTemplate:
    """Compiled header templates; ``render(event)`` gives ``{name: value}``, all strings."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, Render]]) -> None:
        self._items = items

    def render(self, event: Event) -> dict[str, str]:
        return {name: _clean_header(render(event)) for name, render in self._items}


def compile_template(value: Any, *, field: str = "body_template") -> Template:
    _check_size(value, field)
    compiler = _Compiler()
    render = compiler.value(value, field)
    return Template(render, compiler.count)


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
            return lambda event: {key: render(event) for key, render in items}
        if isinstance(value, list | tuple):
            renders = [self.value(item, f"{path}[{i}]") for i, item in enumerate(value)]
            return lambda event: [render(event) for render in renders]
        return lambda event: value  # None, bool, int, float: immutable

    def string(self, text: str, path: str) -> Render:
        """Exactly one placeholder keeps the value's type; anything else renders as text."""
        parts = self._parts(text, path)
        if len(parts) == 1 and not isinstance(parts[0], str):
            return parts[0]
        return _join(parts)

    def text(self, text: str, path: str) -> Render:
        return _join(self._parts(text, path))

    def _parts(self, text: str, path: str) -> list[str | Render]:
        """Split ``text`` into literal strings (unescaped) and compiled placeholders."""
        if "{{" not in text:
            return [text]
        parts: list[str | Render] = []
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
                jmespath.compile(text[start + 2 : naive])
            except jp_errors.JMESPathError as error:
                return _syntax_error(error, text[start + 2 : naive], path, start + 2)
        return TemplateError(path, start, "unclosed '{{' (no matching '}}')")

    def _placeholder(self, expression: str, path: str, start: int, offset: int) -> Render:
        self.count += 1
        if self.count > MAX_PLACEHOLDERS:
            raise TemplateError(path, start, f"more than {MAX_PLACEHOLDERS} placeholders")
        if not expression.strip():
            raise TemplateError(path, start, "empty expression")
        try:
            parsed = jmespath.compile(expression).parsed
        except jp_errors.JMESPathError as error:
            raise _syntax_error(error, expression, path, offset) from None
        _check_functions(parsed, expression, path, offset)
        visit = _INTERPRETER.visit
        where = f"{path}: {{{{{expression}}}}}"

        def render(event: Event) -> Any:
            try:
                return visit(parsed, event)
            except jp_errors.JMESPathError as error:
                raise RenderError(where, str(error)) from None

        return render


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


def _syntax_error(error: Exception, expression: str, path: str, offset: int) -> TemplateError:
    position = getattr(error, "lex_position", None)
    if isinstance(error, jp_errors.IncompleteExpressionError):
        message = "incomplete expression"
        position = len(expression)
    elif isinstance(error, jp_errors.LexerError):
        message = error.message
    else:
        message = getattr(error, "msg", None) or str(error)
    message = message[:1].lower() + message[1:]
    return TemplateError(path, offset + (position or 0), message)


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
    spec = _FUNCTIONS.get(name)
    if spec is None:
        raise TemplateError(path, position, f"unknown function {name}()")
    signature = spec["signature"]
    variadic = bool(signature) and signature[-1].get("variadic")
    if given < len(signature) if variadic else given != len(signature):
        need = f"at least {len(signature)}" if variadic else str(len(signature))
        raise TemplateError(path, position, f"{name}() takes {need} arguments, {given} given")


def _check_size(value: Any, path: str) -> None:
    _check_json(value, path, 0)
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
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


def _join(parts: list[str | Render]) -> Render:
    if all(isinstance(part, str) for part in parts):
        literal = "".join(parts)  # type: ignore[arg-type]
        return lambda event: literal
    renders = [_constant(p) if isinstance(p, str) else _as_text(p) for p in parts]
    return lambda event: "".join([render(event) for render in renders])


def _constant(text: str) -> Render:
    return lambda event: text


def _as_text(render: Render) -> Render:
    def text(event: Event) -> str:
        value = render(event)
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    return text


def _clean_header(value: str) -> str:
    """Data from the incoming lead must not split a header: CR, LF, NUL become spaces."""
    return _FORBIDDEN_IN_HEADER.sub(" ", value) if _FORBIDDEN_IN_HEADER.search(value) else value
