"""The connection editor's live preview: the request a delivery of an action would send for a
sample event, built by the delivery's own code (`check_action`, `Templates`' compilation,
`delivery.prepare` on the `Renderer`), so what the owner sees is what the API will get.

It must never resolve a credential or open a connection: the credential's kind alone (the gateway
asked the vault for it) says where a secret would go, and there the preview says "[redacted]".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from services.kit.clock import Clock
from services.kit.errors import InvalidArgument
from services.runner.connections import check_action
from services.runner.delivery import REDACTED, Compiled
from services.runner.guard import EgressPolicy
from services.runner.rendering import Renderer
from services.runner.template import (
    RenderError,
    TemplateError,
    compile_headers,
    compile_template,
)

# What the Idempotency-Key header carries: the run's id, which a preview has none of.
RUN_ID = "[the run's id]"
EVENT_FIELDS = ("body", "headers", "query", "received_at")
# Secrets standing in for a resolved credential: delivery.prepare puts them where the real ones
# go and records them redacted. An API key's header or query parameter is named inside its
# secret, which stays in the vault: a preview shows no API key.
_STAND_INS: dict[str, dict[str, Any] | None] = {
    "": None,
    "oauth2": {"access_token": REDACTED},
    "login": {"username": REDACTED, "password": REDACTED},
    "api_key": None,
}


class Preview:
    def __init__(self, policy: EgressPolicy, clock: Clock, renderer: Renderer) -> None:
        self.policy = policy
        self.clock = clock
        self.renderer = renderer

    async def request(
        self, action: dict[str, Any], event: Any, credential_kind: str
    ) -> dict[str, Any]:
        """The request as it would be recorded (method, url, headers, body). InvalidArgument
        naming the field: the action's, the event's, or a placeholder failing on the event."""
        if credential_kind not in _STAND_INS:
            raise InvalidArgument(
                "INVALID_CREDENTIAL_KIND", "kinds are: api_key, login, oauth2", field="credential"
            )
        check_body_template(action.get("body_template"))
        checked = check_action(action, self.policy)
        sample = self._event(event)
        compiled = Compiled(
            compile_headers(checked["headers"]),
            compile_template(checked["body_template"]),
            checked["body_template"] is not None,
        )
        stand_in = _STAND_INS[credential_kind]
        credential = None if stand_in is None else (credential_kind, stand_in)
        try:
            prepared = await self.renderer.prepare(checked, compiled, sample, RUN_ID, credential)
        except RenderError as error:
            raise InvalidArgument("RENDER_FAILED", str(error), field=_render_field(error)) from None
        return prepared.recorded

    def _event(self, event: Any) -> dict[str, Any]:
        """The sample as the event a delivery reads: what is missing is what a manual run has."""
        if event is None:
            event = {}
        if not isinstance(event, dict):
            raise InvalidArgument(
                "INVALID_EVENT", "an event is an object: body, headers, query, received_at",
                field="event",
            )  # fmt: skip
        unknown = sorted(set(event) - set(EVENT_FIELDS))
        if unknown:
            raise InvalidArgument(
                "INVALID_EVENT",
                "an event has only body, headers, query and received_at",
                field=f"event.{unknown[0]}",
            )
        for name in ("headers", "query"):
            if not isinstance(event.get(name, {}), dict):
                raise InvalidArgument(
                    "INVALID_EVENT", f"{name} is an object", field=f"event.{name}"
                )
        return {
            "body": event.get("body"),
            "headers": event.get("headers", {}),
            "query": event.get("query", {}),
            "received_at": event.get("received_at", self.clock.now().isoformat()),
        }


def check_body_template(template: Any) -> None:
    """A body template that cannot be compiled: INVALID_TEMPLATE on the field
    `action.body_template`, saying what is wrong and where, by line and column of the string
    that holds it (after the path inside the template when it is nested)."""
    try:
        compile_template(template, field="body_template")
    except TemplateError as error:
        raise InvalidArgument(
            "INVALID_TEMPLATE", located(error, template), field="action.body_template"
        ) from None


def located(error: TemplateError, template: Any) -> str:
    inside = error.path.removeprefix("body_template").removeprefix(".")
    message = f"{inside}: {error.message}" if inside else error.message
    text = dict(_strings(template, "body_template")).get(error.path)
    if error.position is None or text is None:
        return message
    line, column = line_and_column(text, error.position)
    return f"{message} at line {line}, column {column}"


def line_and_column(text: str, position: int) -> tuple[int, int]:
    """1-based, in characters, as an editor counts them."""
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Each string of a template with its path, spelt as the template compiler spells it."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")


def _render_field(error: RenderError) -> str:
    where = error.path.split(":", 1)[0]
    return f"action.{where}" if where.split(".")[0] == "headers" else "action.body_template"
