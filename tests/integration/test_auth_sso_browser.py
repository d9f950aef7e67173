"""The SSO button as a person uses it, in Chromium: /login shows it when SSO is configured; clicking it goes
through the real local provider's login form and lands on the operator page, logged in as ``oidc:NAME``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.integration.browser_support import Pages, chromium
from tests.integration.test_auth_sso import issuer, running  # noqa: F401  (the provider fixture)

pytestmark = pytest.mark.integration


async def test_the_sso_button_logs_an_officer_in(database_url: str, issuer: str, tmp_path: Path) -> None:  # noqa: F811
    async with running(database_url, issuer) as site:
        sub, name = site.user("browser", roles=["ioc-duty"])

        def drive() -> str:
            with chromium() as browser:
                pages = Pages(browser, tmp_path)
                page = pages.open("sso")
                page.goto(f"{site.base}/login?next=%2Fops%3Flang%3Den")
                page.wait_for_selector("#sso-login", timeout=10_000)  # once /api/auth/sso says it is configured
                page.screenshot(path=str(tmp_path / "login.png"))
                page.click("#sso-login")
                page.wait_for_url(f"{site.issuer}/oauth2/authorize*", timeout=10_000)
                page.fill("input[name=sub]", sub)
                page.click("button:has-text('Authorize')")
                page.wait_for_url(f"{site.base}/ops?lang=en", timeout=10_000)
                text = ""
                for _ in range(100):  # polled: wait_for_function's string predicate is an eval the CSP refuses
                    text = page.text_content("#user") or ""
                    if text:
                        break
                    page.wait_for_timeout(100)
                page.screenshot(path=str(tmp_path / "ops.png"))
                pages.check()
                return text

        shown = await asyncio.to_thread(drive)
        assert shown.startswith(f"oidc:{name}"), shown
