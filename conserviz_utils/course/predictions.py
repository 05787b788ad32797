"""Predictions computed once: logits cached on disk, and cached embeddings reused for a frozen backbone.

Notebook 05 needs the eval images' logits (:func:`eval_logits`) and notebook 06 the test images'
(:func:`test_logits`). Running the network over thousands of images takes minutes on a CPU, so each
set of logits is computed once and kept in ``outputs/predictions/`` as a CSV with a provenance
sidecar (:mod:`conserviz_utils.course.provenance`) keyed on the model's weights, the images and the
data: a rerun of 05 or 06 reads the file, and a new checkpoint or other data never does.

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
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from torch import nn

from conserviz_utils.course.embeddings import (
    DIGESTS_FOLDER,
    Embeddings,
    compute_embeddings,
    embeddings_key,
    load_embeddings,
    weights_fingerprint,
)
from conserviz_utils.errors import ConservizError, ImageLoadError
from conserviz_utils.course.features import predict_logits_from_embeddings
from conserviz_utils.course.steps import embedding_transform
from conserviz_utils.data import ImagesDataset, make_loader
from conserviz_utils.inference import predict_logits
from conserviz_utils.files.fileio import atomic_write_csv
from conserviz_utils.course.provenance import (
    FileDigests,
    check_matches,
    data_fingerprint,
    make_provenance,
    read_sidecar,
    write_sidecar,
)

if TYPE_CHECKING:
    from conserviz_utils.course.settings import CourseSettings

__all__ = [
    "HEAD_ONLY_STAGE",
    "cached_logits",
    "embed_and_predict",
    "eval_logits",
    "find_cached_embeddings",
    "head_logits",
    "ids_fingerprint",
    "logits_provenance",
    "prediction_loader",
    "read_logits",
    "test_logits",
    "uses_frozen_backbone",
    "write_logits",
]

#: The ``stage`` a checkpoint's ``extra`` records when the head on frozen embeddings was kept.
HEAD_ONLY_STAGE = "head-only"

#: Precisions an embeddings cache entry may have been computed in (tried when its record lacks one).
_ENTRY_PRECISIONS = ("fp32", "bf16", "fp16")


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
        Float64 logits indexed by id, one column per species; ``.attrs["how"]`` says how they were
        computed (or where they were read from). Logits of a loader that skipped unreadable images
        are returned but never written (they lack rows).
    """
    fingerprint = data_fingerprint(data, data_part)
    expected = logits_provenance(model, data, data_part, ids, species, data_fingerprint_value=fingerprint)
    ok, reason = check_matches(path, expected)
    if ok:
        logits = read_logits(path, ids, species)
        if logits is not None:
            how = ((read_sidecar(path) or {}).get("extra") or {}).get("how") or "computed earlier"
            logits.attrs["how"] = f"read from {Path(path).name} ({how})"
            return logits
        reason = f"{Path(path).name} cannot be read back"
    if Path(path).exists() and say is not None:
        say(f"{reason}; predicting again")
    logits, how = compute()
    logits.attrs["how"] = how
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


def prediction_loader(model, features, settings: CourseSettings):
    """A loader over ``features``' images in ``model``'s input format, read through the run's image cache."""
    dataset = ImagesDataset(features, transform=embedding_transform(model.arch), cache_dir=settings.artifacts.images)
    return make_loader(dataset, batch_size=2 * settings.batch_size)


def _species_of(checkpoint: dict | None, data) -> list[str]:
    """The species order of a checkpoint's logits (the data's when the checkpoint does not say)."""
    return list((checkpoint or {}).get("species") or data.species)


def _checkpoint_note(settings: CourseSettings, checkpoint: dict | None) -> dict:
    """What a predictions record says about the checkpoint it came from (informative only)."""
    checkpoint = checkpoint or {}
    return {
        "checkpoint": str(settings.artifacts.checkpoint),
        "checkpoint_saved_at": checkpoint.get("saved_at"),
        "stage": (checkpoint.get("extra") or {}).get("stage"),
    }


def eval_logits(model, checkpoint: dict | None, data, splits, settings: CourseSettings, *, progress: bool = True,
                verbose: bool = True):
    """The kept model's logits on the eval images, computed once.

    Read from ``outputs/predictions/eval_logits.csv`` while its record matches this model's
    weights, these images and this data. Otherwise computed: when the checkpoint kept the
    head-only stage, its backbone is the frozen one notebook 04 embedded every training image
    with, so the logits are the head over those cached embeddings (milliseconds); else the model
    runs over the eval images. Either way the result is written for the next run.

    Args:
        model: The model of the checkpoint (``load_checkpoint``'s first value).
        checkpoint: Its dictionary (``load_checkpoint``'s second value): the stage and species.
        splits: The split whose eval side is predicted.

    Returns:
        Float64 logits indexed by id, one column per species.
    """
    eval_ids = splits[1]
    species = _species_of(checkpoint, data)
    features = data.train_features.loc[eval_ids]
    transform = embedding_transform(model.arch)

    def compute():
        if uses_frozen_backbone(checkpoint):
            found = find_cached_embeddings(model, data.train_features, eval_ids,
                                           cache_dir=settings.artifacts.features, transform=transform)
            if found is not None:
                return head_logits(model, found, species), "the head over cached embeddings"
            logits = embed_and_predict(model, features, species, cache_dir=settings.artifacts.features,
                                       transform=transform, batch_size=2 * settings.batch_size, progress=progress)
            return logits, "the head over newly cached embeddings"
        loader = prediction_loader(model, features, settings)
        return predict_logits(model, loader, species=species, progress=progress), "the model over the images"

    return cached_logits(settings.artifacts.eval_logits, model, data, "train", eval_ids, species, compute,
                         extra=_checkpoint_note(settings, checkpoint), say=print if verbose else None)


def test_logits(model, checkpoint: dict | None, data, settings: CourseSettings, *, progress: bool = True,
                verbose: bool = True):
    """The kept model's logits on the test images, computed once (see :func:`eval_logits`).

    Cached in ``outputs/predictions/test_logits.csv``; a head-only checkpoint embeds the test
    images once with its frozen backbone (cached under ``outputs/features``) and applies the head.
    """
    features = data.test_features
    species = _species_of(checkpoint, data)

    def predict_test_images():
        if uses_frozen_backbone(checkpoint):
            logits = embed_and_predict(model, features, species, cache_dir=settings.artifacts.features,
                                       transform=embedding_transform(model.arch),
                                       batch_size=2 * settings.batch_size, progress=progress)
            return logits, "the head over cached embeddings"
        loader = prediction_loader(model, features, settings)
        return predict_logits(model, loader, species=species, progress=progress), "the model over the images"

    def compute():
        try:
            return predict_test_images()
        except ImageLoadError as exc:
            # The generic fix offers to drop the image's CSV row; a submission needs every test row.
            raise ImageLoadError(
                f"a test image cannot be read: {exc.problem}", path=exc.path, rows=exc.rows,
                fix="extract it again from competition.zip (or rebuild the sample with `make sample`); every "
                "test image needs a row in the submission, so its row cannot be left out",
            ) from None

    return cached_logits(settings.artifacts.test_logits, model, data, "test", features.index, species, compute,
                         extra=_checkpoint_note(settings, checkpoint), say=print if verbose else None)


# Named for the test images, not a test: pytest must not collect it where a test module imports it.
test_logits.__test__ = False
