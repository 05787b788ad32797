"""Plots: each returns a Figure (Agg backend) drawing exactly what its title says."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import confusion_matrix

from conserviz_utils import SPECIES, DataValidationError
from conserviz_utils.files.images import describe_images
from conserviz_utils.palette import HATCHES, MIN_FONT_SIZE, PALETTE, stretch_for_display
from conserviz_utils.plotting import (
    plot_class_distribution,
    plot_confusion_matrix,
    plot_image_sizes,
    plot_images_per_site,
    plot_loss_curve,
    plot_misclassified,
    plot_prediction_distribution,
    plot_reliability_diagram,
    reliability_table,
    show_species_grid,
)

PER_SPECIES = 3


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Tiny JPEGs, three per species over four sites: features (path, site), one-hot labels."""
    folder = tmp_path_factory.mktemp("images")
    rows, names = [], []
    for k, name in enumerate(SPECIES * PER_SPECIES):
        image_id = f"ZJ{k:06d}"
        path = folder / f"{image_id}.jpg"
        size = (48, 27) if k % 2 else (32, 24)  # two sizes, as in the real data
        Image.new("RGB", size, (30 * (k % 8), 100, 200)).save(path)
        rows.append({
            "id": image_id,
            "filepath": f"train_features/{image_id}.jpg",
            "path": str(path),
            "site": f"S{k % 4:04d}",
        })
        names.append(name)
    features = pd.DataFrame(rows).set_index("id")
    labels = pd.get_dummies(pd.Series(names, index=features.index)).astype(float)[list(SPECIES)]
    return features, labels


@pytest.fixture(scope="module")
def probs(dataset):
    """Probabilities that are right for two thirds of the images, confidently wrong for the rest."""
    _, labels = dataset
    rng = np.random.default_rng(0)
    values = rng.dirichlet(np.ones(len(SPECIES)), size=len(labels)) * 0.2
    truth = labels.to_numpy().argmax(axis=1)
    wrong = np.arange(len(labels)) % 3 == 0
    top = np.where(wrong, (truth + 1) % len(SPECIES), truth)
    values[np.arange(len(labels)), top] += 0.8 - 0.01 * np.arange(len(labels)) / len(labels)
    return pd.DataFrame(values, index=labels.index, columns=list(SPECIES))


def test_species_grid_shows_one_image_per_species(dataset):
    features, labels = dataset
    fig = show_species_grid(features, labels, seed=0)
    assert isinstance(fig, Figure)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 8 and len(shown) == 8
    titles = [ax.get_title().split("\n")[0] for ax in shown]
    assert titles == list(SPECIES)
    for ax in shown:  # the image drawn is the one of the id in the title
        image_id = ax.get_title().split("\n")[1].split(" · ")[0]
        assert labels.loc[image_id].idxmax() == ax.get_title().split("\n")[0]
        assert max(ax.images[0].get_array().shape[:2]) <= 320


def test_species_grid_takes_competition_data_and_several_per_species(dataset):
    features, labels = dataset
    data = SimpleNamespace(train_features=features, train_labels=labels)
    fig = show_species_grid(data, per_species=2, seed=1)
    assert len([ax for ax in fig.axes if ax.images]) == 16
    again = show_species_grid(data, per_species=2, seed=1)
    assert [ax.get_title() for ax in fig.axes] == [ax.get_title() for ax in again.axes]


def test_species_grid_needs_image_paths(dataset):
    features, labels = dataset
    with pytest.raises(DataValidationError, match="'path'"):
        show_species_grid(features.drop(columns="path"), labels)


def test_class_distribution_counts_and_shares(dataset):
    _, labels = dataset
    fig = plot_class_distribution(labels.iloc[:-3])  # the last three species lose an image
    (ax,) = fig.axes
    names = [tick.get_text() for tick in ax.get_yticklabels()]
    widths = {name: bar.get_width() for name, bar in zip(names, ax.patches, strict=True)}
    assert widths == labels.iloc[:-3].sum().to_dict()
    annotations = [t.get_text() for t in ax.texts]
    assert f"3 · {3 / 21:.1%}" in annotations


