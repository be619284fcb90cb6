"""Headless Chromium drives the review page with the keyboard; the server is SIGKILLed and
restarted, and every verdict is still there.

Needs Debian's ``chromium`` + ``chromium-driver`` and ``selenium`` (PyPI). Skipped only when
they are missing and ``CI`` is unset; in CI a missing browser fails the test.
"""

import os

import httpx
import pytest

from spatialt2i.testing import browser
from spatialt2i.testing.pairs import ReviewServer, make_pair_dataset

def _need_browser():
    gone = browser.missing()
    if gone and not os.environ.get("CI"):
        pytest.skip(f"browser test needs {', '.join(gone)}")


@pytest.fixture()
def driver():
    _need_browser()
    with browser.chromium() as d:
        yield d


def test_keyboard_review_survives_server_restart(tmp_path, driver):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    ids = make_pair_dataset(tmp_path / "ds", n_train=4, n_test=2)
    srv = ReviewServer(tmp_path / "ds", "--reviewers-per-pair", "1").start()
    wait = WebDriverWait(driver, 20)
    el = lambda css: driver.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    state = lambda: driver.execute_script("return document.body.dataset.state")  # noqa: E731

    def key(k):
        ActionChains(driver).send_keys(k).perform()

    def at(pid, verdict=None, st="ready"):
        wait.until(lambda d: state() == st and el("#pair").get_attribute("data-pair-id") == pid)
        if verdict is not None:
            assert el("#pair").get_attribute("data-verdict") == verdict
        return el("#pair")

    def counts():
        return {k: int(el(f"#n-{k}").text) for k in ("accepted", "rejected", "skipped", "remaining")}

    try:
        driver.get(srv.url)
        wait.until(lambda d: state() == "login")
        el("#login-name").send_keys("alice", Keys.ENTER)

        at(ids[0], "")
        # the perturbed relation is highlighted in both prompts; both images are shown
        pair = httpx.get(f"{srv.url}/api/pairs/{ids[0]}").json()
        assert [m.text for m in driver.find_elements(By.CSS_SELECTOR, "#prompt mark.rel")] == \
            [pair["perturbations"][0]["before"]]
        assert [m.text for m in driver.find_elements(By.CSS_SELECTOR, "#perturbed-prompt mark.rel")] == \
            [pair["perturbations"][0]["after"]]
        assert el("#perturbed-prompt").text == pair["perturbed_prompt"]
        wait.until(lambda d: d.execute_script(
            "return ['img-chosen','img-rejected'].every(i => document.getElementById(i).naturalWidth === 32)"))
        assert ids[0] in el("#meta").text and "flip" in el("#meta").text

        key("a")                                  # accept ids[0]
        at(ids[1])
        key("r")                                  # reject ids[1] with a reason
        wait.until(lambda d: state() == "reason")
        key("chosen also wrong")
        key(Keys.ENTER)
        at(ids[2])
        key("s")                                  # skip ids[2] ...
        at(ids[3])
        key("b")                                  # ... go back to it ...
        at(ids[2], "skip")
        key("a")                                  # ... and accept it after all
        at(ids[3], "")
        key("r")                                  # start a reject, then cancel with Esc
        wait.until(lambda d: state() == "reason")
        key(Keys.ESCAPE)
        at(ids[3], "")
        key("a")
        at(ids[4])
        key("r")                                  # reject without a reason
        wait.until(lambda d: state() == "reason")
        key(Keys.ENTER)
        at(ids[5], "")
        assert counts() == {"accepted": 3, "rejected": 2, "skipped": 0, "remaining": 1}

        srv.kill()                                # SIGKILL, then a fresh server on the same port
        srv.start()
        driver.refresh()                          # the page remembers the reviewer's name
        at(ids[5], "")
        assert counts() == {"accepted": 3, "rejected": 2, "skipped": 0, "remaining": 1}
        for pid, verdict in [(ids[4], "reject"), (ids[3], "accept"), (ids[2], "accept"),
                             (ids[1], "reject"), (ids[0], "accept")]:
            key("b")
            at(pid, verdict)
            if pid == ids[1]:
                assert "chosen also wrong" in el("#my-verdict").text
        for pid in ids[1:]:                       # keys are ignored while a pair loads: step and wait
            key(Keys.ARROW_RIGHT)
            at(pid)
        key("a")
        wait.until(lambda d: state() == "done")
        assert el("#done").is_displayed()
        assert counts() == {"accepted": 4, "rejected": 2, "skipped": 0, "remaining": 0}

        st = httpx.get(f"{srv.url}/api/stats").json()
        alice, = st["reviewers"]
        assert (alice["reviewer"], alice["accepted"], alice["rejected"], alice["remaining"]) == ("alice", 4, 2, 0)
    finally:
        srv.stop()
