"""The simulator page in a real headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium), against the whole local stack of ``scripts/dev serve``: an offer made by tapping
through the page as a user would; and one to a member whose 24-hour window the panel's control
closed, shown as its template, whose quick reply accepts it. Each step is saved as a screenshot
under the test's tmp dir; on a failure the last one shows what the page looked like."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .stack import Stack

selenium = pytest.importorskip("selenium", reason="selenium is in the dev extra")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no Chromium: scripts/dev test installs Debian's chromium and chromium-driver "
    "with apt-get; here they could not be installed",
)
#: Flags for a headless Chromium on a machine with no network beyond loopback.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1100,900",
)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    service = Service(str(DRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The chat page, with a screenshot after every step."""

    def __init__(self, driver: WebDriver, shots: Path) -> None:
        self.driver = driver
        self.shots = shots
        self.step = 0
        shots.mkdir()

    def shot(self, name: str) -> Path:
        self.step += 1
        path = self.shots / f"{self.step:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def until(self, what: str, check: Callable[[WebDriver], Any], timeout: float = 20) -> Any:
        return WebDriverWait(self.driver, timeout).until(check, message=f"waiting for {what}")

    def bot_messages(self) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, ".msg.bot")

    def wait_bot(self, text: str) -> WebElement:
        def found(driver: WebDriver) -> WebElement | bool:
            for message in reversed(self.bot_messages()):
                if text in message.text:
                    return message
            return False

        found_message: WebElement = self.until(f"the bot to say {text!r}", found)
        return found_message

    def type(self, text: str) -> None:
        box = self.driver.find_element(By.ID, "composer-text")
        box.send_keys(text)
        self.driver.find_element(By.ID, "send").click()

    def panel(self, name: str) -> str:
        text: str = self.driver.find_element(By.ID, f"session-{name}").text
        return text


def make_an_offer(page: Page, url: str) -> None:
    page.driver.get(url)
    page.until("the page", lambda d: d.find_element(By.ID, "bot-name").text == "Credex")
    page.shot("opened")

    page.type("hi")
    menu = page.wait_bot("Welcome Alice (@alice)")
    page.until("the panel", lambda d: page.panel("stage") == "menu")
    page.shot("menu")

    menu.find_element(By.CSS_SELECTOR, ".list-open").click()
    page.until("the list", lambda d: d.find_element(By.ID, "sheet-backdrop").is_displayed())
    page.driver.find_element(By.CSS_SELECTOR, '.row-option[data-id="offer"]').click()
    page.shot("list")
    page.driver.find_element(By.ID, "sheet-send").click()
    asked = page.wait_bot("How much do you want to offer?")
    bold = [b.text for b in asked.find_elements(By.TAG_NAME, "b")]
    assert bold[:2] == ["25", "12.50"]  # WhatsApp's *bold*, rendered

    page.type("25")
    page.wait_bot("Who should receive 25.00 USD?")
    page.type("bob")
    confirm = page.wait_bot("Offer 25.00 USD from Alice Moyo Personal to Bob Dube Personal")
    page.until("the panel at confirm", lambda d: page.panel("step") == "confirm")
    page.shot("confirm")
    before = int(page.panel("version"))
    confirm.find_element(By.CSS_SELECTOR, '.buttons button[data-id="confirm"]').click()
    page.wait_bot("Offer of 25.00 USD sent to @bob.")
    page.until(
        "the panel's new version",
        lambda d: page.panel("stage") == "menu" and int(page.panel("version")) > before,
    )
    page.shot("sent")
    assert "<hidden>" in page.panel("token")
    assert "eyJ" not in page.driver.page_source  # no token reached the page


def redeliver_and_switch(page: Page) -> None:
    sent = len(page.bot_messages())
    time.sleep(0.5)  # the last message's confirmation is written a moment after its replies
    page.driver.execute_script("return refreshSession()")
    version = page.panel("version")
    page.driver.find_element(By.ID, "redeliver").click()
    page.until("the re-delivery", lambda d: "Re-delivered" in d.find_element(By.ID, "chat").text)
    note = page.driver.find_element(By.ID, "delivery-note")
    page.until("its answer", lambda d: "webhook answered 200" in note.text)  # cleared, then set
    page.driver.execute_script("return refreshSession()")  # the panel as of now
    page.shot("redelivered")
    assert len(page.bot_messages()) == sent and page.panel("version") == version

    select = page.driver.find_element(By.ID, "contact")
    select.find_element(By.CSS_SELECTOR, 'option[value="263779990001"]').click()
    page.until("an empty chat", lambda d: not page.bot_messages())
    page.type("hi")
    page.wait_bot("Would you like to register?")
    page.shot("new-number")


BOB = "263770000002"


def use_number(page: Page, number: str, name: str) -> None:
    select = page.driver.find_element(By.ID, "contact")
    select.find_element(By.CSS_SELECTOR, f'option[value="{number}"]').click()
    page.until(f"{name}'s chat", lambda d: name in d.find_element(By.ID, "bot-status").text)


