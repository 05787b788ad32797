"""The notebooks' widgets: the image browser of 01 and the prediction explorer of 05.

The filtering is in plain functions (`filter_images`, `filter_predictions`), testable without a
browser; the widget classes only wire ipywidgets to them. Colours and marks are colour-blind-safe
(`conserviz_utils.palette`); dark night frames are brightened for display only.
"""

from __future__ import annotations

import html
import io

import ipywidgets as widgets
import numpy as np
import pandas as pd
from PIL import Image

from conserviz_utils.errors import DataValidationError, ImageLoadError, refuse_repeated_ids
from conserviz_utils.files.images import open_image
from conserviz_utils.files.tables import check_argument_order
from conserviz_utils.palette import NEUTRAL_COLOUR, RIGHT_COLOUR, WRONG_COLOUR, stretch_for_display
from conserviz_utils.plot_inputs import check_probs, names_of
from conserviz_utils.split import species_order

#: The dropdown entry that matches every species or site.
ALL = "all"
#: Longest side of the browser's image: large enough to spot an animal, small enough to stay quick.
BROWSER_IMAGE_SIDE = 480
#: Longest side of each image in the prediction explorer: several fit side by side.
EXPLORER_IMAGE_SIDE = 240
#: Images shown at once by the prediction explorer; a slider pages through the rest.
EXPLORER_PER_PAGE = 6
#: Width in pixels of a probability of 1 in the explorer's bars (name, bar and value fit a card).
BAR_WIDTH = 80
#: Text size of the explorer's captions and bars: about 10 pt.
CAPTION_FONT = "13px"
#: Link target of notebook 05's "### The confusion matrix": JupyterLab names a heading by its text, dashed.
CONFUSION_MATRIX_ANCHOR = "The-confusion-matrix"


def _jpeg_thumbnail(path, side: int) -> bytes:
    """The image at ``path`` as JPEG bytes, longest side at most ``side``; a dark one brightened."""
    picture = open_image(path)
    picture.thumbnail((side, side))
    buffer = io.BytesIO()
    Image.fromarray(stretch_for_display(np.asarray(picture))).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def filter_images(
    features: pd.DataFrame, labels: pd.DataFrame | pd.Series | None = None, species: str = ALL, site: str = ALL
) -> pd.DataFrame:
    """The rows ``path``, ``site`` (and ``species`` with labels) of one species at one site, `ALL` matching any."""
    columns = features.columns if isinstance(features, pd.DataFrame) else []
    missing = [c for c in ("path", "site") if c not in columns]
    if missing:
        raise DataValidationError(f"features have no {missing[0]!r} column", column=missing[0],
                                  fix="pass the features of load_competition (columns path and site)")
    table = features[["path", "site"]].copy()
    if labels is not None:
        table["species"] = names_of(labels, table.index, "these images have no label",
                                    fix="pass labels for every image, or labels=None to browse unlabelled images")
    if species != ALL:
        if labels is None:
            raise DataValidationError(f"cannot filter by species {species!r} without labels",
                                      fix="pass labels=data.train_labels")
        if species not in set(table["species"]):
            raise DataValidationError(f"no image is labelled {species!r}", column="species",
                                      fix=f"pick one of {species_order(table['species'])} or {ALL!r}")
        table = table[table["species"] == species]
    if site != ALL:
        if site not in set(features["site"]):
            raise DataValidationError(f"no image comes from site {site!r}", column="site",
                                      fix=f"pick a site of the features or {ALL!r}")
        table = table[table["site"] == site]
    return table


class _FilteredView(widgets.VBox):
    """Dropdowns that filter the rows (``_refilter``) and a slider that walks them (``_show``)."""

    _refreshing = False  # True while _rewind moves the slider: one redraw, not one per change

    def _watch(self, dropdowns: list[widgets.Dropdown], slider: widgets.IntSlider) -> None:
        """Refilter on a dropdown's change, redraw on the slider's, and draw the first view."""
        for dropdown in dropdowns:
            dropdown.observe(lambda _change: self._refilter(), names="value")
        slider.observe(self._on_slide, names="value")
        self._refilter()

    def _on_slide(self, _change: dict) -> None:
        if not self._refreshing:
            self._show()

    def _rewind(self, slider: widgets.IntSlider, last: int) -> None:
        """Put ``slider`` back at 0 over 0..``last``, disabled when there is nowhere to go."""
        self._refreshing = True
        try:
            slider.value, slider.max, slider.disabled = 0, last, last < 1
        finally:
            self._refreshing = False


