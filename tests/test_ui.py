"""`sluice ui` in a real browser: headless Chromium (Debian's, via its chromedriver) driven by Selenium, against a
bucket the real chain filled (two runs, rows quarantined, an unreadable drop). Every page is clicked through,
its content checked against the documents in the bucket, and a screenshot saved under `.ci/artifacts/`.

The browser is installed by `make browser` (part of `make test`); without it these tests skip on a laptop and
fail under CI.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from sluice.core.settings import Settings
from sluice.ml.registry import ModelRegistry
from tests.chain import DATASET
from tests.conftest import ROOT, missing
from tests.populate import BAD_KEY

ARTIFACTS = ROOT / ".ci" / "artifacts"
pytestmark = pytest.mark.slow


def _browser_paths() -> tuple[str, str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        missing("no Chromium and chromedriver on PATH; install them with `make browser` "
                "(apt-get install chromium chromium-driver)")
    assert binary and driver
    return binary, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium."""
    binary, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def dashboard() -> Iterator[dict[str, Any]]:
    """The chain run twice on moto (in-process), then the dashboard on a free port, served by uvicorn."""
    import uvicorn
    from dramatiq.brokers.stub import StubBroker
    from moto import mock_aws

    from sluice.handlers import build_pipeline
    from sluice.infra.online import MemoryOnline
    from sluice.infra.state import MemoryState
    from sluice.service import build_runtime
    from sluice.ui import Dashboard
    from tests.chain import prepare
    from tests.populate import populate

    _browser_paths()  # no browser: skip (or fail under CI) before the chain runs
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            mp.setenv(name, value)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        with mock_aws():
            settings = replace(Settings(), bucket="sluice-ui", broker_url="memory://")
            prepare(settings)
            state = MemoryState()
            rt = build_runtime(settings, build_pipeline(), broker=StubBroker(), state=state,
                               online=MemoryOnline())
            made = populate(rt)
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            server = uvicorn.Server(uvicorn.Config(Dashboard(settings, store=rt.store, state=state).app(),
                                                   host="127.0.0.1", port=port, log_level="warning"))
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            deadline = time.monotonic() + 10
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.started, "the dashboard did not start"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            yield {"url": f"http://127.0.0.1:{port}", "store": rt.store, "registry": ModelRegistry(rt.store, state),
                   **made}
            server.should_exit = True
            thread.join(timeout=10)


def _bucket(store: Any) -> dict[str, str | None]:
    return {k: (info.etag if (info := store.head(k)) else None) for k in store.keys("")}


def _shot(browser: Any, name: str) -> None:
    browser.save_screenshot(str(ARTIFACTS / f"dashboard-{name}.png"))


