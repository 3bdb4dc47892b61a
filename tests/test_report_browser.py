"""The report pages in a real browser: headless Chromium (Debian's chromium and chromium-driver, which
scripts/env.sh installs) opens a run's, a group's and a sweep's report.html from disk, built from tiny real
trainings. Each page draws without a console error, no request leaves it (its resource list is empty and its
security policy refused nothing), moving the step slider changes the pictures and shows the probe step stored in the
data, and the numbers of its claims table are those of summary.json. A sweep's cell opens its own page.

Run as a script, it screenshots a page: ``python tests/test_report_browser.py PAGE.html OUT.png [WIDTH]`` (how the
README's picture is made).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]
TOPIC = [
    "data.train_docs=200",
    "data.dev_docs=50",
    "theory.samples=200",
    "probes.docs=8",
    "train.probes=8",
    "train.steps=30",
]
INDUCTION = ["data.sequences=300", "data.length=30", "theory.kernels=50", "train.probes=4", "train.checkpoints=2"]


def browser(width: int = 1400, height: int = 1000):
    """A headless Chromium through Selenium, with a fresh profile and the console log kept; None when either is
    missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    if not (CHROMIUM.is_file() and DRIVER.is_file()):
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="toyformer-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.profile = profile
    return driver


def close(driver) -> None:
    driver.quit()
    shutil.rmtree(driver.profile, ignore_errors=True)


def open_page(driver, path: Path, timeout: float = 20.0) -> None:
    """Load a page from disk and wait until its script has drawn it (or failed to)."""
    driver.get(Path(path).resolve().as_uri())
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = driver.execute_script(
            "return [document.body.dataset.ready || '', document.querySelectorAll('.error').length]"
        )
        if state[0] == "1" or state[1]:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path}: the page was not drawn within {timeout} s")


def screenshot(page: Path, out: Path, width: int = 1400) -> Path:
    """A PNG of a whole page (its full height)."""
    driver = browser(width)
    if driver is None:
        raise SystemExit("headless Chromium is not installed (scripts/env.sh installs chromium and chromium-driver)")
    try:
        open_page(driver, page)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(width, height + 20)
        time.sleep(0.2)
        driver.save_screenshot(str(out))
    finally:
        close(driver)
    return out


# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver():
    made = browser()
    if made is None:
        pytest.skip("headless Chromium or selenium is missing: scripts/env.sh installs chromium and chromium-driver")
    yield made
    close(made)


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """A solo run, a group of two seeds and a sweep of two cells, each trained a few steps."""
    from typer.testing import CliRunner

    from toyformer.cli import app

    tmp = tmp_path_factory.mktemp("pages")
    runner = CliRunner()

    def sets(values: list[str]) -> list[str]:
        return [a for v in values for a in ("--set", v)]

    run = runner.invoke(app, ["run", "topic/s4", "--seed", "0", "--out", str(tmp / "run"), *sets(TOPIC)])
    assert run.exit_code == 0, run.output
    group = runner.invoke(app, ["run", "topic/s4", "--seeds", "0-1", "--out", str(tmp / "group"), *sets(TOPIC)])
    assert group.exit_code == 0, group.output
    spec = tmp / "tiny.toml"
    overrides = ", ".join(f'"{o}"' for o in [*INDUCTION, "train.stages.0.steps=8"])
    spec.write_text(
        f'name = "tiny"\nrecipe = "induction/grid-base"\nset = [{overrides}]\nseeds = [0, 1]\n'
        '[axes]\n"data.alpha" = [0.1, 1.0]\n[[plots]]\nvalue = "gap_share"\nx = "data.alpha"\n'
    )
    sweep = runner.invoke(app, ["sweep", str(spec), "--out", str(tmp / "sweep")])
    assert sweep.exit_code == 0, sweep.output
    return {"run": tmp / "run", "group": tmp / "group", "sweep": tmp / "sweep"}


def _quiet(driver) -> None:
    """No console error, no request that left the page, nothing the security policy refused."""
    logs = driver.get_log("browser")
    assert not [e for e in logs if e["level"] == "SEVERE"], logs
    names = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [n for n in names if not n.startswith(("data:", "blob:"))], names
    assert driver.execute_script("return document.body.dataset.violations || '0'") == "0"


