"""The web UI in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver`` packages) driven by Selenium.

Each test fills a fresh server with jobs through the work protocol, opens the pages,
presses the buttons as a user would, and checks the server's state afterwards. The
browser's console is checked for Content-Security-Policy violations after each test.

With ``KAFFI_SCREENSHOTS=1`` the tests also write the screenshots of
docs/embedded-server.md into docs/img/ (``webui-*.png``); normal runs write nothing.

Select them with ``-m browser``; they skip, saying why, when chromium or chromedriver is
not installed (``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from kaffi.server import EmbeddedServer
from tests.server.webui import fill
from tests.server.wire import Wire, push_line

pytestmark = [pytest.mark.browser, pytest.mark.slow]

_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_DRIVER = shutil.which("chromedriver")
_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
_WAIT = 30.0


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    if _CHROMIUM is None or _DRIVER is None:
        pytest.skip(
            "no chromium/chromedriver on this machine: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = _CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--hide-scrollbars",
        # A profile of its own under pytest's temporary folder, so no run leaves
        # Chromium's profile folders behind in /tmp.
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(_DRIVER))
    browser.set_page_load_timeout(_WAIT)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def srv(tmp_path: Path, driver: webdriver.Chrome) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(data=tmp_path / "jobs.sqlite3", web="127.0.0.1:0") as server:
        yield server
    driver.set_window_size(1280, 900)
    read_log: Callable[[str], list[dict[str, Any]]] = driver.get_log  # untyped in selenium
    messages = [entry["message"] for entry in read_log("browser")]
    assert not [m for m in messages if "Content Security Policy" in m], messages


class Page:
    """The browser on one server's UI."""

    def __init__(self, driver: WebDriver, srv: EmbeddedServer) -> None:
        self.driver = driver
        self.srv = srv

    def open(self, path: str) -> None:
        self.driver.get(self.srv.web_url + path.lstrip("/"))

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def press(self, css: str) -> str:
        """Press a button (or follow a link) and wait for the next page; returns its
        flash message (empty when there is none)."""
        # A mark on the old page's window: the next page's window has none. (Selenium's
        # staleness_of can fail mid-navigation with "Node ... does not belong to the
        # document" instead of reporting the element stale.)
        self.driver.execute_script("window.kaffiOldPage = true;")
        self.find(css).click()
        WebDriverWait(
            self.driver, _WAIT, poll_frequency=0.05, ignored_exceptions=(WebDriverException,)
        ).until(
            lambda driver: driver.execute_script(
                "return !window.kaffiOldPage && document.readyState === 'complete'"
            ),
            message=f"waited {_WAIT}s for the page after pressing {css}",
        )
        flash = self.all(".flash")
        return flash[0].text if flash else ""

    def select_rows(self, count: int) -> list[str]:
        """Tick the first ``count`` rows; returns their keys."""
        boxes = self.all("input[name=key]")[:count]
        for box in boxes:
            box.click()
        return [str(box.get_attribute("value")) for box in boxes]

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        WebDriverWait(self.driver, _WAIT, poll_frequency=0.1).until(
            lambda _: condition(), message=f"waited {_WAIT}s for {what}"
        )

    def polls(self) -> int:
        """How many intervals the live chart shows."""
        return int(self.find("#live-svg").get_attribute("data-points") or 0)

    def wait_for_polls(self, count: int) -> None:
        """Wait until the live chart shows at least ``count`` intervals."""
        self.wait_for(lambda: self.polls() >= count, f"{count} polls of /stats")

    def shot(self, name: str, width: int = 1280) -> None:
        """Save a screenshot for the docs, only when KAFFI_SCREENSHOTS=1."""
        if os.environ.get("KAFFI_SCREENSHOTS") != "1":
            return
        height = int(self.driver.execute_script("return document.documentElement.scrollHeight"))
        self.driver.set_window_size(width, min(max(height, 600), 2000))
        self.driver.save_screenshot(str(_SCREENSHOTS / f"webui-{name}.png"))
        self.driver.set_window_size(1280, 900)

    def fits_the_width(self) -> bool:
        """True when the page needs no sideways scrolling (wide tables scroll inside)."""
        return bool(
            self.driver.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1"
            )
        )


