"""The figure of notebook 07's climb: each step's out-of-fold log loss against the baselines.

Drawn in `conserviz_utils.palette`'s style; marked steps get a hatch as well as a colour, so no
contrast rests on colour alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from conserviz_utils.errors import DataValidationError
from conserviz_utils.palette import OKABE_ITO, with_figure_style

__all__ = ["plot_climb"]

#: Bar colours: a plain step, and a marked one (which also gets `MARKED_HATCH`).
STEP_COLOUR, MARKED_COLOUR = OKABE_ITO["blue"], OKABE_ITO["vermillion"]
MARKED_HATCH = "//"
#: Line styles of the reference lines, in order, so baselines differ in more than colour.
BASELINE_STYLES = (("black", "--"), ("#808080", ":"), ("black", "-."))


@with_figure_style
def plot_climb(
    scores: pd.DataFrame,
    baselines: Mapping[str, float],
    *,
    marked: Sequence[str] = (),
    marked_label: str = "uses simulated detections",
) -> Figure:
    """Each step's log loss as a horizontal bar, top to bottom, with its fold spread and the baselines as lines.

    Args:
        scores: One row per step in climbing order, as ``climb.ensemble.score_table`` returns
            them (``fold_std``, if there, drawn as an error bar).
        baselines: Name → log loss of a reference that ignores the images (e.g. the uniform guess).
        marked: Steps to hatch and colour apart (e.g. those built on simulated detections);
            ``marked_label`` says why in the legend.
    """
    if not isinstance(scores, pd.DataFrame) or "log_loss" not in scores.columns or scores.empty:
        raise DataValidationError(
            "the climb needs a table with one row per step and a log_loss column",
            fix="pass the frame score_table(...) returns",
        )
    losses = pd.to_numeric(scores["log_loss"], errors="coerce")
    references = {str(name): value for name, value in baselines.items()}
    bad = [str(name) for name, value in losses.items() if not math.isfinite(value)]
    bad += [name for name, value in references.items()
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)]
    if bad:
        raise DataValidationError(
            f"log losses must be finite numbers; not so for: {', '.join(bad)}",
            rows=bad,
            fix="score every step and baseline on the same OOF images first",
        )
    unknown = [name for name in marked if name not in scores.index]
    if unknown:
        raise DataValidationError(
            f"marked steps not in the table: {', '.join(map(str, unknown))}",
            rows=unknown,
            fix="mark steps by their row names in scores",
        )
    names = [str(name) for name in scores.index]
    is_marked = scores.index.isin(list(marked))
    spread = pd.to_numeric(scores["fold_std"], errors="coerce") if "fold_std" in scores else None

    positions = np.arange(len(names))[::-1]  # the first step on top
    legend_rows = len(references) + bool(is_marked.any())
    legend_inches = 0.3 * legend_rows + 0.2
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(names) + 1.8 + legend_inches))
    bars = ax.barh(
        positions,
        losses.to_numpy(),
        xerr=None if spread is None else spread.fillna(0).to_numpy(),
        color=[MARKED_COLOUR if flag else STEP_COLOUR for flag in is_marked],
        edgecolor="white",
        error_kw={"ecolor": "black", "capsize": 3, "elinewidth": 1},
        height=0.65,
    )
    for bar, flag in zip(bars, is_marked):
        if flag:
            bar.set_hatch(MARKED_HATCH)
    for position, value in zip(positions, losses):
        ax.text(value / 2, position, f"{value:.3f}", ha="center", va="center", color="white",
                fontweight="bold", bbox={"boxstyle": "round,pad=0.15", "facecolor": "black", "alpha": 0.5,
                                         "linewidth": 0})
    for (name, value), (colour, style) in zip(references.items(), BASELINE_STYLES * len(references)):
        ax.axvline(value, color=colour, linestyle=style, linewidth=1.6, label=f"{name}: {value:.3f}")
    ax.set_yticks(positions, names)
    ax.set_xlabel("out-of-fold log loss (lower is better; bars: ± fold std)")
    ax.set_xlim(0, max([*losses, *references.values()]) * 1.08)
    ax.set_title("The climb, scored on the same out-of-fold images")
    handles, labels = ax.get_legend_handles_labels()
    if is_marked.any():
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor=MARKED_COLOUR, hatch=MARKED_HATCH, edgecolor="white"))
        labels.append(marked_label)
    # In a strip of its own below the plot, so it covers no bar and no reference line.
    fig.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.01, 0.0), ncol=1, frameon=False)
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    return fig
