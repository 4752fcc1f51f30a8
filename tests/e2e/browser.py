"""Headless Chromium for the playground's tests: Debian's `chromium` (scripts/_setup.sh installs it)
driven by Playwright's Python client. Playwright's own browser builds are never downloaded.

Missing chromium or playwright skips the tests with the reason, except under CI=true, where it fails
them: CI installs both, so their absence there is a broken setup, not a machine without a browser.
Screenshots go to $NPU_SERVE_SCREENSHOTS, else tests/e2e/artifacts/playground/ (git-ignored).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

SCREENSHOTS = Path(os.environ.get("NPU_SERVE_SCREENSHOTS") or Path(__file__).parent / "artifacts" / "playground")


def unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI installs it: see scripts/_setup.sh setup_chromium and the [dev] extra)")
    pytest.skip(reason)


def chromium_path() -> str | None:
    for name in (os.environ.get("NPU_SERVE_CHROMIUM"), "chromium", "chromium-browser"):
        if name and (found := shutil.which(name)):
            return found
    return None


# Module scope, never session: between its calls Playwright's sync API leaves its asyncio loop marked
# as running in the main thread, so every later test that calls asyncio.run() would fail until stop().
@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e .[dev])")
    path = chromium_path()
    if path is None:
        unavailable("chromium is not installed (apt-get install chromium, or set NPU_SERVE_CHROMIUM)")
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=path, headless=True)
    except Exception as e:  # noqa: BLE001 - a broken browser install is reported like a missing one
        pw.stop()
        unavailable(f"chromium at {path} did not start: {e}")
    yield b
    b.close()
    pw.stop()
    asyncio.run(asyncio.sleep(0))  # the loop is released: the tests after this module may use asyncio.run()


def screenshot(page, name: str, full_page: bool = False) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
