"""/docs in a control room cut off from the internet: Swagger UI from our own files, under a CSP (Chromium)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.browser_support import chromium
from tests.integration.test_auth_hardening import app_with
from tests.integration.test_auth_routes import serve

pytestmark = pytest.mark.integration


def render_docs(base_url: str) -> tuple[int, list[str], list[str]]:
    """Open /docs with every request off this host refused: operations rendered, console, refused requests."""
    refused: list[str] = []
    console: list[str] = []
    with chromium() as browser:
        page = browser.new_page()
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))

        def offline(route: Any) -> None:
            if route.request.url.startswith(base_url):
                route.continue_()
            else:
                refused.append(route.request.url)
                route.abort()

        page.route("**/*", offline)
        page.goto(f"{base_url}/docs")
        page.wait_for_selector(".opblock", timeout=15_000)
        return page.locator(".opblock").count(), console, refused


async def test_the_api_docs_render_offline_under_a_csp(database_url: str) -> None:
    """Swagger UI used to come from a CDN: blank in an air-gapped control room, and its page had no CSP. Its files
    now come from this server, and the page's CSP allows its one inline script by hash, nothing else inline."""
    async with app_with(database_url, docs="public") as app, serve(app) as port:
        base = f"http://127.0.0.1:{port}"
        operations, console, refused = await asyncio.to_thread(render_docs, base)
    assert operations >= 40, operations  # every API operation listed
    assert refused == [], refused  # nothing fetched from elsewhere
    assert not [line for line in console if "Content Security Policy" in line or line.startswith("pageerror")]
