"""Checkpoints: weights plus what rebuilds, uses and resumes a model, saved atomically.

A checkpoint is a ``torch.save`` archive of one plain dict: the ``state_dict``, the
:func:`~conserviz_utils.models.build_model` arguments that rebuild the model, the species order
of its logits, its input size and normalisation, optimizer and scheduler state, epoch and batch,
metrics, history and library versions. Only tensors and plain values go in, so it loads with
``torch.load(..., weights_only=True)``. ``torch.save(model)`` (the DrivenData walkthrough's way)
pickles code: loading it runs whatever the file names, and torch >= 2.6 refuses it by default.

Saving writes a temporary file beside the target and renames it over the old checkpoint
(`fileio.atomic_writer`): a crash, Ctrl-C or full disk leaves the previous checkpoint intact.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from conserviz_utils import SPECIES, __version__
from conserviz_utils.errors import CheckpointError
from conserviz_utils.files.fileio import atomic_writer

#: Marks a file as a conserviz checkpoint; :func:`load_checkpoint` refuses anything else.
CHECKPOINT_FORMAT = "conserviz-checkpoint"
#: Bumped when the layout changes incompatibly; older readers refuse newer files.
CHECKPOINT_VERSION = 1

# torch's wordings of "this pickle names a global it will not import": "Unsupported global: GLOBAL
# x.y" and, from torch 2.6 on, "Trying to load unsupported GLOBAL x.y whose module x is blocked".
_UNSUPPORTED_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")
# Globals that mean "somebody pickled a whole model", as the walkthrough's torch.save(model) does.
_MODULE_PREFIXES = ("torch.nn.modules.", "torchvision.models.", "conserviz_utils.models.", "efficientnet", "__main__.")

# How to turn the walkthrough's pickled ResNet50 (fc = Linear -> ReLU -> Dropout -> Linear, the
# seed head) into a checkpoint: its keys are torchvision's, ours add "backbone." and call fc "head".
_CONVERT_RECIPE = (
    "only if you trust where the file comes from, convert it once: "
    "old = torch.load(path, weights_only=False).state_dict(); "
    "model = build_model('resnet50', pretrained=False, head='seed'); "
    "model.load_state_dict({('head.' + k[3:] if k.startswith('fc.') else 'backbone.' + k): v "
    "for k, v in old.items()}); save_checkpoint(new_path, model); then load new_path"
)
_CHECKPOINT_FIX = "point to a checkpoint written by save_checkpoint (or fit(checkpoint_path=...))"


def _versions() -> dict[str, str | None]:
    """Versions of the libraries a checkpoint was written with (for bug reports, not checks)."""
    try:
        torchvision_version = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        torchvision_version = None
    return {
        "conserviz": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision_version,
        "python": platform.python_version(),
    }


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain Python values and tensors; what would need unpickling fails now, naming its key."""
    if value is None or isinstance(value, (torch.Tensor, torch.dtype, torch.device, torch.Size)):
        return value
    if type(value).__module__ == "numpy":
        if hasattr(value, "shape") and value.shape != ():
            return torch.as_tensor(value)
        return value.item()
    # Subclasses (torch's TorchVersion is a str, numpy's float64 a float) would need unpickling.
    for plain_type in (bool, int, float, str, bytes):
        if isinstance(value, plain_type):
            return plain_type(value)
    if isinstance(value, Mapping):
        out = OrderedDict() if isinstance(value, OrderedDict) else {}
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(
                    f"cannot store {where}: key {key!r} is a {type(key).__name__}",
                    fix="use str or int keys only",
                )
            out[key] = _plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    raise CheckpointError(
        f"cannot store {where}: it is a {type(value).__module__}.{type(value).__name__}, and a "
        "checkpoint holds only numbers, strings, lists, dicts and tensors so that it loads "
        "without unpickling code",
        fix="convert it to plain values first (e.g. a DataFrame with df.to_dict(orient='list'))",
    )


