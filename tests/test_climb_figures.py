"""The climb figure of notebook 07: each step's bar, its spread, the baselines, readable in a room."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib import colors as mcolors
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from conserviz_utils import DataValidationError
from conserviz_utils.climb.figures import MARKED_HATCH, plot_climb
from conserviz_utils.palette import MIN_FONT_SIZE, PALETTE
from test_plotting import visible_texts

STEPS = pd.DataFrame(
    {"log_loss": [1.88, 1.79, 1.82, 1.26], "fold_std": [0.17, 0.12, 0.10, 0.11], "accuracy": [0.3, 0.3, 0.26, 0.52]},
    index=["one head per fold", "fold ensemble", "+ TTA", "+ crops (simulated detections)"],
)
BASELINES = {"uniform guess, ln 8": math.log(8), "training shares": 2.05}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def bar_container(fig: Figure) -> BarContainer:
    """The figure's one set of bars."""
    (ax,) = fig.axes
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    return bars


@pytest.fixture
def figure() -> Figure:
    return plot_climb(STEPS, BASELINES, marked=["+ crops (simulated detections)"])


def test_one_bar_per_step_in_order_at_its_log_loss(figure):
    (ax,) = figure.axes
    bars = list(bar_container(figure))
    assert [bar.get_width() for bar in bars] == pytest.approx(STEPS["log_loss"].tolist())
    # The first step on top: y positions fall down the table.
    assert [bar.get_y() for bar in bars] == sorted((bar.get_y() for bar in bars), reverse=True)
    top_down = sorted(zip(ax.get_yticks(), ax.get_yticklabels()), key=lambda tick: -tick[0])
    assert [label.get_text() for _, label in top_down] == list(STEPS.index)
    values = {t.get_text() for t in ax.texts}
    assert {f"{v:.3f}" for v in STEPS["log_loss"]} <= values


def test_baselines_are_labelled_lines_that_differ_in_style(figure):
    (ax,) = figure.axes
    lines = [line for line in ax.lines if line.get_label() and not line.get_label().startswith("_")]
    assert [line.get_xdata()[0] for line in lines] == pytest.approx(list(BASELINES.values()))
    assert len({line.get_linestyle() for line in lines}) == len(BASELINES)
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend[:2] == ["uniform guess, ln 8: 2.079", "training shares: 2.050"]


def test_marked_steps_differ_by_hatch_and_colour_and_the_legend_says_why(figure):
    (ax,) = figure.axes
    bars = list(bar_container(figure))
    assert [bar.get_hatch() or "" for bar in bars] == ["", "", "", MARKED_HATCH]
    colours = [mcolors.to_hex(bar.get_facecolor()).upper() for bar in bars]
    assert len(set(colours[:3])) == 1 and colours[3] != colours[0]
    assert set(colours) <= {c.upper() for c in PALETTE}
    assert "uses simulated detections" in [t.get_text() for t in figure.legends[0].get_texts()]
    unmarked = plot_climb(STEPS, BASELINES)
    assert len(unmarked.legends[0].get_texts()) == len(BASELINES)


def test_the_spread_is_drawn_as_error_bars(figure):
    (ax,) = figure.axes
    segments = bar_container(figure).errorbar.lines[2][0].get_segments()
    widths = [seg[1][0] - seg[0][0] for seg in segments]
    assert widths == pytest.approx((2 * STEPS["fold_std"]).tolist())


def test_every_text_is_readable_and_inside_the_figure(figure):
    texts = visible_texts(figure) + list(figure.legends[0].get_texts())
    assert all(t.get_fontsize() >= MIN_FONT_SIZE for t in texts)
    edge = figure.bbox
    for text in texts:
        box = text.get_window_extent()
        assert box.x0 >= edge.x0 - 1 and box.x1 <= edge.x1 + 1, text.get_text()
        assert box.y0 >= edge.y0 - 1 and box.y1 <= edge.y1 + 1, text.get_text()
    (ax,) = figure.axes
    assert not figure.legends[0].get_window_extent().overlaps(ax.get_window_extent())


@pytest.mark.parametrize(
    ("scores", "baselines", "marked", "message"),
    [
        (STEPS.iloc[:0], BASELINES, (), "one row per step"),
        (STEPS.drop(columns="log_loss"), BASELINES, (), "log_loss column"),
        ([1.2, 1.3], BASELINES, (), "log_loss column"),
        (STEPS.assign(log_loss=[1.0, np.nan, 1.0, 1.0]), BASELINES, (), "fold ensemble"),
        (STEPS, {"uniform": math.inf}, (), "uniform"),
        (STEPS, {"uniform": "2.08"}, (), "uniform"),
        (STEPS, BASELINES, ["+ crops"], "+ crops"),
    ],
)
def test_bad_input_says_what_is_wrong(scores, baselines, marked, message):
    with pytest.raises(DataValidationError, match=None) as error:
        plot_climb(scores, baselines, marked=marked)
    assert message in str(error.value)
