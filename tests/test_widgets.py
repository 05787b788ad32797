"""The image browser: its filtering function, and the widget wiring (no kernel needed)."""

from __future__ import annotations

import io
import re

import ipywidgets as widgets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conserviz_utils import DataValidationError
from conserviz_utils.teaching.widgets import ALL, ImageBrowser, filter_images, image_browser

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
    assert "conserviz-image-browser" in browser._dom_classes  # what the browser test looks for


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


# --- the prediction explorer --------------------------------------------------------------

from conserviz_utils.palette import (  # noqa: E402
    NEUTRAL_COLOUR,
    OKABE_ITO,
    RIGHT_COLOUR,
    WRONG_COLOUR,
)
from conserviz_utils.teaching.widgets import (  # noqa: E402  (the explorer's half of the module)
    BAR_WIDTH,
    CONFUSION_MATRIX_ANCHOR,
    PredictionExplorer,
    filter_predictions,
    prediction_explorer,
    prediction_table,
    probability_bars_html,
)

# Probabilities over bird, hog, rodent for the five images of LAYOUT (bird, bird, bird, hog,
# rodent): ZJ000000 right (0.9), ZJ000001 wrong as hog (0.7), ZJ000002 right (0.5),
# ZJ000003 wrong as bird (0.8), ZJ000004 right (0.6).
PROBS = [
    [0.9, 0.05, 0.05],
    [0.2, 0.7, 0.1],
    [0.5, 0.3, 0.2],
    [0.8, 0.1, 0.1],
    [0.1, 0.3, 0.6],
]


@pytest.fixture(scope="module")
def predictions(dataset):
    features, labels = dataset
    probs = pd.DataFrame(PROBS, index=features.index, columns=["bird", "hog", "rodent"])
    return probs, labels, features


def test_prediction_table_has_true_predicted_and_confidence(predictions):
    probs, labels, features = predictions
    table = prediction_table(labels, probs, features)
    assert list(table.columns) == ["path", "site", "true", "predicted", "confidence", "p_true"]
    assert list(table["predicted"]) == ["bird", "hog", "bird", "bird", "rodent"]
    assert table.loc["ZJ000003", "true"] == "hog"
    assert table.loc["ZJ000003", "p_true"] == pytest.approx(0.1)
    assert table.loc["ZJ000001", "confidence"] == pytest.approx(0.7)


def test_filter_predictions_by_true_predicted_and_site_surest_first(predictions):
    probs, labels, features = predictions
    everything = filter_predictions(labels, probs, features)
    assert list(everything.index) == ["ZJ000000", "ZJ000003", "ZJ000001", "ZJ000004", "ZJ000002"]
    predicted_bird = filter_predictions(labels, probs, features, predicted_species="bird")
    assert list(predicted_bird.index) == ["ZJ000000", "ZJ000003", "ZJ000002"]
    mistakes = filter_predictions(labels, probs, features, true_species="bird", predicted_species="hog")
    assert list(mistakes.index) == ["ZJ000001"]
    at_s2 = filter_predictions(labels, probs, features, true_species="bird", site="S0002")
    assert list(at_s2.index) == ["ZJ000002"]
    assert filter_predictions(labels, probs, features, true_species="rodent", predicted_species="bird").empty


def test_filter_predictions_refuses_what_cannot_match(predictions):
    probs, labels, features = predictions
    with pytest.raises(DataValidationError, match="true species 'leopard'"):
        filter_predictions(labels, probs, features, true_species="leopard")
    with pytest.raises(DataValidationError, match="predicted species 'cat'"):
        filter_predictions(labels, probs, features, predicted_species="cat")
    with pytest.raises(DataValidationError, match="site 'S9999'"):
        filter_predictions(labels, probs, features, site="S9999")
    with pytest.raises(DataValidationError, match="have no label") as err:
        filter_predictions(labels.iloc[1:], probs, features)
    assert err.value.rows == ["ZJ000000"]
    with pytest.raises(DataValidationError, match="no image path") as err:
        filter_predictions(labels, probs, features.iloc[:4])
    assert err.value.rows == ["ZJ000004"]
    with pytest.raises(DataValidationError, match="no probability column"):
        filter_predictions(labels, probs.drop(columns="rodent"), features)
    with pytest.raises(DataValidationError, match="DataFrame indexed by id"):
        filter_predictions(labels, probs.to_numpy(), features)
    with pytest.raises(DataValidationError, match="look swapped"):
        filter_predictions(probs, labels, features)
    with pytest.raises(DataValidationError, match="features must be a DataFrame"):
        filter_predictions(labels, probs, features["path"])


def test_probability_bars_mark_the_true_and_the_wrong_predicted_species():
    bars = probability_bars_html(pd.Series({"bird": 0.2, "hog": 0.7, "rodent": 0.1}), "bird")
    assert bars.count("background:") == 3
    # hog: predicted, wrong; bird: the truth; each also marked, so colour is never alone.
    assert f"width:{0.7 * BAR_WIDTH:.1f}px;background:{WRONG_COLOUR}" in bars
    assert f"width:{0.2 * BAR_WIDTH:.1f}px;background:{RIGHT_COLOUR}" in bars
    assert ">0.70 ✗<" in bars and ">0.20 ✓<" in bars and ">0.10 <" in bars
    assert "✓ true species" in bars and "✗ wrong prediction" in bars  # the key, in words
    right = probability_bars_html(pd.Series({"bird": 0.9, "hog": 0.1}), "bird")
    assert WRONG_COLOUR not in right.split("</div>", 1)[1] and "✗<" not in right


