"""The page at ``GET /``, driven in a real headless Chromium (Debian's chromium + chromium-driver,
through Selenium) against a real ``adirec serve`` process."""
from __future__ import annotations

import shutil
import tempfile

import httpx
import pytest

from serve_bundles import AUTH, TOKEN, tiny_bundle

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is absent (Debian: apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    profile = tempfile.mkdtemp(prefix="adirec-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # without the networking flags Chromium hangs on a closed network
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from server_process import start_server, stop_server
    path, _, data = tiny_bundle(tmp_path_factory.mktemp("page") / "b")
    proc = start_server(path, "--require-token", env={"ADIREC_API_TOKEN": TOKEN})
    try:
        yield proc, data
    finally:
        stop_server(proc)


def _wait(driver, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(condition)


def _rows(driver, section_id):
    from selenium.webdriver.common.by import By
    table = driver.find_element(By.ID, section_id)
    return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in table.find_elements(By.TAG_NAME, "tr")[1:]]


def _submit(driver, user="", history="", k=4):
    from selenium.webdriver.common.by import By
    for field, value in (("user", user), ("history", history), ("k", str(k))):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "go").click()


def test_page_shows_history_beside_every_domains_top_k(browser, server):
    from selenium.webdriver.common.by import By
    proc, data = server
    browser.get(proc.url + "/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    user = str(data.user_keys[3])
    _submit(browser, user=user)
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#columns section")) == 1 + len(data.domains))
    api = {d: httpx.post(f"{proc.url}/v1/recommend", headers=AUTH,
                         json={"user_id": user, "domain": d, "k": 4, "include_features": True}).json()
           for d in data.domains}
    history = httpx.post(f"{proc.url}/v1/history", headers=AUTH, json={"user_id": user, "domain": "d1"}).json()
    shown = _rows(browser, "history-table")
    assert [r[1] for r in shown] == [str(i) for i in history["items"]] and shown[0][2] == history["domains"][0]
    assert "category=" in shown[0][3]  # item features beside each item
    for d in data.domains:
        rows = _rows(browser, f"top-{d}")
        assert [r[1] for r in rows] == [str(i) for i in api[d]["items"]]
        assert [float(r[2]) for r in rows] == pytest.approx([round(s, 4) for s in api[d]["scores"]], abs=1e-4)
        assert f"category={api[d]['item_features'][0]['category']}" in rows[0][3]
    assert "keeps no raw feature values" in browser.find_element(By.ID, "feature-note").text
    assert browser.find_element(By.ID, "error").text == ""


def test_page_ranks_a_typed_history_and_reports_errors(browser, server):
    from selenium.webdriver.common.by import By
    proc, data = server
    browser.get(proc.url + "/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    typed = [str(k) for k in data.item_keys[[1, 2]]]
    _submit(browser, history=", ".join(typed), k=3)
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#columns section")) == 1 + len(data.domains))
    assert [r[1] for r in _rows(browser, "history-table")] == typed
    for d in data.domains:
        want = httpx.post(f"{proc.url}/v1/recommend", headers=AUTH, json={
            "user_id": "page-visitor", "domain": d, "k": 3, "features": {"history": typed}}).json()
        assert [r[1] for r in _rows(browser, f"top-{d}")] == [str(i) for i in want["items"]]
    # a wrong token: the API's message is shown, not a blank page
    token = browser.find_element(By.ID, "token")
    token.clear()
    token.send_keys("wrong-token-0000000000")
    _submit(browser, user=str(data.user_keys[1]))
    _wait(browser, lambda d: "401" in d.find_element(By.ID, "error").text)
