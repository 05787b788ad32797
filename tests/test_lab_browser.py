"""The widgets in a real JupyterLab: headless Chromium opens notebooks 01 and 05 and drives them.

Widgets break silently when the front-end extension and the kernel's ipywidgets disagree, and
nbval never renders them. So this test starts JupyterLab on a free local port (as root too),
opens the notebooks in Debian's ``chromium`` driven by Playwright (pointed at that system
browser; Playwright's own browser download is never used), runs the cells up to each widget,
checks that the image browser and the prediction explorer render and that changing a dropdown
changes the image shown, and takes a screenshot of each.

The notebooks run on copies in a temporary folder, so nothing the browser does (autosave, new
outputs) can touch the repository's notebooks; their outputs go to a temporary output folder
prepared with a head-only checkpoint first. It skips, saying why, where no browser can be had.

Screenshots land in a temporary folder; they replace ``docs/widget_image_browser.png`` and
``docs/widget_prediction_explorer.png`` when those are missing or when
``CONSERVIZ_UPDATE_SCREENSHOTS=1``, so an ordinary test run leaves the repository unchanged.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from conftest import PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = PROJECT_ROOT / "docs"
SCREENSHOTS = {
    "01_explore": "widget_image_browser.png",
    "05_evaluate": "widget_prediction_explorer.png",
}
# Seconds to wait for the lab to answer, and for a notebook's cells to run up to its widget.
LAB_START_TIMEOUT = 60
CELLS_TIMEOUT = 150

# JupyterLab settings for the test: every cell in the page (no windowing, so each widget is in
# the DOM), no autosave, no news or update checks (there is no network).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

# Runs in the page: the notebook open at that path, with every cell rendered.
NOTEBOOK_PANEL = """
(path) => {
  const app = window.jupyterapp;
  if (!app) { return null; }
  for (const widget of app.shell.widgets("main")) {
    if (widget.context && widget.context.path === path && widget.content) { return widget; }
  }
  return null;
}
"""

# Runs in the page: activate the cell of that id, run every cell above it, then the cell itself.
RUN_UP_TO_CELL = """
async ([path, cellId]) => {
  const app = window.jupyterapp;
  const panel = (NOTEBOOK_PANEL_SOURCE)(path);
  await panel.context.ready;
  await panel.sessionContext.ready;
  const notebook = panel.content;
  // Cells are rendered in batches after the model is ready: wait until all of them are there.
  while (notebook.widgets.length < notebook.model.cells.length) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const index = notebook.widgets.findIndex((cell) => cell.model.id === cellId);
  if (index < 0) {
    const ids = notebook.widgets.map((cell) => cell.model.id);
    throw new Error(`no cell ${cellId} among ${ids.length} of ${notebook.model.cells.length}: ${ids}`);
  }
  notebook.activeCellIndex = index;
  await app.commands.execute("notebook:run-all-above");
  notebook.activeCellIndex = index;
  await app.commands.execute("notebook:run-cell");
  return index;
}
""".replace("NOTEBOOK_PANEL_SOURCE", NOTEBOOK_PANEL.strip())


def _sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: pip install -e '.[test]' to run the browser test")
    return sync_playwright


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _widget_cell(notebook_path: Path, call: str) -> str:
    """The id of the code cell that displays a widget with ``call``."""
    notebook = nbformat.read(notebook_path, as_version=4)
    ids = [c["id"] for c in notebook.cells if c.cell_type == "code" and call in c.source]
    assert ids, f"{notebook_path.name} has no cell calling {call}"
    return ids[0]


def _quick_data(folder: Path) -> Path:
    """The quick sample of the project when it is complete, else a fresh one in ``folder``."""
    from conserviz_utils import ConservizError
    from conserviz_utils.data import load_competition
    from conserviz_utils.files.competition import SAMPLE_SETTINGS
    from conserviz_utils.tools.sample import generate_sample

    project_sample = PROJECT_ROOT / "data" / "sample-quick"
    try:
        load_competition(project_sample)
        return project_sample
    except ConservizError:
        generate_sample(folder, **SAMPLE_SETTINGS["sample-quick"], progress=False)
        return folder


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium, or a skip that says why there is none."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium; .ci/run does it)")
    sync_playwright = _sync_playwright()
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
            )
        except Exception as error:  # noqa: BLE001 - any launch failure means "no browser here"
            pytest.skip(f"{CHROMIUM} does not start headless: {str(error).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, browser):
    """JupyterLab on a free local port over copies of notebooks 01 and 05, ready to run them."""
    from conserviz_utils.course import CourseSettings, ensure_checkpoint, ensure_splits, load_course_data

    work = tmp_path_factory.mktemp("lab")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSERVIZ_", "JUPYTER"))}
    env.update(
        CONSERVIZ_QUICK="1",
        CONSERVIZ_DATA=str(_quick_data(work / "data")),
        CONSERVIZ_OUTPUTS=str(work / "outputs"),
        CONSERVIZ_EPOCHS="0",  # head only: notebook 05 needs a checkpoint, not a good one
        OMP_NUM_THREADS="1",
        JUPYTER_CONFIG_DIR=str(work / "config"),
        JUPYTER_RUNTIME_DIR=str(work / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(work / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"),
    )
    for relative, values in LAB_SETTINGS.items():
        path = work / "settings" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    root = work / "notebooks"
    root.mkdir()
    for name in SCREENSHOTS:
        shutil.copy(PROJECT_ROOT / "notebooks" / f"{name}.ipynb", root)

    port, token = _free_port(), secrets.token_hex(16)
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
    ]
    log = (work / "lab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        # While the lab starts: the checkpoint notebook 05 needs, made exactly as its
        # ensure_checkpoint would make it with these settings.
        settings = CourseSettings.from_env(env)
        data = load_course_data(settings, verbose=False)
        ensure_checkpoint(data, ensure_splits(data, settings), settings)
        deadline = time.monotonic() + LAB_START_TIMEOUT
        while True:
            assert server.poll() is None, f"JupyterLab exited:\n{(work / 'lab.log').read_text()}"
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, "JupyterLab did not answer within a minute"
                time.sleep(0.5)
        yield {"url": url, "token": token, "root": root, "work": work, "log": work / "lab.log"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _open_and_run(browser, lab, name: str, widget_call: str, widget_class: str):
    """Open notebook ``name``, run it up to its widget cell; return (page, widget locator)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # A workspace of its own: the lab must not restore the notebook an earlier page opened.
    workspace = f"{name}-{secrets.token_hex(4)}"
    page.goto(f"{lab['url']}/lab/workspaces/{workspace}/tree/{name}.ipynb?token={lab['token']}")
    path = f"{name}.ipynb"
    page.wait_for_function(
        f"(path) => {{ const panel = ({NOTEBOOK_PANEL.strip()})(path);"
        " return panel !== null && panel.content.widgets.length > 0; }",
        arg=path,
        timeout=LAB_START_TIMEOUT * 1000,
    )
    cell_id = _widget_cell(lab["root"] / path, widget_call)
    page.evaluate(RUN_UP_TO_CELL, [path, cell_id])
    widget = page.locator(f".{widget_class}")
    try:
        widget.wait_for(state="visible", timeout=CELLS_TIMEOUT * 1000)
    except Exception:  # the page's own words say more than a timeout
        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
        raise AssertionError(
            f"{name}: the widget {widget_class} did not render.\nPage errors: {errors}\n"
            f"Outputs: {[o[:300] for o in outputs[-5:]]}\nLab log: {lab['log'].read_text()[-2000:]}"
        ) from None
    widget.scroll_into_view_if_needed()
    return page, widget