@pytest.fixture
def page(driver: WebDriver, srv: EmbeddedServer) -> Page:
    return Page(driver, srv)


def _core(srv: EmbeddedServer) -> Any:
    assert srv.core is not None
    return srv.core


def _paused(srv: EmbeddedServer, name: str) -> bool:
    return bool(_core(srv).queues[name].paused)


def _process(srv: EmbeddedServer, count: int, batch: str) -> None:
    """Push ``count`` jobs to ``live`` and ACK them, as a worker would."""
    wire = Wire.hello(srv)
    try:
        for n in range(count):
            jid = f"jid-live-{batch}-{n:04d}"
            assert wire.send(push_line(jid=jid, queue="live", jobtype="Live")) == ["+OK"]
            assert wire.value("FETCH live")["jid"] == jid
            assert wire.send(f'ACK {{"jid":"{jid}"}}') == ["+OK"]
    finally:
        wire.close()


def test_dashboard_counts_live_chart_history_and_phone_width(
    page: Page, srv: EmbeddedServer
) -> None:
    fill(srv, queued=4, retries=3, scheduled=2, dead=1)
    _process(srv, 5, "a")
    page.open("/")
    assert page.find("[data-stat=enqueued]").text == "4"
    assert page.find("[data-stat=retries]").text == "3"
    assert page.find("[data-stat=dead]").text == "1"
    # The script ran: the chart and its control are shown, the no-JS note is not.
    assert page.find("#live-chart").is_displayed()
    assert not page.find(".no-js").is_displayed()
    Select(page.find("#poll-interval")).select_by_value("1")
    page.wait_for_polls(1)
    _process(srv, 7, "b")
    page.wait_for_polls(2)
    page.wait_for(lambda: page.find("[data-stat=processed]").text == "17", "live totals")
    assert page.all("#live-svg polyline.line-processed")
    # Today's row of the history, from the data file: 12 ACKs and 3 + 2 FAILs processed.
    page.open("/")
    today = page.all("table.history tbody tr")[0].find_elements(By.TAG_NAME, "td")
    assert [td.text for td in today[1:]] == ["17", "5"]
    assert len(page.all("table.history tbody tr")) == 7
    page.press("a[href='/?days=30']")
    assert len(page.all("table.history tbody tr")) == 30
    # The chart after a few polls with work in between (the poll interval is remembered).
    page.open("/")
    assert Select(page.find("#poll-interval")).first_selected_option.text == "1 s"
    for batch, count in (("c", 4), ("d", 1), ("e", 6), ("f", 2), ("g", 5)):
        wanted = page.polls() + 1
        _process(srv, count, batch)
        page.wait_for_polls(wanted)
    page.shot("dashboard")
    page.driver.set_window_size(390, 844)
    for path in ("/", "/retries", "/busy"):
        page.open(path)
        assert page.fits_the_width(), path
    page.open("/")
    page.shot("dashboard-phone", width=390)


def test_queues_pause_resume_page_delete_and_clear(page: Page, srv: EmbeddedServer) -> None:
    fill(srv, queued=30, retries=1)
    core = _core(srv)
    page.open("/queues")
    names = [row.get_attribute("data-queue") for row in page.all("tr[data-queue]")]
    assert names == ["default", "failing"]
    page.shot("queues")
    assert page.press("tr[data-queue=default] button[value=pause]") == "Paused queue default."
    assert _paused(srv, "default")
    assert page.press("tr[data-queue=default] button[value=resume]") == "Resumed queue default."
    assert not _paused(srv, "default")
    page.press("tr[data-queue=default] a")
    assert len(page.all("input[name=key]")) == 25
    page.find("details summary").click()
    assert '"jobtype": "Add"' in page.find("details pre").text
    page.shot("queue")
    page.press("a[rel=next]")
    assert len(page.all("input[name=key]")) == 5
    page.press("a[rel=prev]")
    chosen = page.select_rows(2)
    assert page.press("button[value=delete]") == "Deleted 2 jobs from queue default."
    left = [job.jid for job in core.queues["default"].jobs]
    assert len(left) == 28
    assert not set(chosen) & set(left)
    assert page.press("button[value=clear]") == "Cleared queue default: 28 jobs deleted."
    assert len(core.queues["default"].jobs) == 0


