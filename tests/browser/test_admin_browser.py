"""An operator in a real browser: log in, filter to failed messages, replay one, see it done.

Headless Chromium from Debian's package, driven by Playwright (no browser download). The
screenshot lands in artifacts/admin-replay.png.
"""

import shutil
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from inbox.models import InboxMessage
from inbox.testing import deliver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="Chromium is not installed (apt-get install chromium)"
    ),
]


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls made here
    # between browser steps are ordinary synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield chromium
        chromium.close()
    _close_server_sessions()


def _close_server_sessions() -> None:
    """The live server's request threads keep a database connection for as long as the
    browser keeps its HTTP connection alive; once the browser is gone, make sure none is
    left, or the test database cannot be dropped."""
    from django.db import connection

    with connection.cursor() as cursor:
        for _ in range(20):
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            )
            if not cursor.fetchone()[0]:
                return
            time.sleep(0.1)
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def test_an_operator_replays_a_failed_message_from_the_admin(live_server, browser, names):
    User.objects.create_superuser("operator", "op@example.com", "s3cret-pass")
    deliver("test.effect", {"fail_times": 1, "order": 42}, id="evt-browser")
    deliver("test.effect", {}, id="evt-fine")
    row = InboxMessage.objects.get(message_id="evt-browser", consumer=f"{names.service}:effect")
    assert row.status == "failed"

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{live_server.url}/admin/login/?next=/admin/inbox/inboxmessage/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "s3cret-pass")
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")

    page.click("#changelist-filter >> text=Failed (will retry)")
    page.wait_for_url("**status__exact=failed**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1 and "evt-browser" in rows.first.inner_text()

    rows.first.locator("input.action-select").check()
    page.select_option("select[name=action]", "replay")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist")
    assert "Replayed 1 inbox message." in page.inner_text(".messagelist")

    page.goto(f"{live_server.url}/admin/inbox/inboxmessage/{row.pk}/change/")
    assert "Processed" in page.inner_text("#content")
    assert '"order": 42' in page.inner_text("pre.inbox-outbox-json")
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(f"{live_server.url}/admin/inbox/inboxmessage/?q=evt-browser")
    page.screenshot(path=str(ARTIFACTS / "admin-replay.png"), full_page=True)
    assert InboxMessage.objects.get(pk=row.pk).status == "done"
