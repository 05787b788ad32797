"""Blend the heads of a cross-validation: arithmetic, geometric and loss-weighted geometric means.

A site-grouped cross-validation (:mod:`conserviz_utils.climb.cv`) gives every train image
out-of-fold (OOF) predictions of heads that never saw its site, and every test image those of
every head: :class:`FoldPredictions`. With several heads ("members") per fold, the OOF predictions
are blended exactly as the test predictions will be, so the blend that wins on OOF goes into the
submission. The blends of Conser-vision's public top solutions: ``"arithmetic"`` (mean of the
probabilities), ``"geometric"`` (normalised mean of log-probabilities: a confident member can veto
a class) and ``"weighted geometric"`` (weights (1 / validation log loss)², members above a cutoff
dropped; 12th place: 0.95 on real data). Calibration comes last: one temperature, cross-fitted
on the OOF log-probabilities of the blend (:func:`calibrate_out_of_fold`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from conserviz_utils.errors import DataValidationError
from conserviz_utils.metrics import EPS, accuracy, apply_temperature, fit_temperature, log_loss

__all__ = [
    "BLENDS", "Calibration", "FoldPredictions", "blend_members", "calibrate_out_of_fold", "compare_blends",
    "member_weights", "out_of_fold_scores", "probabilities_to_logits", "score_table",
]

#: The blends :func:`blend_members` knows, in the order :func:`compare_blends` lists them.
BLENDS = ("arithmetic", "geometric", "weighted geometric")


def member_weights(
    val_losses, power: float = 2.0, cutoff: float | None = None, max_ratio: float | None = None
) -> np.ndarray:
    """Weights (1 / validation log loss) ** power, zero for dropped members, summing to 1.

    Args:
        cutoff: Drop members whose validation log loss is above this (0.95 suits real-data
            members near 0.8); None keeps all.
        max_ratio: Drop members above ``max_ratio`` times the best member's loss: a cutoff that
            follows the scale (0.95 / 0.8 ≈ 1.2). The best member always stays.

    Raises:
        DataValidationError: a loss is not a positive number, or the cutoff drops every member.
    """
    losses = np.asarray(val_losses, dtype=np.float64).reshape(-1)
    if losses.size == 0 or not (np.isfinite(losses).all() and (losses > 0).all()):
        raise DataValidationError(
            f"validation log losses must be positive numbers, got {losses.tolist()}",
            fix="pass the log loss of each member on its held-out images",
        )
    weights = (1.0 / losses) ** power
    if max_ratio is not None:
        if not max_ratio >= 1:
            raise ValueError(f"max_ratio must be at least 1 (the best member stays), got {max_ratio!r}")
        weights = np.where(losses > max_ratio * losses.min(), 0.0, weights)
    if cutoff is not None:
        weights = np.where(losses > cutoff, 0.0, weights)
        if not weights.any():
            raise DataValidationError(
                f"every member's validation log loss is above the cutoff {cutoff} "
                f"(best {losses.min():.4f})",
                fix="raise the cutoff (0.95 suits real-data members near 0.8), or pass cutoff=None",
            )
    return weights / weights.sum()


def blend_members(
    member_probs,
    method: str = "arithmetic",
    val_losses=None,
    power: float = 2.0,
    cutoff: float | None = None,
    max_ratio: float | None = None,
) -> np.ndarray:
    """(images, members, classes) probabilities blended by ``method`` into (images, classes) rows summing to 1.

    ``"weighted geometric"`` needs ``val_losses`` and passes ``power``, ``cutoff`` and ``max_ratio``
    to `member_weights`.
    """
    probs = np.asarray(member_probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[1] == 0:
        raise DataValidationError(
            f"member probabilities must be (images, members, classes), got shape {probs.shape}",
            fix="stack one (images, classes) table per member along axis 1",
        )
    if method not in BLENDS:
        raise ValueError(f"unknown blend {method!r}; choose one of: {', '.join(BLENDS)}")
    if method == "weighted geometric":
        if val_losses is None:
            raise ValueError("the weighted geometric blend needs each member's val_losses")
        weights = member_weights(val_losses, power=power, cutoff=cutoff, max_ratio=max_ratio)
        if len(weights) != probs.shape[1]:
            raise DataValidationError(
                f"{len(weights)} validation losses for {probs.shape[1]} members",
                fix="pass one validation log loss per member",
            )
    else:
        weights = np.full(probs.shape[1], 1.0 / probs.shape[1])
    if method == "arithmetic":
        blended = np.einsum("nmc,m->nc", probs, weights)
    else:
        # The clip is the competition's: a member's exact 0 would veto a class outright.
        log_probs = np.log(np.clip(probs, EPS, 1.0))
        mixed = np.einsum("nmc,m->nc", log_probs, weights)
        blended = np.exp(mixed - mixed.max(axis=1, keepdims=True))
    return blended / blended.sum(axis=1, keepdims=True)


def probabilities_to_logits(probs: pd.DataFrame) -> pd.DataFrame:
    """Log-probabilities (clipped like the metric), usable wherever logits are expected.

    Softmax ignores a constant added to a row, so log p gives back p, and a temperature fitted
    on log p is the one that would be fitted on the logits that made p.
    """
    return np.log(probs.clip(lower=EPS))


@dataclass(frozen=True)
class FoldPredictions:
    """Every head's predictions of a cross-validation: out of fold for train, all for test.

    Member ``j`` of fold ``k`` is the ``j``-th head trained without fold ``k``. ``oof`` is
    (train images, members, classes), row i by the members of its fold; ``val_loss`` (folds,
    members) each head's log loss on held-out training sites of its fold; ``test`` (test images,
    folds, members, classes) or None; ``names`` one per member (e.g. "whole 0", "crops 1").
    """

    ids: pd.Index
    folds: np.ndarray
    oof: np.ndarray
    val_loss: np.ndarray
    species: tuple[str, ...]
    test_ids: pd.Index | None = None
    test: np.ndarray | None = None
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n_folds = int(self.folds.max()) + 1 if len(self.folds) else 0
        expected = (len(self.ids), self.val_loss.shape[1] if self.val_loss.ndim == 2 else -1, len(self.species))
        if self.oof.shape != expected or self.val_loss.shape[0] != n_folds:
            raise ValueError(
                f"oof {self.oof.shape} and val_loss {self.val_loss.shape} do not fit {len(self.ids)} "
                f"ids, {n_folds} folds and {len(self.species)} species"
            )
        if self.test is not None and self.test.shape[:3] != (len(self.test_ids), *self.val_loss.shape):
            raise ValueError(f"test {self.test.shape} does not fit {len(self.test_ids)} ids and {self.val_loss.shape}")
        if not self.names:
            object.__setattr__(self, "names", tuple(f"member {j}" for j in range(self.n_members)))

    @property
    def n_folds(self) -> int:
        """The number of folds."""
        return int(self.val_loss.shape[0])

    @property
    def n_members(self) -> int:
        """Heads per fold."""
        return int(self.val_loss.shape[1])

    def member(self, index: int) -> FoldPredictions:
        """The predictions of one member per fold only (e.g. the single-head baseline)."""
        keep = [index]
        return replace(
            self,
            oof=self.oof[:, keep],
            val_loss=self.val_loss[:, keep],
            test=None if self.test is None else self.test[:, :, keep],
            names=(self.names[index],),
        )

    @classmethod
    def concat(cls, parts: Sequence[FoldPredictions]) -> FoldPredictions:
        """Members of several cross-validations over the same folds side by side (whole + crops)."""
        first = parts[0]
        for other in parts[1:]:
            same_test = (first.test_ids is None) == (other.test_ids is None) and (
                first.test_ids is None or first.test_ids.equals(other.test_ids)
            )
            if not (
                first.ids.equals(other.ids)
                and np.array_equal(first.folds, other.folds)
                and first.species == other.species
                and same_test
            ):
                raise DataValidationError(
                    "these predictions come from cross-validations over different images, folds "
                    "or species",
                    fix="run every cross-validation with the same folds (one site_folds call)",
                )
        has_test = all(p.test is not None for p in parts)
        return cls(
            ids=first.ids,
            folds=first.folds,
            oof=np.concatenate([p.oof for p in parts], axis=1),
            val_loss=np.concatenate([p.val_loss for p in parts], axis=1),
            species=first.species,
            test_ids=first.test_ids if has_test else None,
            test=np.concatenate([p.test for p in parts], axis=2) if has_test else None,
            names=tuple(name for p in parts for name in p.names),
        )

    def oof_probs(self, method: str = "arithmetic", **options) -> pd.DataFrame:
        """The blended out-of-fold probabilities, indexed by id: each fold with its own members.

        ``options`` (``power``, ``cutoff``, ``max_ratio``) go to `blend_members`.
        """
        blended = np.empty((len(self.ids), len(self.species)))
        for fold in range(self.n_folds):
            rows = self.folds == fold
            blended[rows] = blend_members(self.oof[rows], method, self.val_loss[fold], **options)
        return pd.DataFrame(blended, index=self.ids.rename("id"), columns=list(self.species))

    def test_probs(self, method: str = "arithmetic", **options) -> pd.DataFrame:
        """The test probabilities blended over every head of every fold, indexed by id."""
        if self.test is None:
            raise ValueError("these predictions hold no test predictions: pass test embeddings to predict")
        heads = self.test.reshape(len(self.test_ids), -1, len(self.species))
        blended = blend_members(heads, method, self.val_loss.reshape(-1), **options)
        return pd.DataFrame(blended, index=self.test_ids.rename("id"), columns=list(self.species))


def out_of_fold_scores(labels, probs: pd.DataFrame, folds) -> dict:
    """``{"log_loss", "accuracy", "fold_mean", "fold_std", "per_fold"}`` of OOF ``probs`` (indexed by id).

    ``folds`` is a Series by id or an array in ``probs``' order; ``per_fold`` a Series fold → log
    loss, ``fold_std`` its standard deviation (ddof=1).
    """
    fold_of = folds.reindex(probs.index).to_numpy() if isinstance(folds, pd.Series) else np.asarray(folds)
    labels = labels.loc[probs.index]
    per_fold = pd.Series(
        {int(k): log_loss(labels.loc[fold_of == k], probs.loc[fold_of == k]) for k in np.unique(fold_of)},
        name="log_loss",
    ).rename_axis("fold")
    return {
        "log_loss": log_loss(labels, probs),
        "accuracy": accuracy(labels, probs),
        "fold_mean": float(per_fold.mean()),
        "fold_std": float(per_fold.std(ddof=1)) if len(per_fold) > 1 else math.nan,
        "per_fold": per_fold,
    }


def score_table(named_probs: Mapping, labels, folds) -> pd.DataFrame:
    """``log_loss``, ``fold_std`` and ``accuracy`` of each named set of OOF probabilities, in the given order.

    ``named_probs`` maps a name to OOF probabilities, or to (probabilities, their folds) for an
    entry whose folds are not ``folds`` (a random CV next to site-grouped ones).
    """
    rows = []
    for value in named_probs.values():
        probs, own_folds = value if isinstance(value, tuple) else (value, folds)
        scores = out_of_fold_scores(labels, probs, own_folds)
        rows.append({key: scores[key] for key in ("log_loss", "fold_std", "accuracy")})
    return pd.DataFrame(rows, index=pd.Index(list(named_probs), tupleize_cols=False))


def compare_blends(
    candidates: FoldPredictions | Mapping[str, FoldPredictions],
    labels,
    *,
    blends: Sequence[str] = BLENDS,
    **options,
) -> pd.DataFrame:
    """`score_table` of every blend (of every candidate, for a dict name → FoldPredictions), best first.

    The index is ``blend``, or (candidate, blend) for a dict; ties keep the given order.
    ``options`` (``power``, ``cutoff``, ``max_ratio``) go to the weighted blend.
    """
    named = candidates if isinstance(candidates, Mapping) else {None: candidates}
    probs = {
        (name, method): predictions.oof_probs(method, **options)
        for name, predictions in named.items()
        for method in blends
    }
    folds = next(iter(named.values())).folds
    table = score_table(probs, labels, folds)
    if isinstance(candidates, Mapping):
        table.index = pd.MultiIndex.from_tuples(table.index, names=["candidate", "blend"])
    else:
        table.index = pd.Index([method for _, method in table.index], name="blend")
    return table.sort_values("log_loss", kind="stable")


@dataclass(frozen=True)
class Calibration:
    """One temperature for the test set (fitted on every OOF image), and OOF probabilities calibrated without peeking.

    Fold k's ``oof_probs`` are calibrated with ``fold_temperatures[k]``, fitted on the other
    folds only, so their log loss is an honest estimate of the calibrated score.
    """

    temperature: float
    fold_temperatures: pd.Series
    oof_probs: pd.DataFrame

    def apply(self, probs: pd.DataFrame) -> pd.DataFrame:
        """``probs`` recalibrated with :attr:`temperature` (softmax of log p / T)."""
        return apply_temperature(probabilities_to_logits(probs), self.temperature)


def calibrate_out_of_fold(labels, probs: pd.DataFrame, folds) -> Calibration:
    """Fit one temperature on OOF ``probs`` (a head or a blend), cross-fitted by fold for an honest OOF score.

    Fitted on log-probabilities (logits up to a per-row constant, :func:`probabilities_to_logits`);
    a temperature fitted on the very images it calibrates would flatter them a little.
    """
    fold_of = folds.reindex(probs.index).to_numpy() if isinstance(folds, pd.Series) else np.asarray(folds)
    labels = labels.loc[probs.index]
    logits = probabilities_to_logits(probs)
    calibrated = probs.copy()
    temperatures = {}
    for fold in np.unique(fold_of):
        others, rows = fold_of != fold, fold_of == fold
        temperature = fit_temperature(labels.loc[others], logits.loc[others])
        temperatures[int(fold)] = temperature
        calibrated.loc[rows] = apply_temperature(logits.loc[rows], temperature).to_numpy()
    return Calibration(
        temperature=fit_temperature(labels, logits),
        fold_temperatures=pd.Series(temperatures, name="temperature").rename_axis("fold"),
        oof_probs=calibrated,
    )
