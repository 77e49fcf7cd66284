"""The page at /ui in a real browser (Debian's Chromium, driven by Playwright) against the real server with API
keys: it loads, a stream runs to its end, what it draws equals what the API answers, a bad CSV gets a clear
message. Screenshots go to docs/images/ for the README. Run by ``make ui-test``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from ..conftest import ROOT, running_server

pytestmark = pytest.mark.ui
KEY = "page-key"
AUTH = {"authorization": f"Bearer {KEY}"}
IMAGES = ROOT / "docs" / "images"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_server(ROOT / "models", {"LSTM_WORKERS": "1", "LSTM_API_KEYS": KEY}) as (address, proc):
        yield address
        proc.terminate()
        proc.wait(20)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    assert chromium, "make ui-test installs Debian's chromium"
    from playwright.sync_api import sync_playwright  # installed by make ui-test; make test deselects these tests

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture()
def page(browser: Any, url: str) -> Iterator[Any]:
    opened = browser.new_page(viewport={"width": 1000, "height": 1400})
    errors: list[str] = []
    opened.on("pageerror", lambda e: errors.append(str(e)))
    opened.goto(f"{url}/ui")
    yield opened
    opened.close()
    assert not errors, errors  # no script error on the way


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def load_models(page: Any) -> None:
    page.fill("#key", KEY)
    page.click("#connect")
    expect(page.locator("#model-info")).to_contain_text("reads")  # the page's CSP allows no eval: no wait_for_function


def test_without_the_key_the_page_says_so_and_with_it_streams_to_the_end(page: Any, url: str) -> None:
    expect(page.locator("#error")).to_contain_text("API key")
    load_models(page)
    assert "forecasts temp_max up to 7 steps ahead" in page.locator("#model-info").text_content()
    assert page.locator("#chunk").get_attribute("max") == "1024"  # 131072 explained values / (2 layers x 64 units)
    page.fill("#start", "1200")
    page.fill("#steps", "120")
    page.fill("#chunk", "20")
    page.select_option("#interval", "0.8")
    page.click("#run")
    page.wait_for_selector("body[data-done=true]", timeout=30_000)
    assert page.locator("#status").text_content() == "done: 120 steps in 6 chunks"
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / "ui-stream.png"), full_page=True)

    # What was drawn equals what the API answers for the same rows in one call.
    rows = httpx.get(f"{url}/ui/data/seattle-weather", headers=AUTH).json()["rows"][1200:1320]
    body = {"inputs": [rows], "forecast": {"horizon": 7, "quantiles": [0.1, 0.9]}}
    answer = httpx.post(f"{url}/predict", json=body, headers=AUTH).json()
    one_step = json.loads(page.locator("#one-step").get_attribute("data-values"))
    np.testing.assert_allclose(one_step, np.array(answer["outputs"][0])[:, 0], rtol=0, atol=1e-5)
    points = page.locator(".ahead-point")
    assert points.count() == 7
    drawn = {name: [float(points.nth(k).get_attribute(f"data-{name}")) for k in range(7)]
             for name in ("value", "low", "high")}  # fmt: skip
    forecast = answer["forecast"][0]
    np.testing.assert_allclose(drawn["value"], np.array(forecast["mean"])[:, 0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(drawn["low"], np.array(forecast["quantiles"]["0.1"])[:, 0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(drawn["high"], np.array(forecast["quantiles"]["0.9"])[:, 0], rtol=0, atol=1e-5)
    cells = page.locator("#forecast td[data-value]")
    table = [float(cells.nth(i).get_attribute("data-value")) for i in range(cells.count())]
    assert table[::3] == pytest.approx(drawn["value"], abs=1e-6)
    # The heat maps: the top layer's gates and cell state, one column per step and one row per unit, the units in
    # the order python -m training explain gives them (longest memory on top); their values are the API's.
    explained = httpx.post(f"{url}/predict", json={"inputs": [rows], "explain": True}, headers=AUTH).json()
    drawn_maps = page.evaluate("() => window.lstmPage.run.maps")
    for gate in ("forget", "input", "output", "cell"):
        np.testing.assert_allclose(drawn_maps[gate], explained["explanation"][0][gate][-1], rtol=0, atol=1e-5)
        size = page.locator(f"#map-{gate}").evaluate("c => [c.width, c.height]")
        assert size == [120, 64]
    order = np.argsort(-np.mean(explained["explanation"][0]["forget"][-1], axis=0), kind="stable")
    assert page.evaluate("() => window.lstmPage.run.order") == order.tolist()


@pytest.mark.parametrize(
    ("csv", "says"),
    [
        ("a,b\n1,2", "CSV: no column precipitation, temp_max, temp_min, wind."),
        ("precipitation,temp_max,temp_min,wind\n0,11.1,4.4,2.8\n0,9.4,x,4.1", 'CSV line 3: "x" in column temp_min'),
        ("precipitation,temp_max,temp_min,wind\n0,11.1,4.4", "CSV line 2: 3 values, but the header names 4"),
        ("precipitation,temp_max,temp_min,wind", "give a header row, then at least one row"),
    ],
)
def test_a_bad_csv_gets_a_clear_message(page: Any, csv: str, says: str) -> None:
    load_models(page)
    page.check('input[name="source"][value="csv"]')
    page.fill("#csv", csv)
    page.click("#run")
    expect(page.locator("#error")).to_contain_text(says)
    if "no column" in says:
        page.screenshot(path=str(IMAGES / "ui-bad-csv.png"), full_page=False)


def test_a_pasted_csv_streams_and_equals_the_api(page: Any, url: str) -> None:
    rows = httpx.get(f"{url}/ui/data/seattle-weather", headers=AUTH).json()["rows"][:30]
    text = "precipitation,temp_max,temp_min,wind\n" + "\n".join(",".join(str(v) for v in r) for r in rows)
    load_models(page)
    page.check('input[name="source"][value="csv"]')
    page.fill("#csv", text)
    page.fill("#chunk", "7")
    page.click("#run")
    page.wait_for_selector("body[data-done=true]", timeout=30_000)
    assert page.locator("#status").text_content() == "done: 30 steps in 5 chunks"
    answer = httpx.post(f"{url}/predict", json={"inputs": [rows]}, headers=AUTH).json()
    drawn = json.loads(page.locator("#one-step").get_attribute("data-values"))
    np.testing.assert_allclose(drawn, np.array(answer["outputs"][0])[:, 0], rtol=0, atol=1e-5)
