"""Every figure of the course, in the order notebooks 01–02 (data), 04 (loss) and 05–06 teach them.

Each returns its Figure and never shows it: end a notebook cell with ``;``, elsewhere save and
close it. All draw under `conserviz_utils.palette`'s colour-blind-safe, projector-sized style.
Labels are the one-hot frame or a Series id → species; probabilities a frame indexed by id with
one column per species (what ``predict`` returns).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from sklearn.metrics import ConfusionMatrixDisplay

from conserviz_utils.errors import DataValidationError
from conserviz_utils.files.images import describe_images, open_image
from conserviz_utils.labels import species_names
from conserviz_utils.palette import HATCHES, MARKERS, OKABE_ITO, PALETTE, stretch_for_display
from conserviz_utils.palette import with_figure_style
from conserviz_utils.plot_inputs import Labels, check_positive, check_probs, predicted_species
from conserviz_utils.plot_inputs import require_paths, true_species
from conserviz_utils.split import species_order

#: Longest side of a gallery image: plenty for a 2–3 inch panel, and quick to draw.
THUMBNAIL_SIDE = 320


@with_figure_style
def show_species_grid(
    data_or_features, labels: Labels | None = None, per_species: int = 1, seed: int = 0
) -> Figure:
    """Random images of each species, from ``CompetitionData`` or features (``path``, ``site``) and labels.

    One per species fills two rows; more gives a row per species.
    """
    features = data_or_features
    if not isinstance(features, pd.DataFrame):  # the competition data: its training side
        features = getattr(data_or_features, "train_features", None)
        labels = getattr(data_or_features, "train_labels", None) if labels is None else labels
    if not isinstance(features, pd.DataFrame):
        raise DataValidationError(f"expected the competition data or a features frame, not "
                                  f"{type(data_or_features).__name__}",
                                  fix="pass load_competition(...) or its train_features with labels")
    if labels is None:
        raise DataValidationError("labels are missing", fix="pass labels=data.train_labels")
    check_positive(per_species, "per_species", example=2)
    species = species_names(labels, species=None)
    names = species_order(species)
    require_paths(features, species.index)
    if per_species == 1:
        ncols = math.ceil(len(names) / 2)
        nrows = math.ceil(len(names) / ncols)
    else:
        nrows, ncols = len(names), per_species
    fig, axes = _panels(nrows, ncols, width=2.8, height=2.1)
    for row, name in enumerate(names):
        of_species = species.index[species == name].to_series()
        drawn = of_species.sample(n=min(per_species, len(of_species)), random_state=seed)
        panels = [axes.flat[row]] if per_species == 1 else axes[row]
        for ax, image_id in zip(panels, drawn, strict=False):
            ax.imshow(_thumbnail(features.at[image_id, "path"]))
            site = f" · {features.at[image_id, 'site']}" if "site" in features.columns else ""
            ax.set_title(f"{name}\n{image_id}{site}", fontsize=10)
    fig.suptitle("Example images of each species (title: species, image id · site; "
                 "dark frames brightened for display)")
    return fig


@with_figure_style
def plot_class_distribution(labels: Labels | Mapping[str, Labels], title: str | None = None) -> Figure:
    """Images per species of one label set, or the shares of several (a mapping name → labels)."""
    if isinstance(labels, Mapping):
        sets = {name: species_names(value, species=None) for name, value in labels.items()}
        if not sets:
            raise DataValidationError("no label sets to plot", fix="pass at least one label set")
    else:
        sets = {"": species_names(labels, species=None)}
    names = species_order(pd.concat(list(sets.values())))
    bars_per_species = 1 if len(sets) == 1 else 0.6 * len(sets)
    height = 0.3 * len(names) * bars_per_species + 1.4
    fig, ax = plt.subplots(figsize=(7 if len(sets) == 1 else 10, height), layout="constrained")
    if len(sets) == 1:
        (species,) = sets.values()
        counts = species.value_counts().reindex(names, fill_value=0).sort_values()
        bars = ax.barh(counts.index, counts.to_numpy(), color=OKABE_ITO["blue"])
        _label_bars(ax, bars, counts, len(species))
        ax.set_xlabel("images")
        default_title = f"Images per species ({len(species):,} images)"
    else:
        shares = {f"{name} ({len(species):,} images)": species.value_counts(normalize=True)
                  for name, species in sets.items()}
        _grouped_bars(ax, shares, names, horizontal=True)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel("share of images")
        default_title = "Share of each species, " + " vs ".join(sets)
    ax.set_ylabel("species")
    ax.set_title(textwrap.fill(title or default_title, 70))  # a long title wraps, never cut
    return fig


@with_figure_style
def plot_images_per_site(features: pd.DataFrame, test_features: pd.DataFrame | None = None) -> Figure:
    """Images per camera site, sorted, for train (and test beside it): how skewed the sites are."""
    sets = {"train": features} if test_features is None else {"train": features, "test": test_features}
    counts = {}
    for name, frame in sets.items():
        if not isinstance(frame, pd.DataFrame) or "site" not in frame.columns:
            raise DataValidationError(f"{name} features have no 'site' column", column="site",
                                      fix="pass the features frames of load_competition")
        counts[name] = frame["site"].value_counts().sort_values(ascending=False, kind="stable")
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4), layout="constrained", squeeze=False)
    for ax, (name, per_site) in zip(axes.flat, counts.items(), strict=True):
        positions = np.arange(len(per_site))
        ax.bar(positions, per_site.to_numpy(), width=1.0, color=OKABE_ITO["bluish green"])
        median = float(per_site.median())
        ax.axhline(median, color="black", linestyle="--", linewidth=1,
                   label=f"median {median:g} images")
        if len(per_site) <= 30:  # few enough sites to name them
            ax.set_xticks(positions, per_site.index, rotation=90)
        else:
            ax.set_xticks([])
        ax.set(xlabel="site, sorted by number of images", ylabel="images")
        largest_share = per_site.iloc[0] / per_site.sum()
        ax.set_title(f"{name}: {len(per_site)} sites; the largest, {per_site.index[0]}, "
                     f"holds {largest_share:.0%}", fontsize=11)
        _legend_outside(ax)
    title = "Images per site"
    if test_features is not None:
        shared = len(set(counts["train"].index) & set(counts["test"].index))
        title += (": train and test sites are disjoint" if shared == 0
                  else f": {shared} sites are in both train and test")
    fig.suptitle(title)
    return fig


@with_figure_style
def plot_image_sizes(sizes_or_features: pd.DataFrame, top: int = 10) -> Figure:
    """Images per size (width × height), ``top`` most common first, from `describe_images` or features."""
    check_positive(top, "top", example=10)
    sizes = sizes_or_features
    if not {"width", "height"} <= set(sizes.columns):
        require_paths(sizes, sizes.index)
        sizes = describe_images(sizes, max_images=None)
    as_text = sizes["width"].astype(int).astype(str) + "×" + sizes["height"].astype(int).astype(str)
    counts = as_text.value_counts().sort_values(ascending=False, kind="stable")
    shown = counts.iloc[:top]
    if len(counts) > top:
        rest = pd.Series({f"other ({len(counts) - top} sizes)": counts.iloc[top:].sum()})
        shown = pd.concat([shown, rest])
    fig, ax = plt.subplots(figsize=(7, max(0.35 * len(shown) + 1.4, 3.2)), layout="constrained")
    bars = ax.barh(shown.index, shown.to_numpy(), color=OKABE_ITO["reddish purple"])
    _label_bars(ax, bars, shown, len(sizes))
    ax.invert_yaxis()  # most common on top
    ax.set(xlabel="images", ylabel="width × height (pixels)",
           title=f"Image sizes: {len(counts)} distinct among {len(sizes):,} images")
    return fig


@with_figure_style
def plot_loss_curve(history: pd.DataFrame, window: int = 50, held_out: str = "held-out images") -> Figure:
    """Training loss per batch, its ``window``-batch moving average, and the held-out loss per epoch.

    ``history`` is what ``fit`` returns; ``held_out`` names the eval images in the legend.
    """
    if not isinstance(history, pd.DataFrame) or "train_loss" not in history.columns:
        raise DataValidationError("history has no 'train_loss' column", column="train_loss",
                                  fix="pass the history frame returned by fit")
    check_positive(window, "window", example=50)
    steps = (history["step"] if "step" in history.columns
             else pd.Series(np.arange(1, len(history) + 1), index=history.index))
    trained = history["train_loss"].notna()
    if not trained.any():
        raise DataValidationError("history holds no training loss yet", column="train_loss",
                                  fix="plot it after fit has run")
    loss = history.loc[trained, "train_loss"].astype(float)
    x = steps[trained].to_numpy()
    fig, ax = plt.subplots(figsize=(9, 4), layout="constrained")
    ax.plot(x, loss.to_numpy(), color=PALETTE[0], alpha=0.3, linewidth=0.8,
            label="train loss (each batch)")
    average = loss.rolling(window, min_periods=1).mean()
    ax.plot(x, average.to_numpy(), color=PALETTE[0], linewidth=2,
            label=f"train loss ({min(window, len(loss))}-batch moving average)")
    eval_column = next((c for c in ("eval_loss", "eval_log_loss") if c in history.columns), None)
    if eval_column is not None:
        measured = history[eval_column].notna()
        if measured.any():
            ax.plot(steps[measured].to_numpy(), history.loc[measured, eval_column].astype(float),
                    color=PALETTE[1], marker=MARKERS[1], linewidth=2,
                    label=f"loss on the {held_out} (after each epoch)")
    title = "Loss during training"
    if "epoch" in history.columns:
        for end in steps.groupby(history["epoch"]).max().to_numpy()[:-1]:
            ax.axvline(end, color="grey", linewidth=0.8, linestyle=":")
        title += " (dotted lines: epoch ends)"
    ax.set(xlabel="training step (batch)", ylabel="cross-entropy loss", title=title)
    _legend_outside(ax)
    return fig


@with_figure_style
def plot_confusion_matrix(labels: Labels, probs: pd.DataFrame, normalize: str | None = "true") -> Figure:
    """Confusion matrix of the most probable species against the true one (sklearn's display).

    ``normalize``: ``"true"`` (rows sum to 1: recall on the diagonal), ``"pred"`` (columns sum
    to 1: precision), ``"all"``, or ``None`` for counts.
    """
    titles = {
        "true": "Confusion matrix (each row: where images of that species went)",
        "pred": "Confusion matrix (each column: what that prediction really was)",
        "all": "Confusion matrix (share of all images)",
        None: "Confusion matrix (image counts)",
    }
    if normalize not in titles:
        raise DataValidationError(f"normalize must be 'true', 'pred', 'all' or None, got {normalize!r}",
                                  fix="pass normalize='true'")
    true = true_species(labels, probs, "plot_confusion_matrix(labels, probs)")
    predicted = predicted_species(probs)
    fig, ax = plt.subplots(figsize=(8.5, 7.5), layout="constrained")
    ConfusionMatrixDisplay.from_predictions(
        true, predicted, labels=list(probs.columns), normalize=normalize, ax=ax, cmap="Blues",
        xticks_rotation=45, values_format=".2f" if normalize else "d",
    )
    plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    ax.set(xlabel="predicted species", ylabel="true species")
    accuracy = (predicted == true).mean()
    ax.set_title(f"{titles[normalize]}\n{len(true):,} images, accuracy {accuracy:.1%}")
    return fig


@with_figure_style
def plot_prediction_distribution(probs: pd.DataFrame, labels: Labels | None = None) -> Figure:
    """How often each species is predicted (most probable class), beside how often it is true."""
    if labels is None:  # the test set: predictions only
        check_probs(probs)
        counts = {"predicted": predicted_species(probs).value_counts()}
        title = f"Predicted species ({len(probs):,} images)"
    else:
        true = true_species(labels, probs, "plot_prediction_distribution(probs, labels)")
        counts = {"true": true.value_counts(), "predicted": predicted_species(probs).value_counts()}
        title = f"Predicted vs true species ({len(probs):,} images)"
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    _grouped_bars(ax, counts, list(probs.columns), horizontal=False)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="species", ylabel="images", title=title)
    return fig


@with_figure_style
def plot_misclassified(
    labels: Labels, probs: pd.DataFrame, features: pd.DataFrame, n: int = 12, ncols: int = 4
) -> Figure:
    """Gallery of the ``n`` most confident mistakes (images at ``features["path"]``), true and predicted."""
    check_positive(n, "n", example=12)
    check_positive(ncols, "ncols", example=4)
    true = true_species(labels, probs, "plot_misclassified(labels, probs, features)")
    predicted = predicted_species(probs)
    confidence = pd.Series(probs.to_numpy().max(axis=1), index=probs.index)
    wrong = predicted != true
    # The stable sort keeps the order of ids among equally confident mistakes.
    mistakes = confidence[wrong].sort_values(ascending=False, kind="stable").index[:n]
    if len(mistakes) == 0:
        fig, ax = plt.subplots(figsize=(4, 1.5), layout="constrained")
        ax.text(0.5, 0.5, f"No misclassified images among {len(probs):,}", ha="center", va="center")
        ax.set_axis_off()
        return fig
    require_paths(features, mistakes)
    ncols = min(ncols, len(mistakes))
    nrows = math.ceil(len(mistakes) / ncols)
    fig, axes = _panels(nrows, ncols, width=3.2, height=2.8)
    for ax, image_id in zip(axes.flat, mistakes, strict=False):
        ax.imshow(_thumbnail(features.at[image_id, "path"]))
        t, p = true[image_id], predicted[image_id]
        ax.set_title(f"{image_id}\ntrue {t} ({probs.at[image_id, t]:.2f})\n"
                     f"predicted {p} ({probs.at[image_id, p]:.2f})", fontsize=10)
    fig.suptitle(f"The {len(mistakes)} most confident mistakes ({int(wrong.sum()):,} of "
                 f"{len(probs):,} images misclassified)\nin brackets: predicted probability; "
                 "dark frames brightened for display", fontsize=11)
    return fig


def reliability_table(labels: Labels, probs: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """Per equal-width bin of confidence: ``low``, ``high``, ``count``, mean ``confidence``, ``accuracy``.

    Confidence is the top probability; an empty bin has NaN confidence and accuracy.
    """
    check_positive(n_bins, "n_bins", example=10)
    true = true_species(labels, probs, "reliability_table(labels, probs)")
    confidence = probs.to_numpy().max(axis=1)
    correct = (predicted_species(probs) == true).to_numpy()
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)  # 1.0 joins the top bin
    per_bin = pd.DataFrame({"bin": bins, "confidence": confidence, "correct": correct})
    table = per_bin.groupby("bin").agg(
        count=("correct", "size"), confidence=("confidence", "mean"), accuracy=("correct", "mean")
    ).reindex(range(n_bins))
    table["count"] = table["count"].fillna(0).astype("int64")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    table.insert(0, "low", edges[:-1])
    table.insert(1, "high", edges[1:])
    table.index.name = "bin"
    return table


@with_figure_style
def plot_reliability_diagram(labels: Labels, probs: pd.DataFrame, n_bins: int = 10,
                             calibrated_probs: pd.DataFrame | None = None) -> Figure:
    """Accuracy against confidence per bin, with the ECE; and after calibration when given.

    A calibrated model is right 80 % of the time when it says 0.8, so its points lie on the
    diagonal. Log loss punishes confident mistakes hard, which is why temperature scaling helps.
    """
    series = {"as predicted": probs}
    if calibrated_probs is not None:
        series["calibrated"] = calibrated_probs
    tables = {name: reliability_table(labels, frame, n_bins) for name, frame in series.items()}
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, height_ratios=[3, 1],
                                       layout="constrained")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    eces = []
    width = 1.0 / n_bins / len(series)
    for k, (name, table) in enumerate(tables.items()):
        filled = table[table["count"] > 0]
        gaps = (filled["accuracy"] - filled["confidence"]).abs()
        eces.append(float((gaps * filled["count"]).sum() / filled["count"].sum()))
        ax.plot(filled["confidence"], filled["accuracy"], marker=MARKERS[k], color=PALETTE[k],
                label=f"{name} (ECE {eces[-1]:.3f})")
        ax_count.bar(table["low"] + (k + 0.5) * width, table["count"] / table["count"].sum(),
                     width, label=name, color=PALETTE[k], hatch=HATCHES[k], edgecolor="white")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy in the bin")
    _legend_outside(ax)
    ax_count.set(xlabel="confidence (top predicted probability)", ylabel="share of images")
    title = f"Reliability diagram: ECE {eces[0]:.3f}"
    if len(eces) > 1:
        title += f" → {eces[1]:.3f} after calibration"
    ax.set_title(title)
    return fig


def _thumbnail(path: str | Path) -> np.ndarray:
    """The image at ``path`` as RGB, no larger than `THUMBNAIL_SIDE`; a dark one brightened."""
    image = open_image(path)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return stretch_for_display(np.asarray(image))


def _panels(nrows: int, ncols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    """A grid of image panels, each ``width`` × ``height`` inches, their axes off until drawn on."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             layout="constrained", squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def _label_bars(ax: Axes, bars, counts: pd.Series, total: int) -> None:
    """Write "count · share" at the end of each bar, with room for the text."""
    ax.bar_label(bars, labels=[f"{c:,} · {c / total:.1%}" for c in counts], padding=3)
    ax.margins(x=0.25)


def _grouped_bars(ax: Axes, values: Mapping[str, pd.Series], names: list[str], *, horizontal: bool) -> None:
    """One group of bars per species, one bar per entry of ``values``, each its own colour and hatch."""
    positions = np.arange(len(names))
    thickness = 0.8 / len(values)
    for k, (label, series) in enumerate(values.items()):
        offsets = positions + (k - (len(values) - 1) / 2) * thickness
        heights = series.reindex(names, fill_value=0).to_numpy()
        style = {"label": label, "color": PALETTE[k % len(PALETTE)],
                 "hatch": HATCHES[k % len(HATCHES)], "edgecolor": "white", "linewidth": 0}
        (ax.barh if horizontal else ax.bar)(offsets, heights, thickness, **style)
    if horizontal:
        ax.set_yticks(positions, names)
        ax.invert_yaxis()  # first species on top, as in a table
    else:
        ax.set_xticks(positions, names, rotation=30, ha="right", rotation_mode="anchor")
    _legend_outside(ax)


def _legend_outside(ax: Axes) -> None:
    """The axes' legend to the right of its plot area, where it covers no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
