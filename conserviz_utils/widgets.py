"""The image browser of notebook 01: pick a species and a site, slide through their images.

The filtering is a plain function, `filter_images`, so it can be tested and reused without a
browser; `ImageBrowser` only wires ipywidgets to it.
"""

from __future__ import annotations

import html
import io

import ipywidgets as widgets
import pandas as pd

from conserviz_utils.errors import DataValidationError, ImageLoadError
from conserviz_utils.images import open_image
from conserviz_utils.split import labels_to_species, species_order

#: The dropdown entry that matches every species or site.
ALL = "all"

#: Longest side of the image shown: large enough to spot an animal, small enough to stay quick.
BROWSER_IMAGE_SIDE = 480


def filter_images(
    features: pd.DataFrame,
    labels: pd.DataFrame | pd.Series | None = None,
    species: str = ALL,
    site: str = ALL,
) -> pd.DataFrame:
    """The images of one species at one site (`ALL` matches any), in the order of ``features``.

    Args:
        features: frame indexed by id with ``path`` and ``site`` columns.
        labels: one-hot frame or Series of species names for those ids; needed to filter by
            species.
        species: a species name, or `ALL`.
        site: a site name, or `ALL`.

    Returns:
        The matching rows with columns ``path``, ``site`` and, with labels, ``species``.
    """
    columns = features.columns if isinstance(features, pd.DataFrame) else []
    missing = [c for c in ("path", "site") if c not in columns]
    if missing:
        raise DataValidationError(
            f"features have no {missing[0]!r} column",
            column=missing[0],
            fix="pass the features of load_competition (columns path and site)",
        )
    table = features[["path", "site"]].copy()
    if labels is not None:
        names = labels_to_species(labels)
        unlabelled = table.index.difference(names.index)
        if len(unlabelled):
            raise DataValidationError(
                "these images have no label",
                rows=unlabelled,
                fix="pass labels for every image, or labels=None to browse unlabelled images",
            )
        table["species"] = names.reindex(table.index)
    if species != ALL:
        if labels is None:
            raise DataValidationError(
                f"cannot filter by species {species!r} without labels",
                fix="pass labels=data.train_labels",
            )
        if species not in set(table["species"]):
            raise DataValidationError(
                f"no image is labelled {species!r}",
                column="species",
                fix=f"pick one of {species_order(table['species'])} or {ALL!r}",
            )
        table = table[table["species"] == species]
    if site != ALL:
        if site not in set(features["site"]):
            raise DataValidationError(
                f"no image comes from site {site!r}",
                column="site",
                fix=f"pick a site of the features or {ALL!r}",
            )
        table = table[table["site"] == site]
    return table


class ImageBrowser(widgets.VBox):
    """Species and site dropdowns, a slider through the matching images, and the image itself."""

    def __init__(
        self, features: pd.DataFrame, labels: pd.DataFrame | pd.Series | None = None
    ) -> None:
        self._features = features
        self._labels = labels
        everything = filter_images(features, labels)
        if everything.empty:
            raise DataValidationError(
                "there are no images to browse", fix="pass a non-empty features frame"
            )
        labelled = labels is not None
        species_options = [ALL, *species_order(everything["species"])] if labelled else [ALL]
        self.species = widgets.Dropdown(options=species_options, value=ALL, description="species")
        self.species.disabled = not labelled
        sites = [ALL, *sorted(everything["site"].unique())]
        self.site = widgets.Dropdown(options=sites, value=ALL, description="site")
        self.slider = widgets.IntSlider(
            min=0, max=0, value=0, description="image", continuous_update=False
        )
        self.count = widgets.Label()
        self.image = widgets.Image(
            format="jpeg", layout=widgets.Layout(max_width=f"{BROWSER_IMAGE_SIDE}px")
        )
        self.caption = widgets.HTML()
        self.matches = everything
        self._refreshing = False
        super().__init__([
            widgets.HBox([self.species, self.site]),
            widgets.HBox([self.slider, self.count]),
            self.image,
            self.caption,
        ])
        self.species.observe(self._on_filter, names="value")
        self.site.observe(self._on_filter, names="value")
        self.slider.observe(self._on_slide, names="value")
        self._refilter()

    def _on_filter(self, _change: dict) -> None:
        self._refilter()

    def _on_slide(self, _change: dict) -> None:
        if not self._refreshing:
            self._show()

    def _refilter(self) -> None:
        """Apply the dropdowns, reset the slider to the new matches and show the first one."""
        self.matches = filter_images(
            self._features, self._labels, self.species.value, self.site.value
        )
        self._refreshing = True  # one redraw below, not one per slider change
        try:
            self.slider.value = 0
            self.slider.max = max(len(self.matches) - 1, 0)
            self.slider.disabled = len(self.matches) <= 1
        finally:
            self._refreshing = False
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
            picture = open_image(row["path"])
        except ImageLoadError as exc:  # one broken file must not break the browsing
            self.image.value = b""
            self.caption.value = f"{caption}<br><b>Cannot show it:</b> {html.escape(str(exc))}"
            return
        picture.thumbnail((BROWSER_IMAGE_SIDE, BROWSER_IMAGE_SIDE))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=85)
        self.image.value = buffer.getvalue()
        self.caption.value = caption


def image_browser(
    features: pd.DataFrame, labels: pd.DataFrame | pd.Series | None = None
) -> ImageBrowser:
    """A widget to browse the images by species and site (display it as a cell's last line)."""
    return ImageBrowser(features, labels)
