"""Checkers of notebook 03's exercises: what a frozen ResNet50 trains, and softmax by hand."""

from __future__ import annotations

import functools

import numpy as np

from conserviz_utils.teaching.exercises.results import (
    as_array,
    checker,
    close,
    correct,
    hint,
    kind_of,
    read_number,
    rounded_as_displayed,
    same,
    unanswered,
)

FROZEN = "Exercise 1 · what a frozen model trains"
SOFTMAX = "Exercise 2 · softmax by hand"
HALF = ("bfloat16", "float16")


@functools.lru_cache(maxsize=8)
def _parameter_counts(arch: str, head: str) -> dict[str, int]:
    """Parameter counts of a frozen ``build_model(arch, head=head)``, built without weights (no download)."""
    from torch import nn

    from conserviz_utils.models import build_model, count_parameters, freeze_backbone

    model = freeze_backbone(build_model(arch, pretrained=False, head=head, seed=0))
    total, trainable = count_parameters(model)
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    return {
        "total": total,
        "trainable": trainable,
        "weights_only": sum(m.weight.numel() for m in linears),
        "last_layer": sum(p.numel() for p in linears[-1].parameters()),
    }


@checker(FROZEN, "the number of trainable parameters, one whole number")
def check_frozen_trainable(answer, arch: str = "resnet50", head: str = "seed"):
    """Exercise 03·1: how many parameters a frozen ResNet50 with the seed head still trains."""
    name = f"Exercise 1 · what a frozen {arch} trains"
    if answer is None:
        return unanswered(name, "the number of trainable parameters")
    value = read_number(name, answer, "count")
    counts = _parameter_counts(arch, head)
    total, trainable = counts["total"], counts["trainable"]
    if value == trainable:
        return correct(name, f"only the head trains: {trainable:,} of {total:,} parameters "
                             f"({trainable / total:.1%}); the backbone's {total - trainable:,} stay "
                             "as ImageNet left them")
    if value == total:
        return hint(name, "that is every parameter, the frozen backbone's too; count only those "
                          "that still require gradients")
    if value == total - trainable:
        return hint(name, "that is the frozen backbone; the question asks what still trains")
    if value == counts["weights_only"]:
        return hint(name, "close: you counted the weights of the head's layers but not their biases")
    if value == counts["last_layer"]:
        return hint(name, "that is only the head's last Linear layer; the seed head has two")
    if close(value, trainable / total) or close(value, 100 * trainable / total):
        return hint(name, "that is the share of the model that trains; give the count of parameters itself")
    for factor, unit in ((1e6, "millions"), (1e3, "thousands")):
        if close(value * factor, trainable):
            return hint(name, f"give the count itself, not in {unit}")
    if arch != "efficientnet_lite0" and value == _parameter_counts("efficientnet_lite0", head)["trainable"]:
        return hint(name, f"that is the frozen EfficientNet-Lite0 of this notebook; build a {arch}")
    return hint(name, f"not quite: build the {arch} with pretrained=False, freeze its backbone, "
                      "then count the parameters that still train")


def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    exp = np.exp(z - z.max(axis=axis, keepdims=True))
    return exp / exp.sum(axis=axis, keepdims=True)


@checker(SOFTMAX, "a table of probabilities shaped like the logits",
         placeholder="your probabilities (one row per image)")
def check_softmax(probs, logits):
    """Exercise 03·2: softmax of the (images, species) ``logits`` by hand; rounded as displayed counts."""
    z = as_array(logits)
    p = as_array(probs)
    if p is None:
        return hint(SOFTMAX, f"give a table of numbers, one row per image and one column per "
                             f"species (got {kind_of(probs)})")
    if p.shape != z.shape:
        if p.shape == z.shape[::-1] and p.ndim == 2:
            return hint(SOFTMAX, f"your table is transposed, shape {p.shape}: give one row per "
                                 f"image and one column per species, shape {z.shape}")
        return hint(SOFTMAX, f"give one row per image and one column per species: shape {z.shape}, not {p.shape}")
    if not np.isfinite(p).all():
        return hint(SOFTMAX, "your table holds NaN or infinite values: exp of a large logit overflows; subtracting "
                             "each row's largest logit first changes nothing in the result and keeps exp finite")
    right = _softmax(z, axis=1)
    # float32 arithmetic; a half-precision answer (bf16, fp16) carries about 3 digits
    tolerance = 5e-3 if str(getattr(probs, "dtype", "")).endswith(HALF) else 1e-4
    if same(p, right, tolerance) or rounded_as_displayed(p, right):
        return correct(SOFTMAX, "each row is exp(logits) over its sum: positive, adding up to 1, "
                                "and ranking the species exactly as the logits do")
    if same(p, 100 * right, 100 * tolerance) or rounded_as_displayed(p / 100, right):
        return hint(SOFTMAX, "these are percentages (each row adds up to 100); give probabilities between 0 and 1")
    if same(p, _softmax(z, axis=0), tolerance):
        return hint(SOFTMAX, "each column adds up to 1: you normalised over the images (dim 0); "
                             "normalise each image's row (dim 1)")
    exp = np.exp(z)
    if same(p, exp, tolerance * max(1.0, float(exp.max()))):
        return hint(SOFTMAX, "you took exp but did not divide by each row's sum")
    with np.errstate(divide="ignore", invalid="ignore"):
        plain = z / z.sum(axis=1, keepdims=True)
    if np.isfinite(plain).all() and same(p, plain, tolerance):
        return hint(SOFTMAX, "divide exp(logits) by its row sum, not the logits themselves: logits can be negative")
    if same(p, np.log(right), tolerance):
        return hint(SOFTMAX, "these are log-probabilities (all negative); take their exp")
    if same(p, 1 / (1 + np.exp(-z)), tolerance):
        return hint(SOFTMAX, "that is the sigmoid, each species on its own; softmax divides each "
                             "exp by the sum over the image's row, so the row adds up to 1")
    if same(p, np.exp(z - z.max(axis=1, keepdims=True)), tolerance):
        return hint(SOFTMAX, "you subtracted each row's largest logit (fine) but did not divide by the row's sum")
    if same(p, z, tolerance):
        return hint(SOFTMAX, "these are the logits unchanged")
    top = np.zeros_like(right)
    top[np.arange(len(z)), z.argmax(axis=1)] = 1.0
    if same(p, top, tolerance):
        return hint(SOFTMAX, "that marks the top species with 1 (argmax); give every species' probability")
    return hint(SOFTMAX, "not quite: each row should be positive and add up to 1 — exp first, "
                         "then divide by the row's sum")
