"""The course as a website: ``make site`` builds it, and headless Chromium reads it offline.

The site is built the way ``make site`` builds it (Sphinx with MyST-NB, ``docs/conf.py``, the
committed notebooks rendered as they are, nothing executed), with warnings as errors, into a
temporary folder. Then Debian's ``chromium``, driven by Playwright as in
``tests/test_lab_browser.py``, opens every page from ``file://`` and checks that every image has
loaded (each notebook shows at least the figures stored in it), that every link inside the site
leads to a page that exists and, for ``#anchor`` links, to an element with that id, and that no
page asks for anything outside the site: no script, font or image from the network.

It skips, saying why, where the website's packages (``pip install -e '.[docs]'``; ``make test``
installs them) or a browser cannot be had.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conftest import PROJECT_ROOT
from test_lab_browser import browser  # noqa: F401 - the headless Chromium fixture, shared

DOCS_PACKAGES = ("sphinx", "myst_nb", "furo", "latex2mathml")
NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))
# Where a page may fetch from: the site's own files, and what the page makes itself.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
# The build runs in CI on 2 cores next to other work; a minute and a half is plenty.
BUILD_TIMEOUT = 300


def load_site_settings():
    """docs/conf.py as a module: its table of the course's widgets and their screenshots."""
    spec = importlib.util.spec_from_file_location("conserviz_site_conf", PROJECT_ROOT / "docs" / "conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built as ``make site`` builds it but with warnings as errors."""
    missing = [name for name in DOCS_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the website's packages are not installed ({', '.join(missing)}): "
                    "pip install -e '.[docs]' (make test installs them)")
    work = tmp_path_factory.mktemp("site")
    out = work / "html"
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-c", "docs", "-d", str(work / "doctrees"),
               "-q", "-W", "--keep-going", ".", str(out)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert result.returncode == 0, f"the site does not build cleanly:\n{result.stderr[-4000:]}"
    print(f"site built in {time.perf_counter() - started:.1f} s")
    return out


def expected_figures(notebook: Path) -> int:
    """The images a notebook's page must show: its stored figures and its widgets' screenshots."""
    content = json.loads(notebook.read_text(encoding="utf-8"))
    widget_shots = load_site_settings().WIDGET_SCREENSHOTS
    states = content["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    states = states.get("state", {})
    count = 0
    for cell in content["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                count += 1
            view = data.get("application/vnd.jupyter.widget-view+json")
            if view:
                classes = states.get(view["model_id"], {}).get("state", {}).get("_dom_classes", [])
                count += any(name in widget_shots for name in classes)
    return count


def page_ids(path: Path) -> set[str]:
    return set(re.findall(r'\sid="([^"]+)"', path.read_text(encoding="utf-8")))


# Runs in the page: every image once it has settled, and every link, as absolute URLs.
PAGE_CONTENTS = """
async () => {
  const images = Array.from(document.querySelectorAll("article img"));
  await Promise.all(images.map((img) => img.decode().catch(() => null)));
  return {
    images: images.map((img) => ({src: img.currentSrc || img.src, width: img.naturalWidth})),
    links: Array.from(document.querySelectorAll("a[href]")).map((a) => a.href),
    math: document.querySelectorAll("article math").length,
  };
}
"""


def open_offline(chromium, url: str):
    """Open ``url``; return the page and the list that records every request it makes."""
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(url, wait_until="load")
    return page, requests


def test_the_site_has_a_page_per_notebook_and_the_readme_and_docs(site):
    for notebook in NOTEBOOKS:
        assert (site / "notebooks" / f"{notebook.stem}.html").is_file(), f"no page for {notebook.name}"
    assert (site / "README.html").is_file()
    for page in (PROJECT_ROOT / "docs").glob("*.md"):
        assert (site / "docs" / f"{page.stem}.html").is_file(), f"no page for docs/{page.name}"
    assert (site / "index.html").is_file() and (site / ".nojekyll").is_file()


def test_every_page_renders_its_figures_offline_and_every_link_resolves(site, browser):  # noqa: F811
    page, requests = open_offline(browser, (site / "index.html").as_uri())
    # The top of the site opens the course's front page.
    page.wait_for_url("**/docs/index.html", timeout=10_000)
    page.close()

    pages = [path for path in sorted(site.glob("*.html")) if path.name != "index.html"]
    pages += sorted(site.glob("docs/*.html")) + sorted(site.glob("notebooks/*.html"))
    ids = {path: page_ids(path) for path in pages}
    figures = {notebook.stem: expected_figures(notebook) for notebook in NOTEBOOKS}
    problems: list[str] = []
    for path in pages:
        page, page_requests = open_offline(browser, path.as_uri())
        try:
            contents = page.evaluate(PAGE_CONTENTS)
        finally:
            page.close()
        requests += page_requests
        name = path.relative_to(site).as_posix()
        broken = [image["src"] for image in contents["images"] if image["width"] == 0]
        if broken:
            problems.append(f"{name}: images that did not load: {broken}")
        if path.parent.name == "notebooks" and len(contents["images"]) < figures[path.stem]:
            problems.append(f"{name}: {len(contents['images'])} images shown, "
                            f"{figures[path.stem]} stored in the notebook")
        notebook = PROJECT_ROOT / "notebooks" / f"{path.stem}.ipynb"
        if path.parent.name == "notebooks" and "$$" in notebook.read_text() and contents["math"] == 0:
            problems.append(f"{name}: its formulas are not rendered as MathML")
        for link in contents["links"]:
            parts = urlsplit(link)
            if parts.scheme != "file":
                continue  # a link out of the site, followed only by a reader who clicks it
            target = Path(unquote(parts.path))
            if not target.exists():
                problems.append(f"{name}: link to a missing file {target}")
            elif parts.fragment and target in ids and unquote(parts.fragment) not in ids[target]:
                problems.append(f"{name}: link to a missing anchor {link}")
    assert not problems, "\n".join(problems)
    fetched = sorted({url for url in requests if not url.startswith(LOCAL_SCHEMES)})
    assert not fetched, f"pages asked the network for: {fetched}"
    outside = sorted({url for url in requests if url.startswith("file:") and not
                      Path(unquote(urlsplit(url).path)).is_relative_to(site)})
    assert not outside, f"pages read files outside the site: {outside}"
