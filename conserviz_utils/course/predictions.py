"""Predictions computed once: logits cached on disk, and cached embeddings reused for a frozen backbone.

Notebook 05 needs the eval images' logits and notebook 06 the test images'. Running the network
over thousands of images takes minutes on a CPU, so each set of logits is computed once and kept
in ``outputs/predictions/`` as a CSV with a provenance sidecar (:mod:`conserviz_utils.course.provenance`)
keyed on the model's weights, the images and the data: a rerun of 05 or 06 reads the file, and a
new checkpoint or other data never does.

When the kept model is the head-only stage of the default recipe, its backbone is the frozen
pretrained one whose embeddings notebook 04 already cached; the logits are then the head over
those embeddings (:func:`find_cached_embeddings`), which takes milliseconds instead of a pass
over the images.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from conserviz_utils.course.embeddings import (
    DIGESTS_FOLDER,
    Embeddings,
    compute_embeddings,
    embeddings_key,
    load_embeddings,
)
from conserviz_utils.errors import ConservizError
from conserviz_utils.course.features import predict_logits_from_embeddings
from conserviz_utils.files.fileio import atomic_write_csv
from conserviz_utils.course.provenance import (
    FileDigests,
    check_matches,
    data_fingerprint,
    make_provenance,
    write_sidecar,
)

__all__ = [
    "HEAD_ONLY_STAGE",
    "cached_logits",
    "embed_and_predict",
    "find_cached_embeddings",
    "head_logits",
    "ids_fingerprint",
    "logits_provenance",
    "read_logits",
    "uses_frozen_backbone",
    "weights_fingerprint",
    "write_logits",
]

#: The ``stage`` a checkpoint's ``extra`` records when the head on frozen embeddings was kept.
HEAD_ONLY_STAGE = "head-only"

#: Precisions an embeddings cache entry may have been computed in (tried when its record lacks one).
_ENTRY_PRECISIONS = ("fp32", "bf16", "fp16")


def weights_fingerprint(model: nn.Module) -> str:
    """A digest of every weight and buffer of ``model``: equal for equal numbers, wherever they came from."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        # Through bytes: numpy has no bfloat16, and this covers integer buffers too.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def ids_fingerprint(ids: Sequence | pd.Index) -> str:
    """A short digest of a list of image ids, in order (which images a prediction covers)."""
    text = "\n".join(map(str, ids))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def uses_frozen_backbone(checkpoint: dict | None) -> bool:
    """Whether a checkpoint dictionary says its backbone is the frozen, pretrained one (head-only stage)."""
    extra = (checkpoint or {}).get("extra") or {}
    return extra.get("stage") == HEAD_ONLY_STAGE


# --- cached embeddings -------------------------------------------------------------------------


def _entry_records(cache_dir: Path, arch: str):
    """(values path, record) of each embeddings cache entry of ``arch`` in ``cache_dir``."""
    if not cache_dir.is_dir():
        return
    for record_path in sorted(cache_dir.glob(f"{arch}-*.json")):
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a damaged entry: compute_embeddings replaces it when it needs it
        if isinstance(record, dict) and isinstance(record.get("ids"), list) and "key" in record:
            yield record_path.with_suffix(".npy"), record


def find_cached_embeddings(
    model: nn.Module,
    features: pd.DataFrame,
    ids: Sequence | pd.Index,
    *,
    cache_dir: str | os.PathLike,
    transform,
) -> Embeddings | None:
    """The embeddings of ``ids`` from an existing cache entry of ``model``'s backbone, or None.

    An entry qualifies when it covers every id and its key is the one
    :func:`~conserviz_utils.course.embeddings.compute_embeddings` would give now for the images it
    holds, ``model``'s backbone, ``transform`` and the precision it was computed in: the same
    test that makes ``compute_embeddings`` reuse it, so a changed image or backbone never
    matches. Notebook 04 embeds all training images, so the eval images' embeddings are found
    in its entry.

    Args:
        model: A model from ``build_model`` (its ``arch`` names the entries to look at).
        features: A features frame holding (at least) every image of the entries, e.g.
            ``data.train_features``; its ``path`` column keys the images' content.
        ids: The images wanted.
        cache_dir: The embeddings cache folder (``settings.artifacts.features``).
        transform: The image transform the entries were computed with.

    Returns:
        The :class:`Embeddings` of ``ids`` in that order, or None when no entry fits.
    """
    cache_dir = Path(cache_dir)
    wanted = pd.Index(ids, name="id")
    arch = str(getattr(model, "arch", type(model).__name__))
    digests = FileDigests(cache_dir / DIGESTS_FOLDER)
    for values_path, record in _entry_records(cache_dir, arch):
        entry_ids = pd.Index(record["ids"], name="id")
        if not wanted.isin(entry_ids).all() or not entry_ids.isin(features.index).all():
            continue
        entry_features = features.loc[entry_ids]
        precisions = [record["precision"]] if record.get("precision") else list(_ENTRY_PRECISIONS)
        if not any(
            embeddings_key(model, entry_features, transform, precision, digests=digests) == record["key"]
            for precision in precisions
        ):
            continue
        try:
            entry = load_embeddings(values_path)
        except ConservizError:
            continue
        return entry.select(wanted)
    return None


