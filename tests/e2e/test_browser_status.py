"""The status page in a real headless browser (Debian's chromium, driven by selenium).

A real `omero-dropbox run --http` with a real importer command standing in for OMERO
that fails for one file; the test reads the per-user queues and the failure's reason,
finds retry unusable without the token, then types the token, clicks retry and sees
the fileset imported.
"""

from __future__ import annotations

import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.service import Service
from tests.support.waiting import wait_for

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.chrome.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def browser(shm_dir: Path) -> Iterator[WebDriver]:
    opts = Options()
    opts.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    opts.add_argument(f"--user-data-dir={shm_dir / 'chromium-profile'}")
    driver = webdriver.Chrome(options=opts, service=DriverService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def cell(driver: WebDriver, user: str, column: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, f'tr[data-user="{user}"] td[data-col="{column}"]').text)


def test_failure_retry_in_a_real_browser_needs_the_token(shm_dir: Path, browser: WebDriver) -> None:
    svc = Service.scripted(shm_dir / "svc", "--http", "0", dir_import_wait=60)
    with svc:
        good = svc.drop("amy", "good.czi")
        bad = svc.drop("zak", "bad-scan.czi")
        svc.drop("zak", "later.tif")  # a .tif waits the full dirImportWait: zak has one waiting
        svc.wait_state(good, "imported")
        svc.wait_state(bad, "failed")
        fid = svc.fileset_id(bad)

        page = svc.url + "?refresh=0"

        def queues_shown() -> bool:
            browser.get(page)
            return cell(browser, "zak", "waiting") == "1"

        assert wait_for(queues_shown, 30, 0.5), browser.page_source
        assert cell(browser, "amy", "imported_today") == "1"
        assert cell(browser, "zak", "failed") == "1"
        row = browser.find_element(By.CSS_SELECTOR, f'#failures tr[data-fileset="{fid}"]')
        assert str(bad) in row.text
        assert "cannot read pixels of bad-scan.czi: unsupported compression" in row.text

        # Without the token: the button is disabled, and a forged submit is refused.
        button = row.find_element(By.CSS_SELECTOR, "button")
        assert not button.is_enabled()
        browser.execute_script("arguments[0].submit()", row.find_element(By.CSS_SELECTOR, "form"))
        assert wait_for(lambda: "msg=" in browser.current_url, 30)
        message = browser.find_element(By.ID, "message").text
        assert "Retry needs the token" in message and "http-token" in message
        assert svc.fileset_state(bad) == "failed"

        # The cause is fixed; the operator pastes the token and clicks retry.
        svc.allow(bad.name)
        browser.get(page)
        token = (svc.state / "http-token").read_text().strip()
        browser.find_element(By.ID, "token").send_keys(token)
        row = browser.find_element(By.CSS_SELECTOR, f'#failures tr[data-fileset="{fid}"]')
        button = row.find_element(By.CSS_SELECTOR, "button")
        assert button.is_enabled()
        button.click()
        assert wait_for(lambda: "msg=" in browser.current_url, 30)
        assert re.search(r"Re-queued .*bad-scan\.czi", browser.find_element(By.ID, "message").text)
        svc.wait_state(bad, "imported")

        def imported_shown() -> bool:
            browser.get(page)
            return bool(browser.find_elements(By.ID, "no-failures")) and bool(
                browser.find_elements(By.CSS_SELECTOR, f'#imports tr[data-fileset="{fid}"]')
            )

        assert wait_for(imported_shown, 30, 0.5), browser.page_source
        assert cell(browser, "zak", "failed") == "0"
        assert cell(browser, "zak", "imported_today") == "1"
        # The token typed once stays for this tab (sessionStorage); the server never sends it.
        assert browser.find_element(By.ID, "token").get_attribute("value") == token
        with urllib.request.urlopen(page, timeout=30) as r:
            assert token not in r.read().decode()
