"""The JMESPath expressions of templates: parsed within bounds, evaluated under a budget.

A template is saved by its owner but evaluated over events a third party sends: a few hundred
characters of JMESPath can build gigabytes (``join('', [body.s, body.s, …])`` over a 1 MB
string, projections nested over projections). Parsing refuses what would exhaust the parser's
stack or the interpreter's (length and nesting bounded); evaluation counts its work as it goes
(``Budget``: every node visited and every element a function or a flatten builds is a step,
every string a function builds is counted before it is built), so nothing larger than the budget
is ever materialised.

This module must never evaluate anything but JMESPath, and never put a value of the event into
an error message (a lead's personal data; the value may also be huge).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jmespath
from jmespath import exceptions as jp_errors
from jmespath.functions import Functions, signature
from jmespath.visitor import Options, TreeInterpreter

MAX_EXPRESSION_CHARS = 4096
MAX_EXPRESSION_DEPTH = 64  # brackets, and the parsed tree (the interpreter recurses over it)
MAX_STEPS = 1_000_000  # per render, every placeholder together
# What a render may do on the event loop before it must move to a thread (``LargeRender``).
INLINE_BYTES = 64 * 1024
INLINE_STEPS = 20_000
# On a thread, a render gives the GIL away this often (steps: about a millisecond) for this long:
# the event loop's thread, waiting for the GIL, then takes it. Waiting for the interpreter's
# switch interval instead held the loop up to a second on a loaded machine (measured).
PAUSE_EVERY = 2_000
PAUSE_SECONDS = 0.0002

Node = dict[str, Any]
_OPENING = {"(": ")", "[": "]", "{": "}"}
_QUOTES = frozenset("'\"`")


class ExpressionInvalid(Exception):
    """An expression that cannot be saved; ``position`` is relative to its first character."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(message)
        self.position = position
        self.message = message


class EvaluationFailed(Exception):
    """An expression that failed over this event (a type error, an overflow)."""


class TooLarge(Exception):
    """The render went past its budget of bytes or steps: the same event always will."""


class LargeRender(Exception):
    """An inline budget ran out: this render is large enough to be done off the event loop."""


# --- parsing ---


def parse(expression: str) -> Node:
    """The parsed tree of ``expression``; ExpressionInvalid for anything jmespath refuses, and
    for what it would accept at a cost (too long, too deep)."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ExpressionInvalid(0, f"an expression has at most {MAX_EXPRESSION_CHARS} characters")
    _check_nesting(expression)
    try:
        node = jmespath.compile(expression).parsed
    except jp_errors.JMESPathError as error:
        raise _invalid(error, expression) from None
    except RecursionError:  # what the bracket count cannot see, e.g. "!!!!…a"
        raise ExpressionInvalid(0, "the expression is nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as error:  # the lexer's int() and json.loads
        raise ExpressionInvalid(0, f"not a valid expression ({type(error).__name__})") from None
    _check_tree(node)
    return node


def _check_nesting(expression: str) -> None:
    """Brackets nested past MAX_EXPRESSION_DEPTH, found before the recursive parser sees them."""
    depth = 0
    i, n = 0, len(expression)
    while i < n:
        char = expression[i]
        if char in _QUOTES:
            i += 1
            while i < n and expression[i] != char:
                i += 2 if expression[i] == "\\" else 1
        elif char in _OPENING:
            depth += 1
            if depth > MAX_EXPRESSION_DEPTH:
                raise ExpressionInvalid(i, f"nested deeper than {MAX_EXPRESSION_DEPTH} levels")
        elif char in ")]}":
            depth = max(depth - 1, 0)
        i += 1


def _check_tree(root: Node) -> None:
    """The tree's depth (chains like ``a.b.c…`` and ``a || b || …`` nest without brackets) and
    its literals' depth, walked without recursion."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EXPRESSION_DEPTH:
            raise ExpressionInvalid(0, f"nested deeper than {MAX_EXPRESSION_DEPTH} levels")
        if isinstance(node, dict) and "type" in node:
            if node["type"] == "literal":
                stack.append((node["value"], depth + 1))
            stack.extend((child, depth + 1) for child in node.get("children", ()))
        elif isinstance(node, dict):  # a literal's JSON object
            stack.extend((item, depth + 1) for item in node.values())
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)


def _invalid(error: Exception, expression: str) -> ExpressionInvalid:
    position = getattr(error, "lex_position", None)
    if isinstance(error, jp_errors.IncompleteExpressionError):
        message = "incomplete expression"
        position = len(expression)
    elif isinstance(error, jp_errors.LexerError):
        message = error.message
    else:
        message = getattr(error, "msg", None) or str(error)
    message = message[:1].lower() + message[1:]
    if not isinstance(position, int) or not 0 <= position <= len(expression):
        position = 0
    return ExpressionInvalid(position, message)


# --- evaluation ---


