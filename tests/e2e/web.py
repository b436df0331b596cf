"""The browser side of the web app's tests: Debian's Chromium driven by Playwright (its own
browser download cannot work here), axe-core's rules, screenshots under var/screenshots/, and a
scan for secrets in what a page holds.

Without a `chromium` on PATH the browser tests skip with the reason, and fail instead when
LEADMESH_REQUIRE_SERVICES=1 (CI installs it: .ci/run).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        message = "no chromium on PATH (apt-get install -y chromium)"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message}; LEADMESH_REQUIRE_SERVICES=1 demands it")
        pytest.skip(message)
    if not (ROOT / "web" / "dist" / "index.html").is_file():
        message = "the web app is not built (make web needs Node.js)"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message}; LEADMESH_REQUIRE_SERVICES=1 demands it")
        pytest.skip(message)
    return found


def screenshot(page, name: str) -> list[Path]:
    """The whole page at desktop and phone width: var/screenshots/<name>-{desktop,phone}.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    saved = []
    original = page.viewport_size or DESKTOP
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        page.wait_for_timeout(100)  # a relayout
        path = SCREENSHOTS / f"{name}-{label}.png"
        page.screenshot(path=str(path), full_page=True)
        saved.append(path)
    page.set_viewport_size(original)
    return saved


def assert_accessible(page, name: str = "") -> None:
    """axe-core on the page as it is now: no serious or critical violation."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    bad = [v for v in results.response["violations"] if v.get("impact") in ("serious", "critical")]
    described = [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(node["target"]) for node in v["nodes"][:5])
        for v in bad
    ]
    assert not bad, f"accessibility of {name or page.url}:\n" + "\n".join(described)


def assert_no_secrets(page, secrets: Iterable[str]) -> None:
    """None of `secrets` is in the page's HTML, its localStorage or its sessionStorage."""
    held = page.content() + json.dumps(
        page.evaluate("() => [Object.entries(localStorage), Object.entries(sessionStorage)]")
    )
    for secret in secrets:
        if secret:
            assert secret not in held, f"a secret ({secret[:4]}…) is in {page.url}"


def field_error(page, label: str):
    """The error shown for the field labelled `label` (its aria-describedby's error); `page`
    may be a part of one (a locator), where a label is used more than once."""
    from playwright.sync_api import expect

    control = page.get_by_label(label, exact=True)
    expect(control).to_have_attribute("aria-invalid", "true")
    ids = (control.get_attribute("aria-describedby") or "").split()
    errors = [i for i in ids if i.endswith("-error")]
    assert errors, f"the field {label!r} shows no error"
    return page.locator(f"[id={json.dumps(errors[0])}]")


def path_of(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def check_page(page, name: str) -> None:
    """Every page's two checks where it stands: axe-core's rules, then its screenshots."""
    assert_accessible(page, name)
    screenshot(page, name)
