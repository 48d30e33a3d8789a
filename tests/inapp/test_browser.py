"""The widgets in headless Chromium against a real inapp server, broker, PostgreSQL and Redis."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from services.inapp.app import create_app
from services.inapp.settings import Settings

from ..support import make_topics, produce, settings_for
from .helpers import Server, dispatch

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"]
TIMEOUT_MS = 20_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (Debian's chromium package)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def server(infra, namespace) -> AsyncIterator[tuple[Server, Settings]]:
    settings = settings_for(Settings, infra, namespace)
    await make_topics(settings)
    async with Server(create_app(settings)) as running:
        yield running, settings


@contextlib.asynccontextmanager
async def page_of(browser: Browser, url: str) -> AsyncIterator[Page]:
    page = await browser.new_page(viewport={"width": 1000, "height": 700})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        await page.goto(url)
        yield page
    finally:
        await page.close()
    assert not errors, errors


async def test_the_bell_updates_live_marks_read_and_works_from_the_keyboard(infra, browser, server, seed, user, pool):
    app, settings = server
    earlier = await seed(user, title="Earlier notification")
    async with page_of(browser, f"{app.url}/demo?user={user}") as page:
        bell = page.locator("herald-bell")
        button, badge, panel = bell.locator("button.bell"), bell.locator(".badge"), bell.locator(".panel")
        await expect(badge).to_have_text("1", timeout=TIMEOUT_MS)
        await expect(button).to_have_attribute("aria-label", "Notifications, 1 unread")
        await page.evaluate("window.notReloaded = true")

        d = dispatch(user, data={"title": "Lesson moved to Friday", "body": "Now at 10:00."})
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=user.encode())
        await expect(badge).to_have_text("2", timeout=TIMEOUT_MS)
        assert await page.evaluate("window.notReloaded") is True

        await button.focus()
        await page.keyboard.press("ArrowDown")
        await expect(panel).to_be_visible()
        await expect(button).to_have_attribute("aria-expanded", "true")
        items = bell.locator("[role=menu] [role=menuitem]")
        await expect(items.nth(0)).to_be_focused()
        await expect(items.nth(0)).to_contain_text("Lesson moved to Friday")
        await expect(items.nth(1)).to_contain_text("Earlier notification")
        await page.keyboard.press("ArrowDown")
        await expect(items.nth(1)).to_be_focused()
        await page.keyboard.press("End")
        await expect(items.last).to_be_focused()
        await expect(items.last).to_have_text("See all notifications")
        await page.keyboard.press("ArrowDown")  # wraps around
        await expect(items.nth(0)).to_be_focused()
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "inapp-bell.png"))

        await page.keyboard.press("Enter")  # opens the newest, which marks it read
        await expect(badge).to_have_text("1", timeout=TIMEOUT_MS)
        await expect(page.locator("#opened")).to_contain_text("Lesson moved to Friday")
        assert await pool.fetchval("SELECT read_at IS NOT NULL FROM inapp.notifications WHERE id = $1", d.notification_id)

        await page.keyboard.press("Escape")
        await expect(panel).to_be_hidden()
        await expect(button).to_be_focused()
        await expect(button).to_have_attribute("aria-expanded", "false")

        await button.click()
        await expect(panel).to_be_visible()
        await items.nth(1).click()
        await expect(badge).to_be_hidden(timeout=TIMEOUT_MS)
        await expect(button).to_have_attribute("aria-label", "Notifications, none unread")
        assert await pool.fetchval("SELECT read_at IS NOT NULL FROM inapp.notifications WHERE id = $1", earlier["id"])
        await page.mouse.click(900, 650)  # a click outside closes it
        await expect(panel).to_be_hidden()


async def test_mark_all_read_from_the_bell_and_markup_in_a_title_stays_text(browser, server, seed, user):
    app, _ = server
    hostile = '<img src=x onerror="window.pwned=1">'
    for i in range(2):
        await seed(user, title=f"n{i}")
    await seed(user, title=hostile)
    async with page_of(browser, f"{app.url}/demo?user={user}") as page:
        bell = page.locator("herald-bell")
        await expect(bell.locator(".badge")).to_have_text("3", timeout=TIMEOUT_MS)
        await bell.locator("button.bell").click()
        await expect(bell.locator(".item .title").first).to_have_text(hostile)
        assert await bell.locator(".item img").count() == 0
        assert await page.evaluate("window.pwned") is None
        await bell.locator("[data-action=read-all]").click()
        await expect(bell.locator(".badge")).to_be_hidden(timeout=TIMEOUT_MS)
        await expect(bell.locator(".item.unread")).to_have_count(0)


async def test_the_inbox_page_filters_loads_more_deletes_and_clears(infra, browser, server, seed, user, pool):
    app, settings = server
    for i in range(22):
        await seed(user, title=f"Lesson {i}", category="lesson_updates")
    await seed(user, title="A message", category="messages")
    async with page_of(browser, f"{app.url}/demo/inbox?user={user}") as page:
        inbox = page.locator("herald-inbox")
        rows = inbox.locator("li[data-id]")
        await expect(rows).to_have_count(20, timeout=TIMEOUT_MS)
        await expect(rows.first).to_contain_text("A message")
        await inbox.locator("button.more").click()
        await expect(rows).to_have_count(23, timeout=TIMEOUT_MS)
        await expect(inbox.locator("button.more")).to_be_hidden(timeout=TIMEOUT_MS)  # the next page answered "no more"
        # The stream reconnects (a network blip, a new token): what is shown is refreshed as deep as it was loaded.
        async with page.expect_response(lambda r: "/v1/inbox?" in r.url and "cursor=" not in r.url) as listed:
            await inbox.evaluate("el => { el.stream.source.close(); el.stream.open(); }")
        assert "limit=23" in (await listed.value).url
        await page.evaluate("() => new Promise((done) => setTimeout(done, 200))")
        await expect(rows).to_have_count(23)
        await expect(inbox.locator("button.more")).to_be_hidden()
        ARTIFACTS.mkdir(exist_ok=True)
        await page.evaluate("window.scrollTo(0, 0)")
        await page.screenshot(path=str(ARTIFACTS / "inapp-inbox.png"))

        await inbox.locator("select").select_option("messages")
        await expect(rows).to_have_count(1)
        await inbox.locator("select").select_option("")
        await expect(rows).to_have_count(20)

        await rows.first.get_by_role("button", name="Mark read: A message").click()
        await inbox.locator("input[name=unread]").check()
        await expect(rows).to_have_count(20)
        await expect(rows.first).to_contain_text("Lesson 21")
        await inbox.locator("input[name=unread]").uncheck()

        d = dispatch(user, category="lesson_updates", data={"title": "Arrived live", "body": "."})
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=user.encode())
        await expect(rows.first).to_contain_text("Arrived live", timeout=TIMEOUT_MS)

        await rows.first.get_by_role("button", name="Delete: Arrived live").click()
        await expect(rows.first).not_to_contain_text("Arrived live")
        assert await pool.fetchval("SELECT deleted_at IS NOT NULL FROM inapp.notifications WHERE id = $1", d.notification_id)

        await rows.first.focus()
        await page.keyboard.press("ArrowDown")
        await expect(rows.nth(1)).to_be_focused()

        page.once("dialog", lambda dialog: dialog.accept())
        await inbox.get_by_role("button", name="Clear all").click()
        await expect(inbox.locator("li.empty")).to_have_text("No notifications.", timeout=TIMEOUT_MS)
        assert await pool.fetchval("SELECT count(*) FROM inapp.notifications WHERE user_id = $1 AND deleted_at IS NULL", user) == 0
        await expect(page.locator("herald-bell .badge")).to_be_hidden(timeout=TIMEOUT_MS)
