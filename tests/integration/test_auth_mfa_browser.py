"""The second factor on the login page, in Chromium: a supervisor whose role needs one sets it up there (key shown,
code confirmed, recovery codes listed) and reaches /ops; the next login asks for the code in a field of its own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.integration.browser_support import Pages, chromium
from tests.integration.test_auth_hardening import app_with
from tests.integration.test_auth_routes import serve
from tests.support.auth import make_user

pytestmark = pytest.mark.integration


def user_shown(page: object) -> str:
    text = ""
    for _ in range(100):  # polled: wait_for_function's string predicate is an eval the CSP refuses
        text = page.text_content("#user") or ""  # type: ignore[attr-defined]
        if text:
            break
        page.wait_for_timeout(100)  # type: ignore[attr-defined]
    return text


async def test_setup_on_the_login_page_then_the_code_field(database_url: str, tmp_path: Path) -> None:
    user, password = await make_user(database_url, "supervisor")
    async with app_with(database_url, mfa_required_roles=["supervisor"]) as app, serve(app) as port:
        base = f"http://127.0.0.1:{port}"

        def log_in(page: Any) -> None:
            page.goto(f"{base}/login?next=%2Fops")
            page.fill("#username", user)
            page.fill("#password", password)
            page.click("#login-submit")

        def drive() -> tuple[str, int, str, str]:
            with chromium() as browser:
                pages = Pages(browser, tmp_path)
                page = pages.open("setup")
                log_in(page)
                page.wait_for_selector("#mfa-secret:not(:empty)", timeout=10_000)
                totp = pyotp.TOTP(page.text_content("#mfa-secret") or "")
                page.fill("#mfa-code", totp.now())
                page.click("#mfa-confirm")
                page.wait_for_selector("#mfa-recovery:not([hidden])", timeout=10_000)
                codes = page.locator("#mfa-codes li").count()
                page.screenshot(path=str(tmp_path / "setup.png"))
                page.click("#mfa-continue")
                page.wait_for_url(f"{base}/ops", timeout=10_000)
                first = user_shown(page)

                page = pages.open("login")
                log_in(page)
                page.wait_for_selector("#otp-row:not([hidden])", timeout=10_000)
                page.fill("#otp", totp.at(time.time() + 30))  # the next step's: the setup's code is spent
                page.screenshot(path=str(tmp_path / "code.png"))
                page.click("#login-submit")
                page.wait_for_url(f"{base}/ops", timeout=10_000)
                second = user_shown(page)
                pages.check()
                return first, codes, second, totp.secret

        first, codes, second, _ = await asyncio.to_thread(drive)
        assert first.startswith(user) and second.startswith(user), (first, second)
        assert codes == 10
