"""Checkers of notebook 04's exercises: the head's learning rate, and the epoch early stopping kept."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import pandas as pd

from conserviz_utils.teaching.exercises.results import as_number, checker, correct, hint, read_number

RATE = "Exercise 1 · the head's learning rate"
KEPT = "Exercise 2 · the epoch early stopping kept"
# The exercise trains the recipe's rate, ten times it and a tenth of it.
RATES_TO_TRY = 3


def fresh_head(head, seed: int = 0):
    """A new, untrained copy of ``head`` with seeded weights: each rate of exercise 1 trains its own."""
    import copy

    import torch

    new = copy.deepcopy(head)
    with torch.random.fork_rng(devices=[]):  # leave the global random state as it was
        torch.manual_seed(seed)
        for layer in new.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
    return new


def _eval_rows(history) -> pd.DataFrame | None:
    """The rows of a ``fit_head`` history that hold a held-out log loss; None when there are none."""
    if not isinstance(history, pd.DataFrame) or not {"epoch", "eval_log_loss"} <= set(history.columns):
        return None
    rows = history.dropna(subset=["eval_log_loss"])
    rows = rows[pd.to_numeric(rows["eval_log_loss"], errors="coerce").notna()]
    return rows if len(rows) else None


def _best_row(rows: pd.DataFrame) -> pd.Series:
    """The eval row with the lowest held-out log loss (the epoch early stopping keeps)."""
    return rows.loc[rows["eval_log_loss"].astype(float).idxmin()]


def _histories_problem(histories) -> str | None:
    """What keeps ``lr_histories`` from being compared, or None when it can be."""
    if not isinstance(histories, Mapping):
        return "lr_histories should be a dict: learning rate → the history fit_head returned"
    for rate, history in histories.items():
        if as_number(rate) is None:
            return f"lr_histories has the key {rate!r}; key each history by its learning rate, a number"
        if _eval_rows(history) is None:
            return (f"lr_histories[{rate!r}] is not a fit_head history with held-out log losses "
                    "(eval_log_loss); store what fit_head returns")
    if len(histories) < RATES_TO_TRY:
        tried = ", ".join(f"{float(as_number(r)):g}" for r in histories) or "none"
        return (f"lr_histories holds {len(histories)} run(s) (lr {tried}); train fresh heads at "
                "recipe.head_lr * 10 and / 10 and add their histories first")
    return None


def _trend(rate: float, rows: pd.DataFrame) -> str:
    """Where one run bottomed out, in words."""
    best = _best_row(rows)
    last = int(rows["epoch"].max())
    if int(best["epoch"]) == last:
        return f"lr {rate:g} was still improving at its last epoch ({last})"
    return f"lr {rate:g} bottomed out at epoch {int(best['epoch'])} of {last}"


@checker(RATE, "one of the learning rates you tried, as a number",
         placeholder="the learning rate whose head scored best")
def check_best_learning_rate(answer, histories: Mapping[float, pd.DataFrame]):
    """Exercise 04·1: which head learning rate (a key of ``histories``, rate → fit_head's history) did best."""
    value = read_number(RATE, answer, "learning rate")
    if (problem := _histories_problem(histories)) is not None:
        return hint(RATE, problem)
    runs = {float(as_number(r)): _eval_rows(h) for r, h in histories.items()}
    rates = sorted(runs)
    chosen = [lr for lr in rates if math.isclose(lr, value, rel_tol=1e-3)]
    if not chosen:
        exponent = [lr for lr in rates if math.isclose(math.log10(lr), value, abs_tol=1e-3)] if all(
            lr > 0 for lr in rates) else []
        if exponent:
            return hint(RATE, f"that is the power of ten ({value:g}); give the rate itself, {exponent[0]:g}")
        return hint(RATE, f"{value:g} is not one of the rates you tried ({', '.join(f'{lr:g}' for lr in rates)})")
    best = {lr: float(_best_row(rows)["eval_log_loss"]) for lr, rows in runs.items()}
    winner = min(best.values())
    lr = chosen[0]
    if math.isclose(best[lr], winner, abs_tol=1e-12):
        others = ", ".join(f"{r:g}: {best[r]:.3f}" for r in rates if r != lr)
        place = "highest" if lr == rates[-1] else "lowest" if lr == rates[0] else "middle"
        trends = "; ".join(_trend(r, runs[r]) for r in rates)
        return correct(RATE, f"lr {lr:g}, the {place} rate, reached a held-out log loss of "
                             f"{best[lr]:.3f} (others: {others}). In this run: {trends}")
    if math.isclose(best[lr], max(best.values()), abs_tol=1e-12):
        return hint(RATE, f"lr {lr:g} did worst of all ({best[lr]:.3f}); another rate did better: "
                          "the question asks for the lowest held-out log loss, not the highest")
    last = {r: float(rows.sort_values("epoch")["eval_log_loss"].iloc[-1]) for r, rows in runs.items()}
    if math.isclose(last[lr], min(last.values()), abs_tol=1e-12):
        return hint(RATE, f"lr {lr:g} ends lowest at its last epoch, but early stopping keeps each "
                          "run's best epoch: compare each run's lowest eval_log_loss")
    train_loss = {}
    for r, history in zip(runs, histories.values(), strict=True):
        if "train_loss" in history:
            trained = pd.to_numeric(history["train_loss"], errors="coerce").dropna()
            if len(trained):
                train_loss[r] = float(trained.iloc[-1])
    if train_loss and math.isclose(train_loss.get(lr, math.nan), min(train_loss.values())):
        return hint(RATE, f"lr {lr:g} ends with the lowest training loss: it fits the training "
                          "sites best; judge by the held-out log loss (eval_log_loss)")
    return hint(RATE, f"lr {lr:g}'s best held-out log loss is {best[lr]:.3f}; another rate did "
                      "better; compare the lowest eval_log_loss of each run")


def _pick_history(history, lr):
    """The one history to read: ``history`` itself, or its run at ``lr`` when it is a dict."""
    if isinstance(history, Mapping):
        if lr is None:
            return next(iter(history.values())) if len(history) == 1 else None
        keys = [k for k in history if as_number(k) is not None and math.isclose(as_number(k), lr, rel_tol=1e-6)]
        return history[keys[0]] if keys else None
    return history


@checker(KEPT, "the epoch number, as counted in the history's epoch column",
         placeholder="the epoch whose weights early stopping kept")
def check_best_epoch(answer, history, lr: float | None = None):
    """Exercise 04·2: the epoch early stopping kept, in ``history`` (or exercise 1's dict, at ``lr``).

    ``lr`` is matched up to float rounding, so ``recipe.head_lr * 10`` finds a run stored under ``0.01``.
    """
    value = read_number(KEPT, answer, "epoch")
    rows = _eval_rows(_pick_history(history, lr))
    if rows is None:
        return hint(KEPT, "answer exercise 1 first: this one reads the history of its lr × 10 "
                          "run, which lr_histories does not hold yet")
    best = _best_row(rows)
    epoch = int(best["epoch"])
    last = int(rows["epoch"].max())
    if value == epoch:
        return correct(KEPT, f"epoch {epoch} had the lowest held-out log loss ({float(best['eval_log_loss']):.3f}); "
                             f"training went on to epoch {last} to see whether it would improve, then kept epoch "
                             f"{epoch}'s weights")
    if value == last:
        return hint(KEPT, "that is the last epoch trained; early stopping keeps the one with the "
                          "lowest held-out log loss (eval_log_loss)")
    if math.isclose(value, float(best["eval_log_loss"]), abs_tol=5e-4):
        return hint(KEPT, "that is the lowest held-out log loss itself; give the epoch it was reached at")
    if value in (epoch - 1, epoch + 1):
        return hint(KEPT, "off by one: count epochs as the history's epoch column does (from 1)")
    if isinstance(best.name, numbers.Real) and value == best.name:
        return hint(KEPT, "that is the row's label in the history table; give the value of its epoch column")
    return hint(KEPT, "look for the row with the lowest eval_log_loss in the history")
