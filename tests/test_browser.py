"""A real browser: JupyterLab serves notebook 04, headless Chromium (Playwright) runs every cell,
drags the eps slider and checks that the prediction text changes and that no cell shows an error.

Needs Debian's chromium and the playwright package (.ci/run installs both); without them the test
is skipped with the reason printed in the summary (pytest -ra), never silently.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from featlab import runner
from test_notebooks import CI_PARAMETERS

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = ROOT / "build" / "browser_attack_explorer.png"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("BROWSER TEST SKIPPED: Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright", reason="BROWSER TEST SKIPPED: pip install playwright")
    import papermill as pm
    root = tmp_path_factory.mktemp("lab")
    name = "04_attack_explorer.ipynb"
    pm.execute_notebook(str(runner.NOTEBOOK_DIR / name), str(root / name), parameters=CI_PARAMETERS[name],
                        prepare_only=True)                 # CI parameters injected, nothing executed
    port, token = _free_port(), "featlab-browser-test"
    env = {k: v for k, v in os.environ.items() if k not in ("FEATLAB_NOTEBOOK_RUN", "MPLBACKEND")}
    log = open(root / "jupyter.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
                             "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
                             f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=True"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        pytest.fail("JupyterLab did not start in 90 s: " + (root / "jupyter.log").read_text()[-2000:])
    yield f"{base}/lab/tree/{name}?token={token}"
    proc.terminate()
    proc.wait(timeout=20)


def test_slider_updates_prediction_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(lab)
        page.wait_for_selector(".jp-NotebookPanel", timeout=120_000)
        try:
            select = page.locator(".jp-Dialog button", has_text="Select")      # "Select Kernel" dialog
            select.wait_for(timeout=20_000)
            select.click()
        except Exception:
            pass                                                                 # no dialog: kernel chosen
        try:
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            page.locator(".lm-MenuBar-item", has_text="Run").first.click(timeout=30_000)   # the Run menu
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click(timeout=30_000)
            summary = page.locator(".featlab-summary")
            summary.wait_for(timeout=600_000)
        except Exception:
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT.with_name("browser_failure.png")), full_page=True)
            raise
        # JupyterLab 4.6 does not draw cells off screen (their innerText stays empty): bring the explorer into view
        summary.scroll_into_view_if_needed()
        page.wait_for_function("document.querySelector('.featlab-summary').innerText.includes('attack')",
                               timeout=300_000)
        before = summary.inner_text()
        handle = page.locator(".featlab-eps .noUi-handle")
        handle.scroll_into_view_if_needed()
        box = handle.bounding_box()
        track = page.locator(".featlab-eps .noUi-target").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(track["x"] + 0.02 * track["width"], box["y"] + box["height"] / 2, steps=8)   # eps -> ~0.01
        page.mouse.up()
        page.wait_for_function("(b) => document.querySelector('.featlab-summary').innerText !== b", arg=before,
                               timeout=120_000)
        after = summary.inner_text()
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=600_000)
        n_errors = page.locator(".jp-OutputArea-output", has_text="Traceback").count()
        SCREENSHOT.parent.mkdir(exist_ok=True)
        summary.scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOT), full_page=False)
        browser.close()
    print(f"before: {before}\nafter:  {after}\nscreenshot: {SCREENSHOT}")
    assert before != after, "moving the eps slider must change the prediction text"
    assert "label" in after and ("FAILED" in after or "SUCCEEDED" in after)
    assert n_errors == 0, f"{n_errors} cell(s) show a traceback (see {SCREENSHOT})"
