"""The README's main job end to end: ``spatialt2i demo --fast`` builds the pairs, trains SpatialScore,
runs GRPO against it, evaluates before/after and writes the report, which then loads in headless
Chromium with its tables and images; a second run finds every stage cached. Slow (~3.5 minutes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spatialt2i.testing import browser

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spatialt2i.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--fast"]) == 0
    return out


def test_demo_writes_every_stage_and_the_report(demo_dir: Path) -> None:
    timings = json.loads((demo_dir / "timings.json").read_text())
    assert list(timings) == ["data", "reward", "rl", "eval", "report"]
    assert timings["data"]["pairs"] == 800
    # a trained reward: above chance on held-out pairs, below the oracle's upper bound of 1
    assert 0.6 < timings["reward"]["SpatialScore"] <= 1.0 and timings["reward"]["oracle"] == 1.0
    ind = json.loads((demo_dir / "eval" / "indomain.json").read_text())
    assert set(ind) == {"base", "lora", "change"} and ind["base"]["n_prompts"] == 60
    c = ind["change"]
    assert timings["eval"]["all_correct_change"]["only_before"] == c["only_before"]
    assert c["only_after"] - c["only_before"] == round(60 * (ind["lora"]["all_correct"] - ind["base"]["all_correct"]))
    html = (demo_dir / "report.html").read_text()
    for text in ("Pair dataset", "SpatialScore", "GRPO", "In-domain", "exact McNemar p"):
        assert text in html, text
    assert (demo_dir / "rl" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_demo_rerun_finds_every_stage_cached(demo_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from spatialt2i.cli import main

    before = (demo_dir / "timings.json").read_text()
    assert main(["demo", "--out", str(demo_dir), "--fast"]) == 0
    said = capsys.readouterr().out
    assert said.count("done already") == 5
    assert (demo_dir / "timings.json").read_text() == before


def test_demo_report_in_chromium(demo_dir: Path) -> None:
    gone = browser.missing()
    if gone and not os.environ.get("CI"):
        pytest.skip(f"needs {', '.join(gone)}")
    from selenium.webdriver.common.by import By

    with browser.chromium(log_console=True) as d:
        d.get((demo_dir / "report.html").as_uri())
        tables = d.find_elements(By.TAG_NAME, "table")
        assert len(tables) >= 4 and all(t.is_displayed() for t in tables)
        text = d.find_element(By.TAG_NAME, "body").text
        assert "SpatialScore" in text and "after RL" in text
        imgs = d.find_elements(By.TAG_NAME, "img")
        assert len(imgs) >= 4 and all(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in imgs)
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