# --- logits on disk ----------------------------------------------------------------------------


def logits_provenance(
    model: nn.Module,
    data,
    data_part: str,
    ids: Sequence | pd.Index,
    species: Sequence[str],
    *,
    extra: dict | None = None,
    data_fingerprint_value: str | None = None,
) -> dict:
    """The provenance record of a logits file: the data, the images, the species and the model's weights."""
    return make_provenance(
        data=data,
        data_part=data_part,
        data_fingerprint_value=data_fingerprint_value,
        settings={
            "model weights": weights_fingerprint(model),
            "images": f"{len(ids)} ({ids_fingerprint(ids)})",
            "species": list(species),
        },
        extra=extra,
    )


def read_logits(path: str | os.PathLike, ids: Sequence | pd.Index, species: Sequence[str]) -> pd.DataFrame | None:
    """Logits written by :func:`write_logits`, or None when the file does not hold exactly these ids and species."""
    try:
        frame = pd.read_csv(path, index_col="id", dtype={"id": str})
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    wanted = pd.Index([str(i) for i in ids], name="id")
    if list(frame.columns) != list(species) or not frame.index.equals(wanted):
        return None
    values = frame.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        return None
    frame = frame.astype(np.float64)
    frame.index = pd.Index(ids, name="id")
    frame.attrs["skipped"] = []
    return frame


def write_logits(path: str | os.PathLike, logits: pd.DataFrame, provenance: dict) -> Path:
    """Write logits as a CSV (full float precision, atomically), then its provenance sidecar."""
    path = atomic_write_csv(Path(path), logits, what="cached predictions", lineterminator="\n")
    write_sidecar(path, provenance)
    return path


def cached_logits(
    path: str | os.PathLike,
    model: nn.Module,
    data,
    data_part: str,
    ids: Sequence | pd.Index,
    species: Sequence[str],
    compute: Callable[[], tuple[pd.DataFrame, str]],
    *,
    extra: dict | None = None,
    say: Callable[[str], None] | None = print,
) -> pd.DataFrame:
    """The logits of ``model`` for ``ids``: read from ``path`` when they still apply, else computed and written.

    Args:
        path: The logits CSV (its sidecar holds the provenance).
        model: The model whose logits they are (its weights key the file).
        data: The ``CompetitionData`` of the images.
        data_part: "train" (eval images) or "test" (see ``provenance.DATA_PARTS``).
        ids: The images, in the order of the rows.
        species: The logits' columns.
        compute: Called when the file does not apply: returns ``(logits, how)``, ``how``
            saying how they were computed (recorded in the sidecar).
        extra: More informative fields for the sidecar (e.g. the checkpoint's path).
        say: Where the one-line note goes when an existing file is replaced (None: nowhere).

    Returns:
        Float64 logits indexed by id, one column per species. Logits of a loader that skipped
        unreadable images are returned but never written (they lack rows).
    """
    fingerprint = data_fingerprint(data, data_part)
    expected = logits_provenance(model, data, data_part, ids, species, data_fingerprint_value=fingerprint)
    ok, reason = check_matches(path, expected)
    if ok:
        logits = read_logits(path, ids, species)
        if logits is not None:
            return logits
        reason = f"{Path(path).name} cannot be read back"
    if Path(path).exists() and say is not None:
        say(f"{reason}; predicting again")
    logits, how = compute()
    if not logits.attrs.get("skipped"):
        record = logits_provenance(
            model, data, data_part, ids, species, data_fingerprint_value=fingerprint,
            extra={"how": how, **(extra or {})},
        )
        write_logits(path, logits, record)
    return logits


def head_logits(model: nn.Module, embeddings: Embeddings, species: Sequence[str]) -> pd.DataFrame:
    """The head's logits over cached embeddings (what the whole model gives, without the backbone pass)."""
    logits = predict_logits_from_embeddings(model.head, embeddings, species)
    logits.attrs["skipped"] = []
    return logits


def embed_and_predict(
    model: nn.Module,
    features: pd.DataFrame,
    species: Sequence[str],
    *,
    cache_dir: str | os.PathLike,
    transform,
    batch_size: int,
    progress: bool,
) -> pd.DataFrame:
    """Embed ``features``' images with the frozen backbone (cached, for the next time), then apply the head."""
    embeddings = compute_embeddings(
        model, features, transform=transform, cache_dir=cache_dir, batch_size=batch_size, progress=progress
    )
    return head_logits(model, embeddings, species)