def test_class_distribution_compares_label_sets_side_by_side(dataset):
    _, labels = dataset
    fig = plot_class_distribution({"train": labels.iloc[:16], "eval": labels.iloc[16:]})
    (ax,) = fig.axes
    assert len(ax.patches) == 2 * len(SPECIES)
    assert sum(bar.get_width() for bar in ax.patches) == pytest.approx(2.0)  # shares of each set
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["train (16 images)", "eval (8 images)"]


def test_images_per_site_draws_sorted_bars_for_train_and_test(dataset):
    features, _ = dataset
    test = pd.DataFrame({"site": ["S0100"] * 5 + ["S0101"]}, index=[f"T{k}" for k in range(6)])
    fig = plot_images_per_site(features.iloc[:-1], test)
    train_ax, test_ax = fig.axes
    heights = [bar.get_height() for bar in train_ax.patches]
    assert heights == sorted(features.iloc[:-1]["site"].value_counts(), reverse=True)
    assert [bar.get_height() for bar in test_ax.patches] == [5, 1]
    assert "disjoint" in fig.get_suptitle()
    overlapping = plot_images_per_site(features, features.iloc[:4])
    assert "4 sites are in both" in overlapping.get_suptitle()


def test_image_sizes_reads_headers_and_plots_counts(dataset):
    features, _ = dataset
    sizes = describe_images(features, max_images=None)[["width", "height"]]
    assert sizes.loc["ZJ000000"].tolist() == [32, 24] and sizes.loc["ZJ000001"].tolist() == [48, 27]
    fig = plot_image_sizes(features)  # the headers read from the paths
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["32×24", "48×27"]
    assert [bar.get_width() for bar in ax.patches] == [12, 12]
    grouped = plot_image_sizes(sizes, top=1)
    names = [t.get_text() for t in grouped.axes[0].get_yticklabels()]
    assert names == ["32×24", "other (1 sizes)"]


def make_history(epochs: int = 2, batches: int = 30) -> pd.DataFrame:
    """A history frame as fit returns it: eval columns filled on the last batch of each epoch."""
    rows = []
    for epoch in range(epochs):
        for batch in range(batches):
            step = epoch * batches + batch + 1
            last = batch == batches - 1
            rows.append({
                "epoch": epoch,
                "batch": batch,
                "step": step,
                "train_loss": 2.0 / step**0.5,
                "eval_loss": 1.5 - 0.3 * epoch if last else np.nan,
                "eval_accuracy": 0.5 if last else np.nan,
                "eval_log_loss": np.nan,
            })
    return pd.DataFrame(rows)


def test_loss_curve_draws_batches_moving_average_and_eval_points():
    history = make_history()
    fig = plot_loss_curve(history, window=10)
    (ax,) = fig.axes
    per_batch, average, evals = ax.lines[:3]
    np.testing.assert_allclose(per_batch.get_ydata(), history["train_loss"])
    moving_average = history["train_loss"].rolling(10, min_periods=1).mean()
    np.testing.assert_allclose(average.get_ydata(), moving_average)
    np.testing.assert_array_equal(evals.get_xdata(), [30, 60])
    np.testing.assert_allclose(evals.get_ydata(), [1.5, 1.2])
    assert len(ax.lines) == 4  # plus one dotted line at the end of epoch 0


def test_loss_curve_without_eval_and_bad_input():
    history = make_history(epochs=1).drop(columns=["eval_loss", "eval_accuracy", "eval_log_loss"])
    assert len(plot_loss_curve(history).axes[0].lines) == 2
    with pytest.raises(DataValidationError, match="train_loss"):
        plot_loss_curve(history.drop(columns="train_loss"))
    with pytest.raises(DataValidationError, match="window"):
        plot_loss_curve(history, window=0)


