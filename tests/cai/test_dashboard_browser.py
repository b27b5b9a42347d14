"""The dashboard page in headless Chromium over fixed data: Chart.js (as `cai setup` fetched it)
draws the learning curve from round summaries that carry the gate's figures, and a held-out
report; the timeline says why a round was rejected; the RL card shows rewards per round and
the newest samples; the page logs no error."""

from __future__ import annotations

import time

import pytest

from cai.dashboard import app as dashboard_app
from cai.dashboard import views
from core.settings import StackSettings
from stack import web_assets
from tests.cai.conftest import served
from tests.cai.test_dashboard import RL_ROUND, RL_SAMPLES, ROUNDS, StubCollector, share
from tests.conftest import service_unavailable


def wait_until(driver, script: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


@pytest.fixture(scope="module")
def site():
    chart = web_assets.asset_path(StackSettings(), web_assets.CHART_JS, "dist/chart.umd.js")
    if not chart.is_file():
        service_unavailable(f"Chart.js missing at {chart}; run `cai setup`")
    report = {"policies": {"v1": {"harmless": share(3, 32)}, "v3": {"harmless": share(12, 32)}}}
    snap = {"seq": 1, "time": time.time(), "topics": {"prompts": {"total": 5, "per_second": 0.5,
                                                                  "per_minute": 5, "lag": {}}},
            "rounds": views.timeline(ROUNDS), "curve": views.learning_curve(ROUNDS, report),
            "examples": [], "dead_letters": views.dead_letters([]),
            "rl": views.rl_samples(RL_SAMPLES, RL_ROUND), "errors": []}
    with served(dashboard_app.create_app(StubCollector(snap), chart)) as base:
        yield base


def test_the_learning_curve_and_the_timeline_render(browser, site):
    browser.get(site + "/")
    wait_until(browser, "return window.caiDashboard && window.caiDashboard.received > 0")
    data = browser.execute_script("""
        const chart = window.caiDashboard.charts['curve-harmless'];
        return {labels: chart.data.labels,
                sets: chart.data.datasets.map(d => ({label: d.label, data: d.data}))};""")
    assert data["labels"] == ["v1", "v2", "v3"]
    sets = {s["label"]: s["data"] for s in data["sets"]}
    assert sets["dev split (gate)"][:2] == [pytest.approx(10.0), pytest.approx(45.0)]
    assert sets["dev split (gate)"][2] is None  # round 3 had no gate
    low, high = sets["dev split (gate) lo"][0], sets["dev split (gate) hi"][0]
    assert low < 10.0 < high
    held_out = sets["held-out (report)"]
    assert held_out[0] == pytest.approx(9.38) and held_out[1] is None
    rejected = browser.find_element("css selector", '#rounds tr[data-round="2"]').text
    assert "rejected" in rejected and "dev over-refusal 0.600" in rejected
    assert "over_refusal: 10.0% → 60.0%" in rejected
    assert browser.find_element("css selector", "#rl-card").is_displayed()
    assert browser.find_element("css selector", '#rl-rounds tr[data-round="5"]').text.startswith(
        "5 2 0.750 25.0")
    assert "I won't: it is theft." in browser.find_element("css selector", "#rl-samples").text
    assert "75.0% (n=40)" in browser.find_element("css selector", "#rl").text
    assert browser.find_element("css selector", "#status-text").text == "live"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