def test_retries_retry_kill_delete_and_kill_all(page: Page, srv: EmbeddedServer) -> None:
    fill(srv, retries=6)
    core = _core(srv)
    page.open("/retries")
    assert len(page.all("input[name=key]")) == 6
    assert "ValueError: bad value" in page.find("td.error").text
    page.shot("retries")
    page.select_rows(1)
    assert page.press("button[value=retry]") == "Enqueued 1 job."
    assert (len(core.retries), len(core.queues["failing"].jobs)) == (5, 1)
    page.select_rows(1)
    assert page.press("button[value=kill]") == "Killed 1 job."
    assert (len(core.retries), len(core.dead)) == (4, 1)
    page.press("tbody tr a[href^='/retries/']")
    assert "app/tasks.py:12 in run" in page.find("pre.backtrace").text
    assert '"errtype": "ValueError"' in page.all("pre.payload")[-1].text
    page.shot("retry-job")
    assert page.press("button[value=delete]") == "Deleted 1 job."
    assert len(core.retries) == 3
    # "Kill all" kills them (Faktory 1.10.0's UI would put them back in their queue).
    assert page.press("form.all button[value=kill]") == "Killed 3 jobs."
    assert (len(core.retries), len(core.dead)) == (0, 4)
    assert len(core.queues["failing"].jobs) == 1


def test_scheduled_enqueue_now_and_delete_all(page: Page, srv: EmbeddedServer) -> None:
    fill(srv, scheduled=3)
    core = _core(srv)
    page.open("/scheduled")
    assert len(page.all("input[name=key]")) == 3
    page.shot("scheduled")
    page.select_rows(1)
    assert page.press("button[value=retry]") == "Enqueued 1 job."
    assert (len(core.scheduled), len(core.queues["later"].jobs)) == (2, 1)
    assert page.press("form.all button[value=delete]") == "Deleted 2 jobs."
    assert len(core.scheduled) == 0


def test_dead_retry_from_the_job_page_and_delete_all(page: Page, srv: EmbeddedServer) -> None:
    fill(srv, dead=3)
    core = _core(srv)
    page.open("/morgue")
    assert "RuntimeError: gave up" in page.find("td.error").text
    page.shot("morgue")
    page.press("tbody tr a[href^='/morgue/']")
    page.shot("dead-job")
    assert page.press("button[value=retry]") == "Enqueued 1 job."
    assert (len(core.dead), len(core.queues["dying"].jobs)) == (2, 1)
    assert page.press("form.all button[value=delete]") == "Deleted 2 jobs."
    assert len(core.dead) == 0


def test_busy_quiet_one_and_terminate_all(page: Page, srv: EmbeddedServer) -> None:
    fill(srv, queued=2)
    first = Wire.hello(srv, "wid-browser-1")
    second = Wire.hello(srv, "wid-browser-2")
    try:
        assert first.value("FETCH default")["jid"] == "jid-queued-000000"
        assert first.send('BEAT {"wid":"wid-browser-1","rss_kb":48128}') == ["+OK"]
        page.open("/busy")
        assert page.find("tr[data-wid=wid-browser-1] td.num").text == "47.0 MB"
        assert len(page.all("tr[data-wid]")) == 2
        assert "jid-queued-000000" in page.find("section:nth-of-type(2) tbody").text
        page.shot("busy")
        message = page.press("tr[data-wid=wid-browser-1] button[value=quiet]")
        assert message == "Asked 1 worker process to quiet."
        assert first.value('BEAT {"wid":"wid-browser-1"}') == {"state": "quiet"}
        assert page.find("tr[data-wid=wid-browser-1] .state").text == "quiet"
        page.press("button[value=terminate]")  # the "Terminate all" button comes first
        assert {w["state"] for w in srv.workers()} == {"terminate"}
        assert second.value('BEAT {"wid":"wid-browser-2"}') == {"state": "terminate"}
    finally:
        first.close()
        second.close()


def test_bad_addresses_show_an_error_page(page: Page, srv: EmbeddedServer) -> None:
    page.open("/queues/no-such-queue")
    assert page.find("h1").text == "404: Not found"
    page.open("/retries?page=zero")
    assert page.find("h1").text == "400: Bad request"
    page.press("a[href='/']")
    assert page.find("h1").text == "Dashboard"