def test_the_bars_use_a_colour_blind_safe_pair_and_readable_text():
    # Okabe–Ito blue and vermillion, not the red/green pair that red-green blindness merges.
    assert (RIGHT_COLOUR, WRONG_COLOUR) == (OKABE_ITO["blue"], OKABE_ITO["vermillion"])
    bars = probability_bars_html(pd.Series({"bird": 0.2, "hog": 0.7, "rodent": 0.1}), "bird")
    sizes = [int(size) for size in re.findall(r"font-size:(\d+)px", bars)]
    assert sizes and min(sizes) >= 13  # 13 px is about 10 pt
    colours = set(re.findall(r"(?:background|color):\s*([^;\"]+)", bars))
    assert colours == {RIGHT_COLOUR, WRONG_COLOUR, NEUTRAL_COLOUR}  # every colour from the palette


def test_a_dark_frame_is_brightened_for_display_only(tmp_path):
    night = np.random.default_rng(0).integers(10, 60, (90, 160, 3), dtype=np.uint8)
    path = tmp_path / "night.jpg"
    Image.fromarray(night).save(path, quality=95)
    on_disk = path.read_bytes()
    features = pd.DataFrame({"path": [str(path)], "site": ["S0001"]}, index=["ZJ000009"])
    browser = ImageBrowser(features)
    shown = np.asarray(Image.open(io.BytesIO(bytes(browser.image.value))).convert("L"))
    assert np.median(shown) > np.median(night) + 40  # brighter on screen
    assert path.read_bytes() == on_disk  # the image itself is untouched


def test_explorer_builds_with_dropdowns_cards_and_the_confusion_matrix_link(predictions):
    probs, labels, features = predictions
    explorer = prediction_explorer(labels, probs, features, per_page=2)
    assert isinstance(explorer, widgets.VBox)
    assert explorer.true_species.options == (ALL, "bird", "hog", "rodent")
    assert explorer.predicted_species.options == (ALL, "bird", "hog", "rodent")
    assert explorer.site.options == (ALL, "S0001", "S0002")
    assert f'href="#{CONFUSION_MATRIX_ANCHOR}"' in explorer.link.outputs[0]["data"]["text/html"]
    assert prediction_explorer(labels, probs, features, confusion_anchor=None).link.outputs == ()
    assert "conserviz-prediction-explorer" in explorer._dom_classes
    assert (explorer.page.max, explorer.page.value) == (2, 0)  # 5 images, 2 per page
    assert explorer.count.value == "5 matching image(s), surest first; showing 1–2"
    (_, first, first_caption), (_, second, second_caption) = explorer.cards
    assert bytes(first.value).startswith(b"\xff\xd8") and bytes(second.value).startswith(b"\xff\xd8")
    assert "ZJ000000" in first_caption.value and "(right)" in first_caption.value
    assert "ZJ000003" in second_caption.value and "predicted bird" in second_caption.value
    assert "conserviz-bars" in second_caption.value


def test_changing_the_dropdowns_and_the_page_updates_the_cards(predictions):
    probs, labels, features = predictions
    explorer = PredictionExplorer(labels, probs, features, per_page=2)
    (first_card, first, first_caption), (second_card, _, _) = explorer.cards
    before = bytes(first.value)
    explorer.page.value = 2
    assert "ZJ000002" in first_caption.value and second_card.layout.display == "none"
    explorer.true_species.value = "bird"
    assert explorer.page.value == 0 and explorer.page.max == 1
    explorer.predicted_species.value = "hog"
    assert list(explorer.shown().index) == ["ZJ000001"]
    assert "ZJ000001" in first_caption.value and bytes(first.value) != before
    assert explorer.page.disabled
    explorer.site.value = "S0002"  # no bird predicted hog at S0002
    assert explorer.count.value == "no eval image matches"
    assert first_card.layout.display == "none" and bytes(first.value) == b""
    explorer.site.value = ALL
    assert first_card.layout.display == "flex"


def test_explorer_reports_a_broken_image_in_its_card(predictions, tmp_path):
    probs, labels, features = predictions
    broken = features.copy()
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    broken.loc["ZJ000000", "path"] = str(tmp_path / "broken.jpg")
    explorer = PredictionExplorer(labels, probs, broken, per_page=1)
    (_, image, caption), = explorer.cards
    assert bytes(image.value) == b"" and "Cannot show it" in caption.value
    explorer.page.value = 1
    assert bytes(image.value).startswith(b"\xff\xd8")


def test_explorer_refuses_a_bad_page_size(predictions):
    probs, labels, features = predictions
    with pytest.raises(DataValidationError, match="per_page"):
        PredictionExplorer(labels, probs, features, per_page=0)