def test_confusion_matrix_matches_sklearn(dataset, probs):
    _, labels = dataset
    fig = plot_confusion_matrix(labels, probs, normalize="true")
    drawn = fig.axes[0].images[0].get_array()
    expected = confusion_matrix(
        labels.idxmax(axis=1), probs.idxmax(axis=1), labels=list(SPECIES), normalize="true"
    )
    np.testing.assert_allclose(drawn, expected)
    assert len(fig.axes) == 2  # the matrix and its colour bar
    counts = plot_confusion_matrix(labels, probs, normalize=None).axes[0].images[0].get_array()
    assert counts.sum() == len(probs)
    with pytest.raises(DataValidationError, match="normalize"):
        plot_confusion_matrix(labels, probs, normalize="rows")


def test_prediction_distribution_puts_true_and_predicted_counts_side_by_side(dataset, probs):
    _, labels = dataset
    fig = plot_prediction_distribution(probs, labels)
    (ax,) = fig.axes
    heights = [bar.get_height() for bar in ax.patches]
    assert heights[:8] == [PER_SPECIES] * 8  # true counts
    predicted = probs.idxmax(axis=1).value_counts().reindex(list(SPECIES), fill_value=0)
    assert heights[8:] == predicted.tolist()
    assert len(plot_prediction_distribution(probs).axes[0].patches) == 8  # test set: no labels


def test_misclassified_gallery_shows_the_most_confident_mistakes(dataset, probs):
    features, labels = dataset
    fig = plot_misclassified(labels, probs, features, n=5)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 5
    wrong = probs.idxmax(axis=1) != labels.idxmax(axis=1)
    expected = probs[wrong].max(axis=1).sort_values(ascending=False).index[:5]
    assert [ax.get_title().split("\n")[0] for ax in shown] == list(expected)
    first, worst = shown[0].get_title(), probs.loc[expected[0]]
    assert f"true {labels.loc[expected[0]].idxmax()}" in first
    assert f"predicted {worst.idxmax()} ({worst.max():.2f})" in first


def test_misclassified_gallery_when_nothing_is_wrong(dataset):
    features, labels = dataset
    fig = plot_misclassified(labels, labels, features)
    assert "No misclassified" in fig.axes[0].texts[0].get_text()


def test_reliability_table_and_ece_on_a_known_case():
    labels = pd.Series(["bird", "bird", "hog", "hog"], index=list("abcd"))
    # Two predictions at 0.9 and two at 0.6, one right and one wrong at each.
    probs = pd.DataFrame(
        {"bird": [0.9, 0.1, 0.4, 0.6], "hog": [0.1, 0.9, 0.6, 0.4]}, index=list("abcd")
    )
    table = reliability_table(labels, probs, n_bins=10)
    assert table["count"].tolist() == [0] * 6 + [2, 0, 0, 2]
    assert table.loc[9, "accuracy"] == 0.5 and table.loc[6, "accuracy"] == 0.5
    assert table.loc[9, "confidence"] == pytest.approx(0.9)
    # ECE = ½·|0.5 − 0.6| + ½·|0.5 − 0.9| = 0.25.
    assert ece(labels, probs) == pytest.approx(0.25)


def ece(labels, probs, n_bins: int = 10) -> float:
    """The expected calibration error: the count-weighted mean |accuracy − confidence| of bins."""
    table = reliability_table(labels, probs, n_bins)
    filled = table[table["count"] > 0]
    gaps = (filled["accuracy"] - filled["confidence"]).abs()
    return float((gaps * filled["count"]).sum() / filled["count"].sum())


def test_reliability_diagram_before_and_after_calibration(dataset, probs):
    _, labels = dataset
    softened = probs.pow(0.5)
    softened = softened.div(softened.sum(axis=1), axis=0)
    fig = plot_reliability_diagram(labels, probs, calibrated_probs=softened)
    main, counts = fig.axes
    assert len(main.lines) == 3  # diagonal, before, after
    before, after = ece(labels, probs), ece(labels, softened)
    assert f"ECE {before:.3f} → {after:.3f}" in main.get_title()
    assert sum(bar.get_height() for bar in counts.patches) == pytest.approx(2.0)


