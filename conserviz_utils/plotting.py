"""Every figure of the course; each function returns its matplotlib Figure and never shows it.

Figures are made through pyplot, so Jupyter's inline backend shows each one once when its cell
ends; end the cell with ``;`` so the returned Figure is not shown a second time. Outside a
notebook, save it (``fig.savefig``) and close it (``plt.close(fig)``).

Every figure is drawn under `conserviz_utils.palette`'s style (colour-blind-safe colours with
hatches or markers, fonts of at least 10 pt, legends outside the data); dark night frames are
brightened for display only.

Labels may be the one-hot label frame or a Series id → species name (read by the one rule of
`conserviz_utils.labels`); probabilities are a frame indexed by id with one column per species
(what ``predict`` returns).
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
from PIL import Image
from sklearn.metrics import ConfusionMatrixDisplay

from conserviz_utils.errors import DataValidationError, ImageLoadError
from conserviz_utils.files.images import open_image
from conserviz_utils.labels import species_names
from conserviz_utils.palette import (
    HATCHES,
    MARKERS,
    OKABE_ITO,
    PALETTE,
    stretch_for_display,
    with_figure_style,
)
from conserviz_utils.plot_inputs import (
    Labels,
    align_probs,
    check_positive,
    check_probs,
    features_and_labels,
    predicted_species,
    require_paths,
)
from conserviz_utils.split import species_order

#: Longest side of the images drawn in galleries: plenty for a 2–3 inch panel, and it keeps
#: drawing fast.
THUMBNAIL_SIDE = 320


@with_figure_style
def show_species_grid(
    data_or_features,
    labels: Labels | None = None,
    per_species: int = 1,
    seed: int = 0,
) -> Figure:
    """Random example images of each species: the walkthrough's grid.

    Args:
        data_or_features: a ``CompetitionData`` (its train features and labels are used) or a
            features frame with ``path`` (absolute image path) and ``site`` columns.
        labels: one-hot frame or Series of species names; taken from the data when omitted.
        per_species: images per species; 1 gives a 2-row grid, more gives one row per species.
        seed: which random images are drawn.
    """
    features, labels = features_and_labels(data_or_features, labels)
    check_positive(per_species, "per_species", example=2)
    species = species_names(labels, species=None)
    names = species_order(species)
    require_paths(features, species.index)
    if per_species == 1:
        ncols = math.ceil(len(names) / 2)
        nrows = math.ceil(len(names) / ncols)
    else:
        nrows, ncols = len(names), per_species
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(2.8 * ncols, 2.1 * nrows), layout="constrained", squeeze=False
    )
    for ax in axes.flat:
        ax.set_axis_off()
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
def plot_class_distribution(
    labels: Labels | Mapping[str, Labels], title: str | None = None
) -> Figure:
    """Images per species: counts and shares of one label set, or shares of several side by side.

    Args:
        labels: one-hot frame or Series of species names, or a mapping name → labels (e.g.
            the train and eval sides of a split) to compare their shares.
        title: replaces the default title.
    """
    if isinstance(labels, Mapping):
        sets = {name: species_names(value, species=None) for name, value in labels.items()}
        if not sets:
            raise DataValidationError("no label sets to plot", fix="pass at least one label set")
    else:
        sets = {"": species_names(labels, species=None)}
    names = species_order(pd.concat(list(sets.values())))

    bars_per_species = 1 if len(sets) == 1 else 0.6 * len(sets)
    fig, ax = plt.subplots(
        figsize=(7 if len(sets) == 1 else 10, 0.3 * len(names) * bars_per_species + 1.4),
        layout="constrained",
    )
    if len(sets) == 1:
        (species,) = sets.values()
        counts = species.value_counts().reindex(names, fill_value=0).sort_values()
        bars = ax.barh(counts.index, counts.to_numpy(), color=OKABE_ITO["blue"])
        _label_bars(ax, bars, counts, len(species))
        ax.set_xlabel("images")
        default_title = f"Images per species ({len(species):,} images)"
    else:
        shares = {
            f"{name} ({len(species):,} images)": species.value_counts(normalize=True)
            for name, species in sets.items()
        }
        _grouped_bars(ax, shares, names, horizontal=True)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel("share of images")
        default_title = "Share of each species, " + " vs ".join(sets)
    ax.set_ylabel("species")
    ax.set_title(textwrap.fill(title or default_title, 70))  # a long title wraps, never cut
    return fig


@with_figure_style
def plot_images_per_site(
    features: pd.DataFrame, test_features: pd.DataFrame | None = None
) -> Figure:
    """Images per camera site, sorted, for train (and test): how skewed the sites are.

    Args:
        features: frame with a ``site`` column (``train_features``).
        test_features: the test features, drawn in a second panel when given.
    """
    sets = {"train": features}
    if test_features is not None:
        sets["test"] = test_features
    counts = {}
    for name, frame in sets.items():
        if not isinstance(frame, pd.DataFrame) or "site" not in frame.columns:
            raise DataValidationError(
                f"{name} features have no 'site' column",
                column="site",
                fix="pass the features frames of load_competition",
            )
        counts[name] = frame["site"].value_counts().sort_values(ascending=False, kind="stable")

    fig, axes = plt.subplots(
        1, len(sets), figsize=(6 * len(sets), 4), layout="constrained", squeeze=False
    )
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
        ax.set_xlabel("site, sorted by number of images")
        ax.set_ylabel("images")
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
    """How many images have each size (width × height), most common first.

    Args:
        sizes_or_features: a frame with ``width`` and ``height`` columns, or a features frame
            with a ``path`` column, whose image headers are then read (see `image_sizes`).
        top: sizes shown separately; the rarer ones are grouped as "other".
    """
    check_positive(top, "top", example=10)
    sizes = sizes_or_features
    if not {"width", "height"} <= set(sizes.columns):
        sizes = image_sizes(sizes)
    as_text = sizes["width"].astype(int).astype(str) + "×"
    as_text += sizes["height"].astype(int).astype(str)
    counts = as_text.value_counts().sort_values(ascending=False, kind="stable")
    shown = counts.iloc[:top]
    if len(counts) > top:
        rest = pd.Series({f"other ({len(counts) - top} sizes)": counts.iloc[top:].sum()})
        shown = pd.concat([shown, rest])

    fig, ax = plt.subplots(figsize=(7, max(0.35 * len(shown) + 1.4, 3.2)), layout="constrained")
    bars = ax.barh(shown.index, shown.to_numpy(), color=OKABE_ITO["reddish purple"])
    _label_bars(ax, bars, shown, len(sizes))
    ax.invert_yaxis()  # most common on top
    ax.set_xlabel("images")
    ax.set_ylabel("width × height (pixels)")
    ax.set_title(f"Image sizes: {len(counts)} distinct among {len(sizes):,} images")
    return fig


def image_sizes(features: pd.DataFrame) -> pd.DataFrame:
    """Width and height of each image as stored, read from the file headers (no decoding).

    Returns:
        A frame indexed like ``features`` with integer columns ``width`` and ``height``.
    """
    require_paths(features, features.index)
    sizes = []
    for path in features["path"]:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except (OSError, Image.UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(
                f"cannot read the image header ({exc})",
                path=path,
                fix="extract the image again, or remove its row from the CSV",
            ) from None
    return pd.DataFrame(sizes, index=features.index, columns=["width", "height"], dtype="int64")


@with_figure_style
def plot_loss_curve(
    history: pd.DataFrame, window: int = 50, held_out: str = "held-out images"
) -> Figure:
    """Training loss per batch, its moving average, and the held-out loss after each epoch.

    Args:
        history: the frame ``fit`` returns (columns ``step``, ``epoch``, ``train_loss`` and, when
            an eval loader was given, ``eval_loss``; NaN where not measured).
        window: batches in the moving average.
        held_out: what the eval loader held, named in the legend (e.g. "held-out training
            sites", or "eval images" where they are the eval split).
    """
    if not isinstance(history, pd.DataFrame) or "train_loss" not in history.columns:
        raise DataValidationError(
            "history has no 'train_loss' column",
            column="train_loss",
            fix="pass the history frame returned by fit",
        )
    check_positive(window, "window", example=50)
    if "step" in history.columns:
        steps = history["step"]
    else:
        steps = pd.Series(np.arange(1, len(history) + 1), index=history.index)
    trained = history["train_loss"].notna()
    if not trained.any():
        raise DataValidationError(
            "history holds no training loss yet",
            column="train_loss",
            fix="plot it after fit has run",
        )
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
    ax.set_xlabel("training step (batch)")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    _legend_outside(ax)
    return fig


@with_figure_style
def plot_confusion_matrix(
    labels: Labels, probs: pd.DataFrame, normalize: str | None = "true"
) -> Figure:
    """Confusion matrix of the most probable species against the true one (sklearn's display).

    Args:
        labels: true labels covering every id of ``probs``.
        probs: probabilities indexed by id, one column per species.
        normalize: ``"true"`` (each row sums to 1: recall on the diagonal), ``"pred"`` (each
            column sums to 1: precision), ``"all"``, or ``None`` for counts.
    """
    titles = {
        "true": "Confusion matrix (each row: where images of that species went)",
        "pred": "Confusion matrix (each column: what that prediction really was)",
        "all": "Confusion matrix (share of all images)",
        None: "Confusion matrix (image counts)",
    }
    if normalize not in titles:
        raise DataValidationError(
            f"normalize must be 'true', 'pred', 'all' or None, got {normalize!r}",
            fix="pass normalize='true'",
        )
    probs, true = align_probs(probs, labels, "plot_confusion_matrix(labels, probs)")
    predicted = predicted_species(probs)
    fig, ax = plt.subplots(figsize=(8.5, 7.5), layout="constrained")
    ConfusionMatrixDisplay.from_predictions(
        true,
        predicted,
        labels=list(probs.columns),
        normalize=normalize,
        ax=ax,
        cmap="Blues",
        xticks_rotation=45,
        values_format=".2f" if normalize else "d",
    )
    plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    ax.set_xlabel("predicted species")
    ax.set_ylabel("true species")
    accuracy = (predicted == true).mean()
    ax.set_title(f"{titles[normalize]}\n{len(true):,} images, accuracy {accuracy:.1%}")
    return fig


@with_figure_style
def plot_prediction_distribution(probs: pd.DataFrame, labels: Labels | None = None) -> Figure:
    """How often each species is predicted (most probable class), beside how often it is true.

    Args:
        probs: probabilities indexed by id, one column per species.
        labels: true labels of those ids; without them only the predictions are drawn.
    """
    if labels is None:
        check_probs(probs)
        counts = {"predicted": predicted_species(probs).value_counts()}
        title = f"Predicted species ({len(probs):,} images)"
    else:
        probs, true = align_probs(probs, labels, "plot_prediction_distribution(probs, labels)")
        counts = {"true": true.value_counts(), "predicted": predicted_species(probs).value_counts()}
        title = f"Predicted vs true species ({len(probs):,} images)"
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    _grouped_bars(ax, counts, list(probs.columns), horizontal=False)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("species")
    ax.set_ylabel("images")
    ax.set_title(title)
    return fig


@with_figure_style
def plot_misclassified(
    labels: Labels,
    probs: pd.DataFrame,
    features: pd.DataFrame,
    n: int = 12,
    ncols: int = 4,
) -> Figure:
    """Gallery of the most confident mistakes: each image with its true and predicted species.

    Args:
        labels: true labels covering every id of ``probs``.
        probs: probabilities indexed by id, one column per species.
        features: frame with a ``path`` column (absolute image paths) for those ids.
        n: at most this many images, the most confident mistakes first.
        ncols: images per row.
    """
    check_positive(n, "n", example=12)
    check_positive(ncols, "ncols", example=4)
    probs, true = align_probs(probs, labels, "plot_misclassified(labels, probs, features)")
    predicted = predicted_species(probs)
    confidence = pd.Series(probs.to_numpy().max(axis=1), index=probs.index)
    wrong = predicted != true
    # Most confident first; the stable sort keeps the order of ids among ties.
    mistakes = confidence[wrong].sort_values(ascending=False, kind="stable").index[:n]
    if len(mistakes) == 0:
        fig, ax = plt.subplots(figsize=(4, 1.5), layout="constrained")
        ax.text(0.5, 0.5, f"No misclassified images among {len(probs):,}",
                ha="center", va="center")
        ax.set_axis_off()
        return fig
    require_paths(features, mistakes)
    ncols = min(ncols, len(mistakes))
    nrows = math.ceil(len(mistakes) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), layout="constrained", squeeze=False
    )
    for ax in axes.flat:
        ax.set_axis_off()
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
    """Mean confidence and accuracy of the predictions in each confidence bin.

    Confidence is the top probability; bins split [0, 1] into ``n_bins`` equal intervals.

    Returns:
        A frame indexed by bin with ``low``, ``high``, ``count``, ``confidence`` and
        ``accuracy`` (NaN for empty bins).
    """
    check_positive(n_bins, "n_bins", example=10)
    probs, true = align_probs(probs, labels, "reliability_table(labels, probs)")
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
def plot_reliability_diagram(
    labels: Labels,
    probs: pd.DataFrame,
    n_bins: int = 10,
    calibrated_probs: pd.DataFrame | None = None,
) -> Figure:
    """Confidence vs accuracy per confidence bin, with the ECE; optionally before/after calibration.

    A calibrated model is right 80 % of the time when it says 0.8, so its points lie on the
    diagonal. Log loss punishes confident mistakes hard, which is why temperature scaling helps.

    Args:
        labels: true labels covering every id of ``probs``.
        probs: probabilities indexed by id, one column per species.
        n_bins: equal-width confidence bins.
        calibrated_probs: the same ids after calibration (e.g. temperature scaling), drawn too.
    """
    series = {"as predicted": probs}
    if calibrated_probs is not None:
        series["calibrated"] = calibrated_probs
    fig, (ax, ax_count) = plt.subplots(
        2, 1, figsize=(8, 6.5), sharex=True, height_ratios=[3, 1], layout="constrained"
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    eces = []
    width = 1.0 / n_bins / len(series)
    for k, (name, frame) in enumerate(series.items()):
        table = reliability_table(labels, frame, n_bins)
        filled = table[table["count"] > 0]
        eces.append(_ece(table))
        ax.plot(filled["confidence"], filled["accuracy"], marker=MARKERS[k], color=PALETTE[k],
                label=f"{name} (ECE {eces[-1]:.3f})")
        ax_count.bar(table["low"] + (k + 0.5) * width, table["count"] / table["count"].sum(),
                     width, label=name, color=PALETTE[k], hatch=HATCHES[k], edgecolor="white")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy in the bin")
    _legend_outside(ax)
    ax_count.set_xlabel("confidence (top predicted probability)")
    ax_count.set_ylabel("share of images")
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


def _label_bars(ax: Axes, bars, counts: pd.Series, total: int) -> None:
    """Write "count · share" at the end of each bar, with room for the text."""
    ax.bar_label(bars, labels=[f"{c:,} · {c / total:.1%}" for c in counts], padding=3)
    ax.margins(x=0.25)


def _grouped_bars(
    ax: Axes, values: Mapping[str, pd.Series], names: list[str], *, horizontal: bool
) -> None:
    """One group of bars per name (species), one bar per entry of ``values``, with a legend.

    Each entry has its own colour and hatch, so the bars differ in more than colour.
    """
    positions = np.arange(len(names))
    thickness = 0.8 / len(values)
    for k, (label, series) in enumerate(values.items()):
        offsets = positions + (k - (len(values) - 1) / 2) * thickness
        heights = series.reindex(names, fill_value=0).to_numpy()
        style = {"label": label, "color": PALETTE[k % len(PALETTE)],
                 "hatch": HATCHES[k % len(HATCHES)], "edgecolor": "white", "linewidth": 0}
        if horizontal:
            ax.barh(offsets, heights, thickness, **style)
        else:
            ax.bar(offsets, heights, thickness, **style)
    if horizontal:
        ax.set_yticks(positions, names)
        ax.invert_yaxis()  # first species on top, as in a table
    else:
        ax.set_xticks(positions, names, rotation=30, ha="right", rotation_mode="anchor")
    _legend_outside(ax)


def _legend_outside(ax: Axes) -> None:
    """The axes' legend to the right of its plot area, where it covers no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)


def _ece(table: pd.DataFrame) -> float:
    """Expected calibration error from a `reliability_table`."""
    filled = table[table["count"] > 0]
    gaps = (filled["accuracy"] - filled["confidence"]).abs()
    return float((gaps * filled["count"]).sum() / filled["count"].sum())