def window(page: Page) -> tuple[str, str]:
    """The panel's window: its state (open, closed, unknown) and what it says."""
    shown = page.driver.find_element(By.ID, "session-window")
    return shown.get_attribute("data-state") or "", shown.text


def close_bobs_window(page: Page, url: str) -> None:
    page.driver.get(url)
    page.until("the page", lambda d: d.find_element(By.ID, "bot-name").text == "Credex")
    use_number(page, BOB, "Bob")
    page.until("the window unknown", lambda d: window(page)[0] == "unknown")
    page.type("hi")
    page.wait_bot("Welcome Bob (@bob)")
    page.until("the window open", lambda d: window(page)[0] == "open")
    assert window(page)[1] == "open: 23 h 59 min left"  # he wrote a moment ago
    page.shot("bob-window-open")
    version = int(page.panel("version"))

    page.driver.find_element(By.ID, "window-back").click()
    page.until("the window closed", lambda d: window(page)[0] == "closed")
    said = window(page)[1]
    assert said.startswith("closed since ") and "(1 h 0 min ago)" in said  # 25 h - 24 h
    assert said.endswith("the fake Graph API refuses free-form messages")
    page.until("the note", lambda d: "moved back 25 h" in d.find_element(By.ID, "chat").text)
    page.until("the new version", lambda d: int(page.panel("version")) > version)
    history = page.driver.find_element(By.ID, "session-history").text
    assert "simulator: last message moved back" in history.splitlines()[0]
    page.shot("bob-window-closed")


def tap_the_template(page: Page) -> None:
    use_number(page, BOB, "Bob")
    notice = page.wait_bot("credex_offer_received (en): Alice · alice · 25.00 USD")
    assert "template" in (notice.get_attribute("class") or "").split()
    assert notice.find_element(By.CSS_SELECTOR, ".template-tag").text.lower() == "template"
    quick = notice.find_elements(By.CSS_SELECTOR, ".buttons button.quick-reply")
    payloads = [b.get_attribute("data-payload") or "" for b in quick]
    assert [p.split(":")[0] for p in payloads] == ["fsm.ev.offer_accept", "fsm.ev.offer_decline"]
    assert window(page)[0] == "closed"
    page.shot("template")

    quick[0].click()  # posts {"type": "button", "button": {"payload": ...}} to the webhook
    page.wait_bot("Accepted: 25.00 USD from @alice.")
    tapped = page.driver.find_elements(By.CSS_SELECTOR, ".msg.user")[-1]
    assert payloads[0] in tapped.text
    page.until("the window open again", lambda d: window(page)[0] == "open")
    page.shot("accepted")


#: A template with a media header and typed body parameters, as render_template sends it.
PARCEL = {
    "name": "parcel_sent",
    "language": {"code": "en_US"},
    "components": [
        {
            "type": "header",
            "parameters": [
                {"type": "document", "document": {"link": "https://files.example/l/p-2.pdf"}}
            ],
        },
        {
            "type": "body",
            "parameters": [
                {"type": "text", "text": "p-2"},
                {"type": "currency", "currency": {"fallback_value": "$12.50", "code": "USD"}},
                {"type": "date_time", "date_time": {"fallback_value": "March 3, 2026"}},
            ],
        },
    ],
}


def a_media_header(page: Page) -> None:
    """A template with a document header, rendered as the page renders a bot's send (the
    reference bot sends none such): the header a placeholder, never fetched."""
    event = {"kind": "bot", "id": "wamid.parcel", "at": 0, "payload": {"type": "template"}}
    event["payload"]["template"] = PARCEL  # type: ignore[index]
    page.driver.execute_script("onEvent(arguments[0])", event)
    shown = page.wait_bot("parcel_sent (en_US): p-2 · $12.50 · March 3, 2026")
    assert shown.find_element(By.CSS_SELECTOR, ".media").text == "[document: p-2.pdf]"
    assert not shown.find_elements(By.CSS_SELECTOR, "button")  # no quick replies


def test_a_template_to_a_closed_window_in_the_browser(
    stack: Stack, browser: WebDriver, tmp_path: Path
) -> None:
    """Bob's last message moved back 25 hours with the panel's control: the window shows
    closed, Alice's offer reaches him as the credex_offer_received template with its quick
    replies, and tapping Accept posts its payload: the offer is accepted, the window open."""
    page = Page(browser, tmp_path / "screens")
    try:
        close_bobs_window(page, stack.url)
        make_an_offer(page, stack.url)
        tap_the_template(page)
        a_media_header(page)
    except Exception:
        failed = page.shot("failure")
        print(f"screenshots of every step: {page.shots} (the failure: {failed.name})")
        raise


def test_an_offer_made_in_the_browser(stack: Stack, browser: WebDriver, tmp_path: Path) -> None:
    page = Page(browser, tmp_path / "screens")
    try:
        make_an_offer(page, stack.url)
        redeliver_and_switch(page)
    except Exception:
        failed = page.shot("failure")
        print(f"screenshots of every step: {page.shots} (the failure: {failed.name})")
        raise