def test_plots_refuse_probabilities_of_unlabelled_ids(dataset, probs):
    _, labels = dataset
    with pytest.raises(DataValidationError, match="no label") as err:
        plot_confusion_matrix(labels.iloc[1:], probs)
    assert err.value.rows == [labels.index[0]]


def test_plots_take_y_true_first_and_say_so_when_swapped(dataset):
    features, labels = dataset
    values = np.random.default_rng(0).dirichlet(np.ones(labels.shape[1]), size=len(labels))
    probs = pd.DataFrame(values, index=labels.index, columns=labels.columns)
    for swapped in (lambda: plot_confusion_matrix(probs, labels),
                    lambda: reliability_table(probs, labels),
                    lambda: plot_misclassified(probs, labels, features)):
        with pytest.raises(DataValidationError, match="look swapped") as caught:
            swapped()
        assert "(labels, probs" in caught.value.fix


# --- figures for a room: colour-blind-safe, readable from the back, nothing covered or cut -------


@pytest.fixture()
def every_figure(dataset, probs):
    """One figure of each plotting function, drawn as the notebooks draw them."""
    features, labels = dataset
    test = pd.DataFrame({"site": ["S0100"] * 5 + ["S0101"]}, index=[f"T{k}" for k in range(6)])
    sets = {"random · train": labels.iloc[:16], "random · eval": labels.iloc[16:],
            "by site · train": labels.iloc[8:], "by site · eval": labels.iloc[:8]}
    return {
        "species grid": show_species_grid(features, labels),
        "class distribution": plot_class_distribution(labels),
        "split chart": plot_class_distribution(sets),
        "images per site": plot_images_per_site(features, test),
        "image sizes": plot_image_sizes(features),
        "loss curve": plot_loss_curve(make_history(), window=10),
        "confusion matrix": plot_confusion_matrix(labels, probs),
        "prediction distribution": plot_prediction_distribution(probs, labels),
        "misclassified": plot_misclassified(labels, probs, features, n=8),
        "reliability": plot_reliability_diagram(labels, probs, calibrated_probs=probs.pow(0.5)),
    }


def visible_texts(fig: Figure) -> list:
    """Every visible, non-empty text artist of the figure (titles, labels, ticks, legends)."""
    fig.canvas.draw()
    texts = [fig._suptitle, *fig.texts]
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        if ax.axison:  # an axis turned off draws no labels or ticks
            texts += [ax.xaxis.label, ax.yaxis.label]
            for axis in (ax.xaxis, ax.yaxis):
                low, high = sorted(axis.get_view_interval())
                texts += [tick.label1 for tick in axis.get_major_ticks()
                          if low - 1e-9 <= tick.get_loc() <= high + 1e-9]
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
    return [t for t in texts if t is not None and t.get_visible() and t.get_text().strip()]


def test_every_text_is_at_least_10_points(every_figure):
    for name, fig in every_figure.items():
        small = {t.get_text(): t.get_fontsize() for t in visible_texts(fig)
                 if t.get_fontsize() < MIN_FONT_SIZE}
        assert not small, f"{name}: {small}"


def test_no_text_is_cut_by_the_figure_edge(every_figure):
    for name, fig in every_figure.items():
        edge = fig.bbox
        for text in visible_texts(fig):
            box = text.get_window_extent()
            inside = (box.x0 >= edge.x0 - 1 and box.y0 >= edge.y0 - 1
                      and box.x1 <= edge.x1 + 1 and box.y1 <= edge.y1 + 1)
            assert inside, f"{name}: {text.get_text()!r} is cut"