def _text(browser: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def _click(browser: Any, link_text: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.PARTIAL_LINK_TEXT, link_text).click()


def _wait_for(browser: Any, css: str, timeout_s: float = 30) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout_s).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def _submit(browser: Any, field: Any, timeout_s: float = 30) -> None:
    """Submit `field`'s form and wait until the page it was on has gone (a submit can return before that)."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element("tag name", "html")
    field.submit()
    WebDriverWait(browser, timeout_s).until(expected_conditions.staleness_of(page))


def _rows(browser: Any, table: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in browser.find_elements(By.CSS_SELECTOR, f"#{table} tr")[1:]]


def _images_loaded(browser: Any) -> list[int]:
    return list(browser.execute_script(
        "return Array.from(document.querySelectorAll('img.plot')).map(i => i.complete ? i.naturalWidth : 0)"))


def test_drops_quarantine_and_drift_pages(browser: Any, dashboard: dict[str, Any]) -> None:
    store = dashboard["store"]
    before = _bucket(store)
    browser.get(dashboard["url"])
    assert "validated 2" in _text(browser, "#datasets") and "quarantined 1" in _text(browser, "#datasets")
    _shot(browser, "overview")
    _click(browser, DATASET)
    ledger = {row[0]: row for row in _rows(browser, "ledger")}
    assert set(ledger) == {f"incoming/{DATASET}/a.csv", f"incoming/{DATASET}/b.csv", BAD_KEY}
    assert ledger[BAD_KEY][2] == "quarantined" and "separated by ';'" in ledger[BAD_KEY][6]
    b = ledger[f"incoming/{DATASET}/b.csv"]
    assert b[2] == "validated" and "1 quarantined" in b[5]
    assert ledger[f"incoming/{DATASET}/a.csv"][3].startswith("registered")
    _shot(browser, "dataset")

    # The rows split out of b.csv, with the offending value on the page.
    from sluice.ml import quarantine

    [rows_entry] = [e for e in quarantine.entries(store, DATASET) if e.scope == "rows"]
    browser.find_element("css selector", f"#quarantine a[href$='/{rows_entry.id[:16]}']").click()
    assert "mean_texture" in _text(browser, "#failures")
    example = _rows(browser, "rows")
    assert len(example) == rows_entry.report["rows"]["quarantined"]
    assert "-5" in example[0]
    assert "quarantine replay" in browser.page_source
    _shot(browser, "quarantine")

    # Drift of b.csv's data version against the champion's training profile, column by column.
    browser.back()
    manifest = store.get_json(f"validated/{DATASET}/{rows_entry.report['data_version']}/manifest.json")
    [link] = [a for a in browser.find_elements("css selector", "#data-versions a")
              if a.text == manifest["data_version"][:12]]
    link.click()
    psi = {row[0]: float(row[1]) for row in _rows(browser, "psi")}
    assert psi == pytest.approx(manifest["drift"]["psi"], abs=1e-4)
    assert manifest["drift"]["reference_run"] in _text(browser, "#drift-summary")
    _shot(browser, "drift")
    assert _bucket(store) == before, "the dashboard changed the bucket"


def test_a_drops_trace_page_from_the_ledger(browser: Any, dashboard: dict[str, Any]) -> None:
    """The drops list links each drop to its path: every stage with its start, end and outcome."""
    from selenium.webdriver.common.by import By

    store = dashboard["store"]
    before = _bucket(store)
    first, _second = dashboard["runs"]
    browser.get(f"{dashboard['url']}/datasets/{DATASET}")
    links = {tr.find_elements(By.TAG_NAME, "td")[0].text: tr.find_element(By.CSS_SELECTOR, "a.trace")
             for tr in browser.find_elements(By.CSS_SELECTOR, "#ledger tr")[1:]}
    entries = {e["key"]: e for e in (store.get_json(k) for k in store.keys(f"ledger/{DATASET}/"))}
    a = entries[f"incoming/{DATASET}/a.csv"]
    links[a["key"]].click()
    assert _text(browser, "#trace-id") == a["trace_id"] and a["key"] in _text(browser, "#drop")
    steps = {row[0]: row for row in _rows(browser, "steps")}
    assert list(steps) == ["validate", "features", "train", "benchmark", "register", "event"]
    assert steps["validate"][4] == "validated" and a["data_version"][:12] in steps["validate"][5]
    assert steps["train"][4] == "trained" and first["run_id"] in steps["train"][5]
    assert steps["register"][4] == "v1" and steps["event"][4] == "sluice.model.promoted"
    for stage in ("validate", "features", "train", "benchmark", "register"):
        row = steps[stage]
        # Start, end, took, and the attempts: done (the second chain run delivers a.csv's documents again).
        assert row[1] <= row[2] and row[3].endswith(" s") and row[6].split()[0] == "done", row
        assert set(row[6].split()[1:]) <= {"duplicate-delivery"}, row
    _shot(browser, "trace")
    browser.find_element(By.PARTIAL_LINK_TEXT, f"runs/{DATASET}/{first['run_id']}/run.json").click()
    assert first["run_id"] in _text(browser, "h1")  # the run's own page, from the document the trace named

    browser.get(f"{dashboard['url']}/datasets/{DATASET}")
    browser.find_elements(By.CSS_SELECTOR, "#ledger tr")  # the page again, then the quarantined drop's path
    [bad_link] = [tr.find_element(By.CSS_SELECTOR, "a.trace")
                  for tr in browser.find_elements(By.CSS_SELECTOR, "#ledger tr")[1:]
                  if tr.find_elements(By.TAG_NAME, "td")[0].text == BAD_KEY]
    bad_link.click()
    [row] = _rows(browser, "steps")
    assert row[0] == "validate" and row[4] == "quarantined" and "separated by ';'" in row[5]
    browser.get(f"{dashboard['url']}/trace/0123456789abcdef")
    assert "no drop has the trace id" in browser.page_source
    assert _bucket(store) == before, "the dashboard changed the bucket"


def test_runs_plots_and_comparison(browser: Any, dashboard: dict[str, Any]) -> None:
    first, second = dashboard["runs"]
    browser.get(f"{dashboard['url']}/runs/{DATASET}")
    listed = [row[2] for row in _rows(browser, "runs")]
    assert listed == [first["run_id"], second["run_id"]]
    browser.find_element("id", "compare").click()
    _wait_for(browser, "#comparison")  # a form submit: the click can return before the next page is there
    comparison = {row[0]: row[1:] for row in _rows(browser, "comparison")}
    metric = first["metric"]
    assert comparison[metric] == [f"{run['holdout']['metrics'][metric]:.4f}" for run in (first, second)]
    assert comparison["holdout_rows"] == [str(first["holdout"]["rows"]), str(second["holdout"]["rows"])]
    assert all(width > 0 for width in _images_loaded(browser)) and len(_images_loaded(browser)) == 4
    _shot(browser, "compare")

    _click(browser, second["run_id"])
    shown = [row[0] for row in _rows(browser, "importance")]
    by_gain = sorted(second["feature_importance"], key=lambda f: (-second["feature_importance"][f], f))
    assert shown == by_gain[:len(shown)] and len(shown) == min(10, len(by_gain))
    widths = _images_loaded(browser)
    assert len(widths) == 2 and all(w > 0 for w in widths), "the run's plots did not load from the bucket"
    _shot(browser, "run")


def test_registry_history_at_and_lineage(browser: Any, dashboard: dict[str, Any]) -> None:
    registry = dashboard["registry"]
    snap = registry.snapshot(DATASET)
    browser.get(f"{dashboard['url']}/models/{DATASET}")
    stages = {row[0]: row[1] for row in _rows(browser, "versions")}
    assert stages == {f"v{n}": stage for n, stage in snap.stages.items()}
    history = browser.find_elements("css selector", "#history li")
    assert len(history) == len(snap.records)

    # `?at=` answered on the page: before the first record, and now.
    field = browser.find_element("id", "at")
    field.clear()
    field.send_keys("2000-01-01T00:00:00Z")
    _submit(browser, field)
    assert "no version was champion yet" in _text(browser, "#answer")
    field = browser.find_element("id", "at")
    field.clear()
    field.send_keys(datetime.now(UTC).isoformat())
    _submit(browser, field)
    assert f"v{snap.champion} was champion" in _text(browser, "#answer")
    _shot(browser, "model")

    # The newest version's lineage: model <- run <- feature set <- data versions <- source objects and sha256.
    newest = registry.versions(DATASET)[-1]
    browser.find_element("css selector", f"#versions a[href$='/{newest['version']}']").click()
    nodes = {n.get_attribute("data-id") for n in browser.find_elements("css selector", "#lineage g.node")}
    lineage = newest["lineage"]
    assert nodes == {"version", "run", "features", *(f"dv:{d}" for d in lineage["data_versions"]),
                     *(f"src:{s['sha256']}" for s in lineage["sources"])}
    sources = {row[0]: row[1] for row in _rows(browser, "sources")}
    assert sources == {f"s3://{s['bucket']}/{s['key']}": s["sha256"] for s in lineage["sources"]}
    _shot(browser, "lineage")

    browser.get(f"{dashboard['url']}/models/no-such-model")
    assert "no model 'no-such-model'" in _text(browser, "#error")
