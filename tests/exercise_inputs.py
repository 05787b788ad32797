"""Small course-shaped data for the exercise checkers' tests, and the odd inputs a learner can type."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pandas as pd
import torch

from conserviz_utils import SPECIES
from conserviz_utils.teaching.exercises import NOT_YET, CheckResult
from conserviz_utils.teaching.exercises.results import UNREADABLE

# Site A: 6 images (4 hog, 2 bird), site B: 3 (bird, bird, rodent), site C: 1 (rodent).
LAYOUT = [("A", "hog")] * 4 + [("A", "bird")] * 2 + [("B", "bird")] * 2 + [("B", "rodent"), ("C", "rodent")]


def site_data(layout=LAYOUT):
    """(features, one-hot labels, test features) of ``layout``'s (site, species) images."""
    ids = pd.Index([f"ZJ{k:06d}" for k in range(len(layout))], name="id")
    features = pd.DataFrame({"site": [site for site, _ in layout]}, index=ids)
    names = pd.Series([species for _, species in layout], index=ids)
    labels = pd.get_dummies(names).reindex(columns=list(SPECIES), fill_value=0).astype(float)
    test_features = pd.DataFrame({"site": ["T1", "T1"]}, index=pd.Index(["ZJ900000", "ZJ900001"]))
    return features, labels, test_features


def history(eval_losses, train_loss):
    """A fit_head history: a train row and an eval row per epoch."""
    rows = [{"epoch": e + 1, "phase": "train", "train_loss": train_loss, "eval_log_loss": np.nan}
            for e in range(len(eval_losses))]
    rows += [{"epoch": e + 1, "phase": "eval", "train_loss": np.nan, "eval_log_loss": v}
             for e, v in enumerate(eval_losses)]
    return pd.DataFrame(rows)


def hint(result: CheckResult) -> str:
    """The hint of a *not yet* verdict (the test fails on any other verdict)."""
    assert isinstance(result, CheckResult), result
    assert result.status == NOT_YET, result
    return result.message


def refused(result: CheckResult) -> str:
    """The hint of a *not yet* verdict that a reader wrote for the input, not the safety net."""
    message = hint(result)
    assert UNREADABLE not in message, message
    return message


# Whatever a notebook cell can hold, in the answer's place. None is left out: it is the
# placeholder, answered with "not answered yet".
ODD_INPUTS = {
    "empty str": "",
    "str": "abc",
    "numeric str": "0.5",
    "bytes": b"A",
    "True": True,
    "set": {1, 2},
    "empty set": set(),
    "frozenset of str": frozenset({"A"}),
    "empty list": [],
    "list": [1.0, 2.0, 3.0],
    "nested list": [[1, 2], [3, 4]],
    "ragged list": [[1], [2, 3]],
    "list of str": ["a", "b"],
    "tuple": (1, 2, 3),
    "empty dict": {},
    "dict": {"a": 1, "b": "x"},
    "0-d ndarray": np.array(0.25),
    "empty ndarray": np.zeros(0),
    "1-d ndarray": np.arange(5.0),
    "3-d ndarray": np.zeros((2, 3, 4)),
    "NaN ndarray": np.full((2, 2), np.nan),
    "str ndarray": np.array(["x", "y"]),
    "0-d tensor": torch.tensor(0.25),
    "1-d tensor": torch.tensor([0.25, 0.75]),
    "bf16 tensor": torch.zeros(2, 3, dtype=torch.bfloat16),
    "grad tensor": torch.ones(3, requires_grad=True),
    "empty DataFrame": pd.DataFrame(),
    "DataFrame": pd.DataFrame({"x": [1.0, 2.0], "y": ["a", "b"]}),
    "empty Series": pd.Series(dtype=float),
    "Series of str": pd.Series(["a", "b"]),
    "NaN": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "huge int": 10**400,
    "-huge int": -(10**400),
    "huge Decimal": Decimal("1e500"),
    "complex": complex(1, 2),
    "object": object(),
    "function": len,
}
