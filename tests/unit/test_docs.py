"""The documentation a clone holds says what the code does: README's JSON examples parse, its links
stay inside the repository, and the settings it and docs/OPERATIONS.md name are the settings that
exist (every one of them in OPERATIONS.md's reference)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

import cli
import gateway
import services
from services.kit.config import env_names

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "OPERATIONS.md").read_text()
# Variable names as the docs write them (a prefix of ours; `RUNNER_*_DAYS` is a family, not one).
PREFIXES = (
    "LEADMESH",
    "GATEWAY",
    "IDENTITY",
    "VAULT",
    "RUNNER",
    "RETENTION",
    "REDIS",
    "SMTP",
    "OTEL",
)
VARIABLE = re.compile(rf"\b((?:{'|'.join(PREFIXES)})_[A-Z0-9_]*[A-Z0-9])\b")
# Read by libraries (the OpenTelemetry SDK) or the test suite, not by a settings class of ours.
NOT_OURS = {
    "LEADMESH_REQUIRE_SERVICES", "LEADMESH_TEST_POSTGRES_URL", "LEADMESH_TEST_REDIS_URL",
    "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG", "OTEL_SEMCONV_STABILITY_OPT_IN",
}  # fmt: skip


def settings_classes() -> list[type[BaseSettings]]:
    """Every settings class of every process (each module imported to find them)."""
    for package in (services, gateway, cli):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if ".migrations" not in module.name and not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    found, todo = [], list(BaseSettings.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__module__.startswith(("services.", "gateway.", "cli.")):
            found.append(cls)
    return found


def _settings() -> set[str]:
    """Every variable a settings class reads (nested settings objects are not variables)."""
    names = set()
    for cls in settings_classes():
        for name, field in cls.model_fields.items():
            nested = isinstance(field.annotation, type) and issubclass(
                field.annotation, BaseSettings
            )
            if not nested:
                names.add(env_names(cls)[name])
            if isinstance(field.validation_alias, AliasChoices):  # SMTP_URL or IDENTITY_SMTP_URL
                names |= {c for c in field.validation_alias.choices if isinstance(c, str)}
    return names


def _named(text: str) -> set[str]:
    return set(VARIABLE.findall(text)) - NOT_OURS


def test_every_setting_is_in_the_operations_reference():
    missing = _settings() - _named(OPERATIONS)
    assert not missing, f"settings docs/OPERATIONS.md does not describe: {sorted(missing)}"


def test_every_variable_the_docs_name_is_a_setting():
    unknown = (_named(README) | _named(OPERATIONS)) - _settings()
    assert not unknown, f"the docs name variables no settings class reads: {sorted(unknown)}"


def _json_examples(text: str) -> list[str]:
    bodies = re.findall(r"-d '([^']*)'", text)  # curl bodies in the shell examples
    inline = [s for s in re.findall(r"`([^`\n]+)`", text) if s.startswith(('{"', "["))]
    return bodies + inline


def test_the_json_examples_of_the_readme_and_operations_parse():
    examples = _json_examples(README) + _json_examples(OPERATIONS)
    assert len(examples) >= 10
    for example in examples:
        json.loads(example)  # raises, naming the position, when an example is not JSON


def test_the_readme_starts_with_the_two_commands():
    first_block = README.split("```")[1]
    assert "make run" in first_block and "make test" in first_block


def test_the_docs_link_only_to_files_inside_the_repository():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT), f"{doc.name} links {target}, outside the repository"
            assert path.exists(), f"{doc.name} links {target}, which does not exist"


def test_every_table_row_of_the_docs_sits_in_a_table_with_a_header():
    # A row pasted without its table (as a merge once left in OPERATIONS.md, under a heading
    # swallowed by a stray comment) renders as text; so does a comment left half open.
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines, fenced = doc.read_text().split("\n"), False
        for number, line in enumerate(lines):
            fenced = fenced != line.startswith("```")
            if fenced:
                continue
            assert "<!--" not in line and "-->" not in line, f"{doc.name}:{number + 1}: a comment"
            if line.startswith("|") and (number == 0 or not lines[number - 1].startswith("|")):
                separator = lines[number + 1] if number + 1 < len(lines) else ""
                assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", separator), (
                    f"{doc.name}:{number + 1}: a table row with no header above it"
                )
