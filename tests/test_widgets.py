"""The image browser: its filtering function, and the widget wiring (no kernel needed)."""

from __future__ import annotations

import ipywidgets as widgets
import pandas as pd
import pytest
from PIL import Image

from conserviz_utils import DataValidationError
from conserviz_utils.widgets import ALL, ImageBrowser, filter_images, image_browser

# (species, site) of each image: bird at two sites, hog at one, rodent at the other.
LAYOUT = [
    ("bird", "S0001"),
    ("bird", "S0001"),
    ("bird", "S0002"),
    ("hog", "S0001"),
    ("rodent", "S0002"),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browse")
    ids = [f"ZJ{k:06d}" for k in range(len(LAYOUT))]
    for k, image_id in enumerate(ids):
        Image.new("RGB", (64, 36), (40 * k, 90, 160)).save(folder / f"{image_id}.jpg")
    features = pd.DataFrame(
        {"path": [str(folder / f"{i}.jpg") for i in ids], "site": [site for _, site in LAYOUT]},
        index=pd.Index(ids, name="id"),
    )
    labels = pd.get_dummies(pd.Series([s for s, _ in LAYOUT], index=features.index)).astype(float)
    return features, labels


def test_filter_images_by_species_site_and_both(dataset):
    features, labels = dataset
    assert len(filter_images(features, labels)) == 5
    birds = filter_images(features, labels, species="bird")
    assert list(birds.index) == ["ZJ000000", "ZJ000001", "ZJ000002"]
    assert list(birds.columns) == ["path", "site", "species"]
    assert list(filter_images(features, labels, site="S0002").index) == ["ZJ000002", "ZJ000004"]
    assert list(filter_images(features, labels, species="bird", site="S0002").index) == ["ZJ000002"]
    assert filter_images(features, labels, species="hog", site="S0002").empty
    assert list(filter_images(features, site="S0001").columns) == ["path", "site"]


def test_filter_images_refuses_what_cannot_match(dataset):
    features, labels = dataset
    with pytest.raises(DataValidationError, match="no image is labelled 'leapard'") as err:
        filter_images(features, labels, species="leapard")
    assert "bird" in str(err.value)
    with pytest.raises(DataValidationError, match="site 'S9999'"):
        filter_images(features, labels, site="S9999")
    with pytest.raises(DataValidationError, match="without labels"):
        filter_images(features, species="bird")
    with pytest.raises(DataValidationError, match="'path'"):
        filter_images(features.drop(columns="path"), labels)
    with pytest.raises(DataValidationError, match="no label") as err:
        filter_images(features, labels.iloc[1:])
    assert err.value.rows == ["ZJ000000"]


def test_browser_builds_with_dropdowns_slider_and_image(dataset):
    features, labels = dataset
    browser = image_browser(features, labels)
    assert isinstance(browser, widgets.VBox)
    assert browser.species.options == (ALL, "bird", "hog", "rodent")
    assert browser.site.options == (ALL, "S0001", "S0002")
    assert (browser.slider.min, browser.slider.max, browser.slider.value) == (0, 4, 0)
    assert bytes(browser.image.value).startswith(b"\xff\xd8")  # a JPEG
    assert "ZJ000000" in browser.caption.value and "S0001" in browser.caption.value
    assert "bird" in browser.caption.value


def test_changing_the_dropdowns_updates_the_slider_and_the_image(dataset):
    features, labels = dataset
    browser = ImageBrowser(features, labels)
    browser.slider.value = 4
    browser.species.value = "bird"
    assert (browser.slider.max, browser.slider.value) == (2, 0)
    assert browser.count.value == "3 matching image(s)"
    browser.site.value = "S0002"
    assert browser.slider.max == 0 and browser.slider.disabled
    assert "ZJ000002" in browser.caption.value
    browser.species.value = "hog"  # no hog at S0002
    assert bytes(browser.image.value) == b""
    assert "No image" in browser.caption.value
    browser.site.value = ALL
    assert "ZJ000003" in browser.caption.value and "hog" in browser.caption.value


def test_sliding_shows_the_next_image(dataset):
    features, labels = dataset
    browser = ImageBrowser(features, labels)
    first = bytes(browser.image.value)
    browser.slider.value = 3
    assert "ZJ000003" in browser.caption.value and "hog" in browser.caption.value
    assert bytes(browser.image.value) != first


def test_browser_without_labels_browses_by_site_only(dataset):
    features, _ = dataset
    browser = image_browser(features)
    assert browser.species.disabled and browser.species.options == (ALL,)
    assert "unlabelled" in browser.caption.value
    browser.site.value = "S0002"
    assert browser.slider.max == 1


def test_a_broken_image_is_reported_in_the_caption_not_raised(dataset, tmp_path):
    features, labels = dataset
    broken = features.copy()
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    broken.loc["ZJ000001", "path"] = str(tmp_path / "broken.jpg")
    browser = ImageBrowser(broken, labels)
    browser.slider.value = 1
    assert bytes(browser.image.value) == b""
    assert "ZJ000001" in browser.caption.value and "Cannot show it" in browser.caption.value
    assert "broken.jpg" in browser.caption.value
    browser.slider.value = 2
    assert bytes(browser.image.value).startswith(b"\xff\xd8")
