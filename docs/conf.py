"""The course as a static website: ``make site`` (``sphinx-build -b html -c docs . build/site``).

The source folder is the project root, so the notebooks, the README and the docs pages are read
where they are. The notebooks are rendered with the outputs committed in them (nothing runs), and
every page works from ``file://`` with no network: no script or font is fetched from elsewhere,
formulas become MathML when the site is built, and interactive widgets (which need a running
kernel) leave no empty box behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from docutils import nodes
from latex2mathml.converter import convert as latex_to_mathml

project = "conserviz"
author = "the conserviz authors"
copyright = "the conserviz authors, MIT license"

extensions = ["myst_nb"]
root_doc = "docs/index"
# Only the course's pages: the folders around them (.venv, data, outputs) are never walked.
include_patterns = ["README.md", "docs/*.md", "notebooks/*.ipynb"]
exclude_patterns = [".*", "build", "data", "outputs", "notebooks/solutions", "tests", "benchmarks"]

# The committed outputs are the course's reference run; the site shows them as they are.
nb_execution_mode = "off"
# The widgets' JavaScript would come from a CDN, and their saved state cannot run without a
# kernel anyway: progress bars are left out, and the course's own widgets are shown by the
# screenshots that tests/test_lab_browser.py takes of them in a real JupyterLab.
nb_ipywidgets_js = {}
nb_merge_streams = True
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = "conserviz"
html_math_renderer = "mathml"
html_copy_source = False
html_show_sourcelink = False

WIDGET_VIEW = '<script type="application/vnd.jupyter.widget-view+json">'
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# The course's widgets, by the CSS class they carry: their screenshot in docs/ and their name.
WIDGET_SCREENSHOTS = {
    "conserviz-image-browser": ("widget_image_browser.png", "image browser"),
    "conserviz-prediction-explorer": ("widget_prediction_explorer.png", "prediction explorer"),
}

# The page a visitor lands on at the top of the site (and of GitHub Pages).
REDIRECT = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>conserviz</title>
<meta http-equiv="refresh" content="0; url=docs/index.html"></head>
<body><p><a href="docs/index.html">The conserviz course</a></p></body></html>
"""


def visit_inline_math(translator, node):
    """Write ``$…$`` as inline MathML, which browsers draw without any script."""
    translator.body.append(latex_to_mathml(node.astext()))
    raise nodes.SkipNode


def visit_block_math(translator, node):
    """Write ``$$…$$`` as a MathML block."""
    mathml = latex_to_mathml(node.astext(), display="block")
    translator.body.append(f'<div class="math notranslate">{mathml}</div>')
    raise nodes.SkipNode


def show_widgets_as_screenshots(app, doctree):
    """Replace each widget output of a notebook: its screenshot for the course's widgets, else nothing."""
    source = Path(app.env.doc2path(app.env.docname))
    if source.suffix != ".ipynb":
        return
    metadata = json.loads(source.read_text(encoding="utf-8"))["metadata"]
    states = metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for raw in list(doctree.findall(nodes.raw)):
        text = raw.astext()
        if not text.startswith(WIDGET_VIEW):
            continue
        model_id = json.loads(text.removeprefix(WIDGET_VIEW).removesuffix("</script>"))["model_id"]
        classes = states.get(model_id, {}).get("state", {}).get("_dom_classes", [])
        shots = [WIDGET_SCREENSHOTS[name] for name in classes if name in WIDGET_SCREENSHOTS]
        if not shots:
            raw.parent.remove(raw)
            continue
        screenshot, name = shots[0]
        note = nodes.paragraph()
        note += nodes.emphasis(text=f"The {name} as it runs in JupyterLab (a screenshot): open the "
                                    "notebook in JupyterLab to use it.")
        raw.replace_self([nodes.image(uri=f"/docs/{screenshot}", alt=f"the {name}"), note])


def write_redirect(app, exception):
    """Put an ``index.html`` at the top of the site that opens the course's front page."""
    if exception is None and app.builder.format == "html":
        (Path(app.outdir) / "index.html").write_text(REDIRECT, encoding="utf-8")
        # GitHub Pages would otherwise hide the folders whose names start with "_".
        (Path(app.outdir) / ".nojekyll").write_text("", encoding="utf-8")
        # Publishing commits the folder as it is (docs/teaching.md): Sphinx's caches stay out.
        (Path(app.outdir) / ".gitignore").write_text(".doctrees/\n.buildinfo\n", encoding="utf-8")


def setup(app):
    """Register the MathML renderer, the widgets' screenshots and the top-level redirect."""
    app.add_html_math_renderer("mathml", (visit_inline_math, None), (visit_block_math, None))
    # Before Sphinx collects the images of the page (priority 500), so the screenshots are copied.
    app.connect("doctree-read", show_widgets_as_screenshots, priority=400)
    app.connect("build-finished", write_redirect)