def _model_description(model: nn.Module) -> dict[str, Any]:
    """What rebuilds ``model`` through build_model, or Nones for a model built another way."""
    description: dict[str, Any] = dict.fromkeys(
        ("model_class", "arch", "head", "dropout", "num_classes", "input_size", "resize_size", "mean", "std",
         "interpolation")
    )
    description.update(
        model_class=f"{type(model).__module__}.{type(model).__qualname__}",
        num_classes=getattr(model, "num_classes", None),
    )
    config = model.config() if callable(getattr(model, "config", None)) else None
    if config is None:
        return description
    from conserviz_utils.models import model_info

    info = model_info(config["arch"])
    description.update(
        arch=config["arch"],
        head=config["head"],
        dropout=float(config["dropout"]),
        num_classes=int(config["num_classes"]),
        input_size=int(info.input_size),
        resize_size=int(info.resize_size),
        mean=[float(m) for m in info.mean],
        std=[float(s) for s in info.std],
        interpolation=str(info.interpolation),
    )
    return description


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    epoch: int | None = None,
    batch: int | None = None,
    metrics: Mapping[str, float] | None = None,
    species: Sequence[str] | None = SPECIES,
    history: Any | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` with what rebuilds, uses and resumes it, atomically; returns the path.

    Args:
        model: A model from ``build_model`` (rebuildable by :func:`load_checkpoint`), or any
            ``nn.Module`` (its weights are stored, but only its own code can rebuild it).
        epoch: Epochs completed; ``batch``: batches completed within the next one.
        species: The class names of the model's logits, in order; None when they are not species.
        history: ``fit``'s DataFrame or a dict of columns.
        extra: Any other plain values (numbers, strings, lists, dicts, tensors).

    Raises:
        CheckpointError: a value cannot be stored safely, the species do not match the model's
            number of logits, or the file cannot be written (the previous one is left intact).
    """
    path = Path(path)
    description = _model_description(model)
    species_list = list(species) if species is not None else None
    num_classes = description["num_classes"]
    if species_list is not None and num_classes is not None and len(species_list) != num_classes:
        raise CheckpointError(
            f"the model gives {num_classes} logits but {len(species_list)} species were given",
            path=path,
            fix="pass the species of the model's outputs in order (species=...), or species=None",
        )
    if history is not None and hasattr(history, "to_dict") and hasattr(history, "columns"):  # a DataFrame
        history = {str(c): history[c].tolist() for c in history.columns}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        **_plain(description, "model description"),
        "species": species_list,
        # Stored as it is, not rebuilt by _plain: the OrderedDict's _metadata must survive.
        "state_dict": model.state_dict(),
        "optimizer": _plain(optimizer.state_dict(), "optimizer state") if optimizer is not None else None,
        "scheduler": _plain(scheduler.state_dict(), "scheduler state") if scheduler is not None else None,
        "epoch": None if epoch is None else int(epoch),
        "batch": None if batch is None else int(batch),
        "metrics": _plain(dict(metrics or {}), "metrics"),
        "history": None if history is None else _plain(dict(history), "history"),
        "extra": _plain(dict(extra or {}), "extra"),
        "versions": _plain(_versions(), "versions"),
        "saved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_writer(path, "wb", what="checkpoint", error=CheckpointError) as handle:
        torch.save(payload, handle)
    return path


def _refusal(err: Exception, path: Path, is_zip: bool) -> CheckpointError:
    """Explain why torch.load refused or could not read ``path``."""
    message = str(err)
    match = _UNSUPPORTED_GLOBAL.search(message)
    name = match.group(1) if match else None
    if name is not None and name.startswith(_MODULE_PREFIXES):
        return CheckpointError(
            f"refused: this file is a whole pickled model ({name}), as torch.save(model) "
            "writes it (the original walkthrough does this). Loading it would unpickle, "
            "that is run, code named inside the file, so conserviz only loads checkpoints "
            "made of weights and plain values",
            path=path,
            fix=_CONVERT_RECIPE,
        )
    if name is not None or ("Weights only load failed" in message and "GLOBAL" in message):
        named = f" ({name})" if name is not None else ""
        return CheckpointError(
            f"refused: this file holds pickled Python objects{named} that would run code "
            "when loaded; conserviz only loads checkpoints made of weights and plain values",
            path=path,
            fix="do not load files you did not create; save checkpoints with save_checkpoint",
        )
    if is_zip:  # a torch.save archive that torch cannot read to the end
        return CheckpointError(
            "the file is truncated or corrupt (an interrupted copy or download?)",
            path=path,
            fix="copy the checkpoint again, or use an earlier one",
        )
    # torch's own text would suggest weights_only=False, the unsafe way out; it is not repeated.
    first_line = message.splitlines()[0] if message else ""
    detail = "" if "Weights only load failed" in message else f" ({type(err).__name__}: {first_line})"
    return CheckpointError(
        f"not a checkpoint: this is not a torch.save archive of weights{detail}", path=path, fix=_CHECKPOINT_FIX
    )


def resume_state(path: str | Path, *, device: str | torch.device = "cpu") -> dict:
    """A checkpoint's validated dictionary (weights, optimizer state, epoch, ...), read with weights_only=True.

    ``fit(resume_from=...)`` uses it; it also suits a model built by your own code:
    ``model.load_state_dict(resume_state(path)["state_dict"])``.

    Raises:
        CheckpointError: missing file, not a conserviz checkpoint, or pickled objects in it.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            "this is a folder, not a checkpoint file", path=path, fix="give the path of the .pt file"
        )
    if not path.is_file():
        raise CheckpointError(
            "no checkpoint file at this path",
            path=path,
            fix="check the path; fit(..., checkpoint_path=...) or save_checkpoint writes one",
        )
    try:
        with open(path, "rb") as handle:
            is_zip = handle.read(4) == b"PK\x03\x04"  # torch.save archives are zip files
    except OSError as err:
        raise CheckpointError(
            f"cannot read the file ({err.strerror or err})", path=path, fix="check that it is readable"
        ) from err
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols before refusing a foreign pickle; the
            # CheckpointError below says everything the user needs.
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch.load raises many types for a bad file; all mean "not a checkpoint"
        raise _refusal(err, path, is_zip) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        values = payload.values() if isinstance(payload, dict) else [None]
        if all(isinstance(v, torch.Tensor) for v in values) and payload:
            raise CheckpointError(
                "this file is a bare state_dict (weights only), not a conserviz checkpoint: it "
                "does not say which architecture, head and species the weights belong to",
                path=path,
                fix="model = build_model(arch, pretrained=False, head=...); "
                "model.load_state_dict(torch.load(path, weights_only=True)); "
                "then save_checkpoint(new_path, model)",
            )
        raise CheckpointError(
            f"not a conserviz checkpoint (it holds a {type(payload).__name__} without the "
            f"{CHECKPOINT_FORMAT!r} marker)",
            path=path,
            fix=_CHECKPOINT_FIX,
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"written by a newer conserviz (checkpoint format {version}; "
            f"this one reads up to {CHECKPOINT_VERSION})",
            path=path,
            fix="upgrade conserviz-utils",
        )
    return payload


def _check_species(payload: dict, species: Sequence[str], path: Path) -> None:
    """Refuse a checkpoint whose logits are not the given species in the given order."""
    saved = payload.get("species")
    wanted = list(species)
    if saved is None:
        raise CheckpointError(
            "the checkpoint does not record which species its outputs are",
            path=path,
            fix="load it with species=None and check the outputs yourself",
        )
    if list(saved) == wanted:
        return
    if sorted(saved) == sorted(wanted):
        problem = f"the checkpoint has the same species in another order: {list(saved)} instead of {wanted}"
        fix = "reorder the columns of its predictions to the data's species order, or retrain"
    else:
        missing = [s for s in wanted if s not in saved]
        extra = [s for s in saved if s not in wanted]
        problem = (
            f"the checkpoint was trained for other species: the data has {missing} that it lacks"
            f" and it has {extra} that the data lacks"
        )
        fix = "use a checkpoint trained on these species, or retrain on this data"
    raise CheckpointError(problem, path=path, column="species", fix=fix)


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    species: Sequence[str] | None = None,
) -> tuple[nn.Module, dict]:
    """``(model in eval mode on device, checkpoint dict)``: the model rebuilt through ``build_model``, weights loaded.

    ``device`` may be "auto". With ``species`` (the data's order), a checkpoint trained for other
    species, or the same ones in another order, is refused.

    Raises:
        CheckpointError: the file is missing, not a conserviz checkpoint (random bytes, a bare
            state_dict, a pickled whole model), of other species, or not rebuildable.
    """
    path = Path(path)
    if str(device) == "auto":
        from conserviz_utils.runtime.device import pick_device

        device = pick_device("auto")
    device = torch.device(device)
    payload = resume_state(path)
    if species is not None:
        _check_species(payload, species, path)
    if payload.get("arch") is None:
        raise CheckpointError(
            f"this checkpoint holds the weights of a custom model ({payload.get('model_class')}), "
            "which build_model cannot rebuild",
            path=path,
            fix="build that model with your own code, then "
            "model.load_state_dict(resume_state(path)['state_dict'])",
        )
    from conserviz_utils.models import build_model

    try:
        model = build_model(
            payload["arch"],
            num_classes=payload["num_classes"],
            pretrained=False,
            head=payload["head"],
            dropout=payload["dropout"],
            progress=False,
        )
    except (ValueError, TypeError) as err:
        raise CheckpointError(
            f"cannot rebuild the model it describes ({err})",
            path=path,
            fix="this checkpoint needs a conserviz version that knows its architecture",
        ) from None
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError) as err:
        first_line = str(err).splitlines()[0]
        raise CheckpointError(
            f"its weights do not fit a {payload['arch']} with a {payload['head']!r} head ({first_line})",
            path=path,
            fix="the file was edited or comes from an incompatible version; use another checkpoint",
        ) from None
    model.to(device).eval()
    return model, payload


__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "load_checkpoint", "resume_state", "save_checkpoint"]