def _dropdown(options, description: str) -> widgets.Dropdown:
    return widgets.Dropdown(options=[ALL, *options], value=ALL, description=description)


def _slider(description: str) -> widgets.IntSlider:
    return widgets.IntSlider(min=0, max=0, value=0, description=description, continuous_update=False)


class ImageBrowser(_FilteredView):
    """Species and site dropdowns, a slider through the matching images, and the image itself."""

    def __init__(self, features: pd.DataFrame, labels: pd.DataFrame | pd.Series | None = None) -> None:
        self._features, self._labels = features, labels
        everything = filter_images(features, labels)
        if everything.empty:
            raise DataValidationError("there are no images to browse", fix="pass a non-empty features frame")
        self.species = _dropdown(species_order(everything["species"]) if labels is not None else [], "species")
        self.species.disabled = labels is None
        self.site = _dropdown(sorted(everything["site"].unique()), "site")
        self.slider = _slider("image")
        self.count = widgets.Label()
        self.image = widgets.Image(format="jpeg", layout=widgets.Layout(max_width=f"{BROWSER_IMAGE_SIDE}px"))
        self.caption = widgets.HTML()
        self.matches = everything
        super().__init__([
            widgets.HBox([self.species, self.site]),
            widgets.HBox([self.slider, self.count]),
            self.image,
            self.caption,
        ])
        self.add_class("conserviz-image-browser")  # a handle for the browser test and CSS
        self._watch([self.species, self.site], self.slider)

    def _refilter(self) -> None:
        self.matches = filter_images(self._features, self._labels, self.species.value, self.site.value)
        self._rewind(self.slider, max(len(self.matches) - 1, 0))
        self.count.value = f"{len(self.matches):,} matching image(s)"
        self._show()

    def _show(self) -> None:
        """Draw the image under the slider with its id, site and label."""
        if self.matches.empty:
            self.image.value = b""
            self.caption.value = "<i>No image of this species at this site.</i>"
            return
        row = self.matches.iloc[self.slider.value]
        label = row["species"] if "species" in row.index else "unlabelled"
        caption = html.escape(f"{row.name} · site {row['site']} · {label}")
        try:
            self.image.value = _jpeg_thumbnail(row["path"], BROWSER_IMAGE_SIDE)
        except ImageLoadError as exc:  # one broken file must not break the browsing
            self.image.value = b""
            caption += f"<br><b>Cannot show it:</b> {html.escape(str(exc))}"
        self.caption.value = caption


image_browser = ImageBrowser  # the name notebook 01 calls: display it as a cell's last line


# --- the prediction explorer of notebook 05 --------------------------------------------------


def _pick(value: str, options, what: str) -> None:
    """Refuse a dropdown value that cannot match anything, listing what can."""
    if value != ALL and value not in set(options):
        raise DataValidationError(f"no eval image has {what} {value!r}", column=what.split()[-1],
                                  fix=f"pick one of {sorted(set(options))} or {ALL!r}")