def test_the_split_chart_legend_covers_no_bar_and_colours_never_stand_alone(dataset):
    _, labels = dataset
    sets = {"random · train": labels.iloc[:16], "random · eval": labels.iloc[16:],
            "by site · train": labels.iloc[8:], "by site · eval": labels.iloc[:8]}
    fig = plot_class_distribution(sets)
    (ax,) = fig.axes
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert not legend.overlaps(ax.get_window_extent())  # beside the plot area, not on it
    assert not any(legend.overlaps(bar.get_window_extent()) for bar in ax.patches)
    # Each label set has its own palette colour AND its own hatch: no red/green pair, and the
    # sets stay apart in greyscale.
    styles = {(mcolors.to_hex(bar.get_facecolor()).upper(), bar.get_hatch() or "")
              for bar in ax.patches}
    assert len(styles) == len(sets)
    assert {colour for colour, _ in styles} == {c.upper() for c in PALETTE[:4]}
    assert {hatch for _, hatch in styles} == set(HATCHES[:4])


def test_line_and_bar_colours_come_from_the_palette(every_figure):
    allowed = {c.upper() for c in PALETTE} | {"#808080", "#000000", "#FFFFFF"}  # greys: guides
    for name in ("class distribution", "images per site", "image sizes", "loss curve",
                 "prediction distribution", "reliability"):
        fig = every_figure[name]
        for ax in fig.axes:
            used = {mcolors.to_hex(line.get_color()).upper() for line in ax.lines}
            used |= {mcolors.to_hex(bar.get_facecolor()).upper()
                     for container in ax.containers for bar in container}
            assert used <= allowed, f"{name}: {used - allowed}"


def test_a_dark_frame_is_brightened_for_display_but_never_changed(tmp_path, dataset):
    night = np.random.default_rng(0).integers(10, 60, (27, 48, 3), dtype=np.uint8)
    kept = night.copy()
    shown = stretch_for_display(night)
    np.testing.assert_array_equal(night, kept)  # the array passed in is untouched
    assert np.median(shown) > np.median(night) + 40 and shown.max() == 255
    day = np.random.default_rng(1).integers(60, 250, (27, 48, 3), dtype=np.uint8)
    assert stretch_for_display(day) is day  # a bright frame is shown as it is
    grey = np.full((27, 48, 3), 30, np.uint8)
    np.testing.assert_array_equal(stretch_for_display(grey), grey)  # nothing to stretch

    # In a gallery: the dark file is shown brighter, and the file itself stays as it was.
    features, labels = dataset
    path = tmp_path / "dark.jpg"
    Image.fromarray(night).save(path, quality=95)
    on_disk = path.read_bytes()
    dark = features.copy()
    dark["path"] = str(path)
    fig = show_species_grid(dark, labels)
    drawn = np.asarray(fig.axes[0].images[0].get_array())
    stored = np.asarray(Image.open(path).convert("RGB"))
    assert np.median(drawn) > np.median(stored) + 40
    assert path.read_bytes() == on_disk


def test_plotting_leaves_the_global_style_alone(dataset):
    _, labels = dataset
    before = dict(plt.rcParams)
    plot_class_distribution(labels)
    assert dict(plt.rcParams) == before


def test_every_figure_of_a_notebook_shows_not_only_the_first():
    """In a real kernel, a second plotting call (and a plain pyplot figure after) still shows.

    Restoring every rc setting after a plotting function once turned the inline backend's
    interactive mode off, so only a notebook's first figure appeared.
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    setup = (
        "import numpy as np, pandas as pd, matplotlib.pyplot as plt\n"
        "from conserviz_utils import SPECIES\n"
        "from conserviz_utils.plotting import plot_prediction_distribution\n"
        "probs = pd.DataFrame(np.full((4, 8), 1 / 8), columns=SPECIES, index=list('abcd'))\n"
        "labels = pd.Series(['bird'] * 4, index=list('abcd'))\n"
        "plt.get_backend()"
    )
    cells = [setup, "plot_prediction_distribution(probs, labels);",
             "if True:\n    plot_prediction_distribution(probs, labels);", "plt.plot([1, 2]);"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    shown = [sum("image/png" in o.get("data", {}) for o in cell.outputs) for cell in notebook.cells]
    assert shown == [0, 1, 1, 1]