def _image_source(image) -> str:
    """The src of an <img> once it has one (ipywidgets shows bytes as a blob: URL)."""
    image.wait_for(state="attached")
    for _ in range(100):
        source = image.get_attribute("src") or ""
        if source:
            return source
        time.sleep(0.1)
    raise AssertionError("the image has no src")


def _wait_for_new_source(image, before: str) -> str:
    for _ in range(200):
        source = image.get_attribute("src") or ""
        if source and source != before:
            return source
        time.sleep(0.1)
    raise AssertionError("changing the dropdown did not change the image shown")


def _save_screenshot(widget, name: str, folder: Path) -> Path:
    """Screenshot the widget into ``folder``; into docs/ when missing there or when asked."""
    shot = folder / SCREENSHOTS[name]
    widget.screenshot(path=str(shot))
    target = DOCS / SCREENSHOTS[name]
    if not target.exists() or os.environ.get("CONSERVIZ_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(shot, target)
    return shot


def test_the_image_browser_renders_and_follows_its_dropdowns(browser, lab):
    page, widget = _open_and_run(
        browser, lab, "01_explore", "image_browser(", "conserviz-image-browser"
    )
    try:
        dropdowns = widget.locator("select")
        assert dropdowns.count() == 2  # species, site
        image = widget.locator("img").first
        before = _image_source(image)
        caption = widget.locator(".widget-html-content").last
        species = [o for o in dropdowns.nth(0).locator("option").all_inner_texts() if o != "all"]
        assert len(species) >= 2
        dropdowns.nth(0).select_option(label=species[-1])
        after = _wait_for_new_source(image, before)
        assert after != before
        page.wait_for_function(
            "([el, name]) => el.innerText.includes(name)",
            arg=[caption.element_handle(), species[-1]],
            timeout=10_000,
        )
        shot = _save_screenshot(widget, "01_explore", lab["work"])
        assert shot.stat().st_size > 10_000  # an image with a photo in it, not a blank box
    finally:
        page.close()


def test_the_prediction_explorer_renders_and_follows_its_dropdowns(browser, lab):
    page, widget = _open_and_run(
        browser, lab, "05_evaluate", "prediction_explorer(", "conserviz-prediction-explorer"
    )
    try:
        dropdowns = widget.locator("select")
        assert dropdowns.count() == 3  # true species, predicted species, site
        cards = widget.locator(".conserviz-card")
        first_image = cards.first.locator("img")
        before = _image_source(first_image)
        # One bar per species (a bar is a flex row; the key above them is not).
        assert cards.first.locator(".conserviz-bars > div[style*='display:flex']").count() == 8
        # Pick the true species of the second-surest image: a different first image is shown.
        first_caption = cards.nth(0).locator(".widget-html-content").inner_text()
        second_caption = cards.nth(1).locator(".widget-html-content").inner_text()
        true_first = first_caption.split(" · ")[2].split(" ")[0]
        true_second = second_caption.split(" · ")[2].split(" ")[0]
        options = dropdowns.nth(0).locator("option").all_inner_texts()
        target = true_second if true_second != true_first else next(
            o for o in options if o not in ("all", true_first)
        )
        dropdowns.nth(0).select_option(label=target)
        _wait_for_new_source(first_image, before)
        page.wait_for_function(
            "([el, name]) => el.innerText.includes(name)",
            arg=[cards.first.element_handle(), target],
            timeout=10_000,
        )
        shot = _save_screenshot(widget, "05_evaluate", lab["work"])
        assert shot.stat().st_size > 10_000
        # The link back to the confusion matrix scrolls its heading into view.
        link = widget.locator("a").first
        anchor = (link.get_attribute("href") or "").lstrip("#")
        heading = page.locator(f"[data-jupyter-id='{anchor}'], [id='{anchor}']").first
        assert anchor and heading.count() == 1
        link.click()
        page.wait_for_function(
            "el => { const box = el.getBoundingClientRect();"
            " return box.top >= 0 && box.bottom <= window.innerHeight; }",
            arg=heading.element_handle(),
            timeout=10_000,
        )
    finally:
        page.close()