def prediction_table(labels: pd.DataFrame | pd.Series, probs: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Per image of ``probs``, in its order: path, site, true, predicted, confidence and p_true.

    Arguments come in scikit-learn's order, like the metrics: true labels, then predictions.
    """
    check_argument_order(labels, probs, "prediction_explorer(labels, probs, features)")
    check_probs(probs, fix="pass the eval probabilities, e.g. apply_temperature(logits, 1.0)", min_columns=2)
    refuse_repeated_ids(probs.index, "probabilities", fix="keep one row of probabilities per image id")
    probs = probs.astype(float)
    if not isinstance(features, pd.DataFrame):
        raise DataValidationError(
            f"features must be a DataFrame with path and site columns, not {type(features).__name__}",
            fix="pass data.train_features",
        )
    refuse_repeated_ids(features.index, "features", fix="keep one row per image id")
    true = names_of(labels, probs.index, "these predicted images have no label",
                    fix="pass the labels of the eval images, e.g. data.train_labels")
    table = filter_images(features.reindex(probs.index), None)  # checks path and site
    missing = probs.index[table["path"].isna().to_numpy()]
    if len(missing):
        raise DataValidationError("the features have no image path for these predicted images", column="path",
                                  rows=missing, fix="pass the features the eval images come from (data.train_features)")
    unknown = sorted(set(true) - set(map(str, probs.columns)))
    if unknown:
        raise DataValidationError(f"labels name species that have no probability column: {', '.join(unknown[:5])}",
                                  fix="give the probabilities one column per species of the labels")
    values = probs.to_numpy()
    columns = [str(c) for c in probs.columns]
    table["true"] = true.to_numpy()
    table["predicted"] = np.asarray(columns, dtype=object)[values.argmax(axis=1)]
    table["confidence"] = values.max(axis=1)
    table["p_true"] = values[np.arange(len(values)), pd.Index(columns).get_indexer(table["true"])]
    return table


def filter_predictions(
    labels: pd.DataFrame | pd.Series,
    probs: pd.DataFrame,
    features: pd.DataFrame,
    true_species: str = ALL,
    predicted_species: str = ALL,
    site: str = ALL,
) -> pd.DataFrame:
    """The `prediction_table` rows of one true species, predicted species and site (each may be `ALL`), surest first.

    Ties keep the order of ``probs``.
    """
    table = prediction_table(labels, probs, features)
    sites = table["site"].astype(str)
    _pick(true_species, table["true"], "true species")
    _pick(predicted_species, [str(c) for c in probs.columns], "predicted species")
    _pick(site, sites, "site")
    keep = np.ones(len(table), dtype=bool)
    for value, column in ((true_species, table["true"]), (predicted_species, table["predicted"]), (site, sites)):
        if value != ALL:
            keep &= (column == value).to_numpy()
    return table[keep].sort_values("confidence", ascending=False, kind="stable")


def probability_bars_html(probabilities: pd.Series, true_species: str) -> str:
    """An HTML bar chart of one image's probabilities: ✓ the true species, ✗ a wrong prediction.

    A key above the bars says what the colours mean in words; the species keep the columns' order.
    """
    predicted = str(probabilities.idxmax())
    rows = [
        f'<div style="font-size:{CAPTION_FONT}"><span style="color:{RIGHT_COLOUR}">✓ true species</span> · <span '
        f'style="color:{WRONG_COLOUR}">✗ wrong prediction</span></div>'
    ]
    for species, p in probabilities.items():
        species = str(species)
        if species == true_species:
            colour, mark = RIGHT_COLOUR, "✓"
        elif species == predicted:
            colour, mark = WRONG_COLOUR, "✗"
        else:
            colour, mark = NEUTRAL_COLOUR, ""
        weight = "bold" if mark else "normal"
        rows.append(
            '<div style="display:flex;align-items:center;'
            f'font-size:{CAPTION_FONT};line-height:17px">'
            f'<span style="width:125px;font-weight:{weight}">{html.escape(species)}</span>'
            f'<span style="display:inline-block;height:11px;width:{BAR_WIDTH * float(p):.1f}px;'
            f'background:{colour}"></span>'
            f'<span style="margin-left:4px;font-weight:{weight}">{float(p):.2f} {mark}</span></div>'
        )
    return f'<div class="conserviz-bars">{"".join(rows)}</div>'


def _card() -> tuple[widgets.VBox, widgets.Image, widgets.HTML]:
    """One image with its caption, as (card, image, caption)."""
    image = widgets.Image(format="jpeg", layout=widgets.Layout(max_width=f"{EXPLORER_IMAGE_SIDE}px"))
    caption = widgets.HTML()
    card = widgets.VBox([image, caption], layout=widgets.Layout(width=f"{EXPLORER_IMAGE_SIDE + 10}px", margin="4px"))
    card.add_class("conserviz-card")
    return card, image, caption


class PredictionExplorer(_FilteredView):
    """True-species, predicted-species and site dropdowns over the eval images, surest first, a page at a time.

    ``confusion_anchor`` is the id the "confusion matrix" link jumps to; None for no link.
    """

    def __init__(
        self,
        labels: pd.DataFrame | pd.Series,
        probs: pd.DataFrame,
        features: pd.DataFrame,
        per_page: int = EXPLORER_PER_PAGE,
        confusion_anchor: str | None = CONFUSION_MATRIX_ANCHOR,
    ) -> None:
        if not isinstance(per_page, int) or per_page < 1:
            raise DataValidationError(f"per_page must be a positive whole number, got {per_page!r}", fix="pass e.g. 6")
        self._probs, self._labels, self._features, self.per_page = probs, labels, features, per_page
        everything = prediction_table(labels, probs, features)
        if everything.empty:
            raise DataValidationError("there are no predictions to explore", fix="pass the eval probabilities")
        self.true_species = _dropdown(species_order(everything["true"]), "true")
        self.predicted_species = _dropdown([str(c) for c in probs.columns], "predicted")
        self.site = _dropdown(sorted(everything["site"].astype(str).unique()), "site")
        self.page = _slider("page")
        self.count = widgets.Label()
        # An Output, not an HTML widget: JupyterLab follows an in-notebook "#heading" link only in
        # HTML it renders itself; in an HTML widget's raw innerHTML the link would go nowhere.
        self.link = widgets.Output()
        if confusion_anchor:
            self.link.outputs = ({
                "output_type": "display_data",
                "data": {
                    "text/html": f'<a href="#{html.escape(confusion_anchor)}">↑ the confusion matrix</a>',
                    "text/plain": f"the confusion matrix: #{confusion_anchor}",
                },
                "metadata": {},
            },)
        self.cards = [_card() for _ in range(per_page)]
        self.matches = everything
        super().__init__([
            widgets.HBox([self.true_species, self.predicted_species, self.site]),
            widgets.HBox([self.page, self.count, self.link]),
            widgets.Box([card for card, _, _ in self.cards],
                        layout=widgets.Layout(display="flex", flex_flow="row wrap")),
        ])
        self.add_class("conserviz-prediction-explorer")  # a handle for the browser test and CSS
        self._watch([self.true_species, self.predicted_species, self.site], self.page)

    def _refilter(self) -> None:
        self.matches = filter_predictions(self._labels, self._probs, self._features, self.true_species.value,
                                          self.predicted_species.value, self.site.value)
        self._rewind(self.page, max(-(-len(self.matches) // self.per_page), 1) - 1)
        self._show()

    def shown(self) -> pd.DataFrame:
        """The rows of the matches on the current page."""
        start = self.page.value * self.per_page
        return self.matches.iloc[start : start + self.per_page]

    def _show(self) -> None:
        """Fill the cards with the current page's images and probability bars."""
        rows = self.shown()
        start = self.page.value * self.per_page
        self.count.value = (f"{len(self.matches):,} matching image(s), surest first; showing "
                            f"{start + 1}–{start + len(rows)}" if len(self.matches) else "no eval image matches")
        for k, (card, image, caption) in enumerate(self.cards):
            if k >= len(rows):
                card.layout.display, image.value, caption.value = "none", b"", ""
                continue
            card.layout.display = "flex"
            row = rows.iloc[k]
            verdict = "right" if row["predicted"] == row["true"] else f"predicted {row['predicted']}"
            title = html.escape(f"{row.name} · site {row['site']} · {row['true']} ({verdict})")
            bars = probability_bars_html(self._probs.loc[row.name].astype(float), row["true"])
            try:
                image.value = _jpeg_thumbnail(row["path"], EXPLORER_IMAGE_SIDE)
            except ImageLoadError as exc:  # one broken file must not break the exploring
                image.value = b""
                title += f"<br><b>Cannot show it:</b> {html.escape(str(exc))}"
            caption.value = f'<div style="font-size:{CAPTION_FONT}">{title}</div>{bars}'


prediction_explorer = PredictionExplorer  # the name notebook 05 calls