class Budget:
    """What one render may still produce (characters of JSON) and do (steps). Characters are a
    lower bound of the bytes json.dumps writes (escapes only add), so the caller checks the exact
    size of what it finally encodes; this bound keeps everything before that small. An inline
    budget gives up early (``LargeRender``) so that the caller can start again on a thread; a
    pausing one (on that thread) lets the event loop run every ``PAUSE_EVERY`` steps."""

    __slots__ = ("max_bytes", "max_steps", "written", "built", "steps", "checkpoint", "_limits",
                 "_inline", "_pause", "_visit")  # fmt: skip

    def __init__(
        self,
        max_bytes: int,
        max_steps: int = MAX_STEPS,
        *,
        inline: bool = False,
        pause: bool = False,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_steps = max_steps
        self.written = 0  # characters of the rendered output
        self.built = 0  # characters of strings the expressions built (join, to_string, …)
        self.steps = 0
        self._inline = inline
        self._limits = (
            (min(INLINE_BYTES, max_bytes), min(INLINE_STEPS, max_steps))
            if inline
            else (max_bytes, max_steps)
        )
        self._pause = pause and not inline
        self.checkpoint = min(PAUSE_EVERY, self._limits[1]) if self._pause else self._limits[1]
        self._visit: Callable[[Node, Any], Any] | None = None

    @property
    def room(self) -> int:
        """Characters the output may still have before the budget runs out."""
        return self._limits[0] - self.written

    def write(self, size: int) -> None:
        self.written += size
        if self.written > self._limits[0]:
            self._exhausted(f"the rendered request is larger than {self.max_bytes} bytes")

    def build(self, size: int) -> None:
        self.built += size
        if self.built > self._limits[0]:
            self._exhausted(f"the expressions build more than {self.max_bytes} bytes of text")

    def step(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > self.checkpoint:
            self.reached()

    def reached(self) -> None:
        """At the checkpoint: past the limit, or time to let the event loop run."""
        if self.steps > self._limits[1]:
            self._exhausted(f"the expressions take more than {self.max_steps} steps")
        time.sleep(PAUSE_SECONDS)
        self.checkpoint = min(self.steps + PAUSE_EVERY, self._limits[1])

    def evaluate(self, node: Node, value: Any) -> Any:
        """``node`` over ``value``, charged to this budget (one interpreter per render)."""
        if self._visit is None:
            self._visit = _Interpreter(self).visit
        return self._visit(node, value)

    def _exhausted(self, message: str) -> None:
        if self._inline:
            raise LargeRender(message)
        raise TooLarge(message)


def json_size(value: Any, limit: int) -> int:
    """A lower bound of ``len(json.dumps(value))``, counted only until it passes ``limit``
    (a value may be a thousand references to one large body: it is never walked whole)."""
    size = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item) + 2
        elif isinstance(item, dict):
            size += 1 + 2 * len(item)  # braces, colons, commas
            for key, child in item.items():
                size += len(key) + 2
                stack.append(child)
        elif isinstance(item, list | tuple):
            size += 1 + len(item)
            stack.extend(item)
        else:
            size += 4 if item is None or isinstance(item, bool) else 1
        if size > limit:
            break
    return size


class _Functions(Functions):
    """jmespath's functions, with the ones that build strings or arrays charged first."""

    def __init__(self, budget: Budget) -> None:
        self._budget = budget

    def call_function(self, function_name: str, resolved_args: list[Any]) -> Any:
        result = super().call_function(function_name, resolved_args)
        if isinstance(result, list | dict) and function_name not in ("not_null", "to_array"):
            self._budget.step(len(result))  # sort, reverse, keys, values, merge, map…
        return result

    @signature({"types": ["string"]}, {"types": ["array-string"]})
    def _func_join(self, separator: str, array: list[str]) -> str:
        self._budget.step(len(array))
        self._budget.build(sum(map(len, array)) + len(separator) * max(len(array) - 1, 0))
        return separator.join(array)

    @signature({"types": []})
    def _func_to_string(self, arg: Any) -> str:
        if isinstance(arg, str):
            return arg
        self._budget.build(json_size(arg, self._budget.max_bytes))
        return super()._func_to_string(arg)

    @signature({"types": ["array", "string"]})
    def _func_reverse(self, arg: Any) -> Any:
        if isinstance(arg, str):
            self._budget.build(len(arg))
        return super()._func_reverse(arg)

    @signature({"types": ["array", "string"]}, {"types": []})
    def _func_contains(self, subject: Any, search: Any) -> bool:
        self._budget.step(len(subject) // 16 if isinstance(subject, str) else len(subject))
        if isinstance(subject, str) and not isinstance(search, str):
            return False  # `5 in "abc"` is a TypeError in Python; a miss in JMESPath
        return search in subject


FUNCTIONS: dict[str, dict[str, Any]] = _Functions.FUNCTION_TABLE  # name → function, signature


class _Interpreter(TreeInterpreter):
    def __init__(self, budget: Budget) -> None:
        super().__init__(Options(custom_functions=_Functions(budget)))
        self._budget = budget

    def visit(self, node: Node, value: Any) -> Any:
        budget = self._budget
        budget.steps += 1  # inline: this runs for every node of every evaluation
        if budget.steps > budget.checkpoint:
            budget.reached()
        method = self._method_cache.get(node["type"])
        if method is None:
            method = self._method_cache[node["type"]] = getattr(
                self, f"visit_{node['type']}", self.default_visit
            )
        return method(node, value)

    def visit_flatten(self, node: Node, value: Any) -> Any:
        merged = super().visit_flatten(node, value)
        if merged:
            self._budget.step(len(merged))
        return merged

    def visit_slice(self, node: Node, value: Any) -> Any:
        if isinstance(value, list) and node["children"][2] == 0:
            raise EvaluationFailed("a slice step cannot be 0")
        sliced = super().visit_slice(node, value)
        if sliced:
            self._budget.step(len(sliced))
        return sliced


def failure(error: Exception) -> str:
    """What went wrong, without the value it went wrong on (jmespath's type errors print it)."""
    if isinstance(error, jp_errors.JMESPathTypeError):
        expected = ", ".join(error.expected_types)
        return (
            f"{error.function_name}() expects {expected}, not {error.actual_type} "
            "(the value is not shown)"
        )
    if isinstance(error, EvaluationFailed | jp_errors.JMESPathError):
        return str(error)
    return f"{type(error).__name__} while evaluating"
