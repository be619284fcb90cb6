"""The HTML report loads in headless Chromium with no console errors, shows its tables, and every
image loads."""

import os

import pytest

from spatialt2i.bench.report import Section, Table, plot_curves, write_report
from spatialt2i.testing import browser


@pytest.fixture()
def report(tmp_path):
    rows = [{"step": i, "reward_mean": 0.1 * i, "oracle_acc": 0.05 * i} for i in range(8)]
    fig = plot_curves(rows, ["reward_mean", "oracle_acc"], tmp_path / "curves.png")
    sections = [
        Section("Reward model", "Pairwise accuracy on held-out pairs.",
                tables=[Table("Accuracy", [{"model": "SpatialScore", "overall": 0.97, "1-pert": 0.95},
                                           {"model": "random", "overall": 0.5, "1-pert": 0.5}])]),
        Section("RL", tables=[Table("In-domain", [{"": "before", "oracle": 0.2}, {"": "after", "oracle": 0.5}])],
                figures=[fig]),
    ]
    return write_report(tmp_path / "report.html", "spatialt2i demo", sections)


def test_report_is_self_contained(report):
    text = report.read_text()
    assert "data:image/png;base64," in text and "src='http" not in text and 'src="http' not in text


def test_report_in_chromium(report):
    gone = browser.missing()
    if gone and not os.environ.get("CI"):
        pytest.skip(f"needs {', '.join(gone)}")
    from selenium.webdriver.common.by import By

    with browser.chromium(log_console=True) as d:
        d.get(report.as_uri())
        tables = d.find_elements(By.TAG_NAME, "table")
        assert len(tables) == 2 and all(t.is_displayed() for t in tables)
        assert "SpatialScore" in tables[0].text
        imgs = d.find_elements(By.TAG_NAME, "img")
        assert imgs and all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                            for i in imgs)
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