def _claims(driver, summary: dict, group: bool) -> None:
    """The claims table shows summary.json's numbers, results first and sanity checks after."""
    checks = summary.get("checks", []) + summary.get("sanity_checks", [])
    rows = driver.find_elements("css selector", "#claims tr.claim")
    assert len(rows) == len(checks) > 0
    for row, check in zip(rows, checks, strict=True):
        cells = row.find_elements("css selector", "td")
        assert cells[0].text == check["name"]
        assert cells[1].text == ("yes" if check["ok"] else "NO")
        measured = cells[2]
        value = json.loads(measured.get_attribute("data-value"))
        if group:
            assert value == check["share"]
            assert float(measured.text.rstrip("%")) == pytest.approx(100 * check["share"], rel=1e-3)
        else:
            assert value == check["measured"]
            if isinstance(check["measured"], int | float):
                assert float(measured.text) == pytest.approx(check["measured"], rel=1e-3, abs=1e-12)
            else:
                assert measured.text == str(check["measured"])


def _slider_moves_the_pictures(driver, data: dict) -> None:
    from selenium.webdriver.common.keys import Keys

    section = driver.find_element("id", "matrices")
    label = driver.find_element("id", "step-value")
    assert int(label.get_attribute("data-step")) == data["steps"][-1]
    before = section.screenshot_as_png
    slider = driver.find_element("id", "step-slider")
    slider.send_keys(Keys.HOME)  # the first probe step, as a reader would with the keyboard
    assert int(label.get_attribute("data-step")) == data["steps"][0]
    after = section.screenshot_as_png
    assert after != before, "the matrices did not change with the step"
    slider.send_keys(Keys.ARROW_RIGHT)
    assert int(label.get_attribute("data-step")) == data["steps"][1]
    assert section.screenshot_as_png not in (before, after)


def test_a_run_page(driver, pages):
    from toyformer.report.page import PAGE, page_data
    from toyformer.runs import Run

    run = Run(pages["run"])
    open_page(driver, run.path / PAGE)
    _quiet(driver)
    data = page_data(run.path / PAGE)
    # the slider's steps are the probe steps stored in the run: metrics.jsonl and the matrix file
    assert data["steps"] == [r["step"] for r in run.metrics()] == list(run.matrices())
    _slider_moves_the_pictures(driver, data)
    _claims(driver, run.summary(), group=False)
    assert len(driver.find_elements("css selector", "#curves .curve")) == len(data["curves"]) > 5
    assert len(driver.find_elements("css selector", "#matrices canvas")) >= 5
    _quiet(driver)


def test_a_group_page(driver, pages):
    from selenium.webdriver.support.ui import Select

    from toyformer.report.page import PAGE, page_data

    out = pages["group"]
    open_page(driver, out / PAGE)
    _quiet(driver)
    data = page_data(out / PAGE)
    _slider_moves_the_pictures(driver, data)
    _claims(driver, json.loads((out / "summary.json").read_text()), group=True)
    section = driver.find_element("id", "matrices")
    before = section.screenshot_as_png
    Select(driver.find_element("id", "member-picker")).select_by_index(1)
    assert section.screenshot_as_png != before, "picking the other member did not change its matrices"
    assert driver.find_element("id", "member-link").get_attribute("href").endswith("seed-1/report.html")
    _quiet(driver)


def test_a_sweep_page(driver, pages):
    from selenium.webdriver.common.action_chains import ActionChains

    from toyformer.report.page import PAGE

    out = pages["sweep"]
    open_page(driver, out / PAGE)
    _quiet(driver)
    summary = json.loads((out / "summary.json").read_text())
    _ = summary["cells"][0]["final"]["gap_share"]["mean"]
    cells = driver.find_elements("css selector", "#phase a.cell")
    assert [c.get_attribute("data-cell") for c in cells] == [e["name"] for e in summary["cells"]]
    rows = driver.find_elements("css selector", "#claims tr.claim")
    assert len(rows) == len(summary["checks"])
    ActionChains(driver).move_to_element(cells[1]).perform()
    tip = driver.find_element("id", "tip")
    mean = summary["cells"][1]["final"]["gap_share"]["mean"]
    assert tip.is_displayed() and f"gap_share: {mean:.4g}" in tip.text
    cells[1].click()
    open_page(driver, out / "cells" / "cell-001" / PAGE)
    assert driver.current_url.endswith("cells/cell-001/report.html")
    _quiet(driver)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    print(screenshot(Path(sys.argv[1]), Path(sys.argv[2]), *(int(w) for w in sys.argv[3:])))
