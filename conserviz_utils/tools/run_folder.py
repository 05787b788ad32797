"""What a ``conserviz`` run folder holds, checked by the one staleness rule before a command uses it.

Where the notebooks' ``ensure_*`` steps rebuild an artifact whose provenance record no longer matches
(:func:`conserviz_utils.course.provenance.check_matches`), the command line refuses, naming the flags
that fix it: ``train --stage finetune`` starts only from a head of this data, split and architecture;
``train --resume`` continues only a state of this data, split, recipe and starting model (a finished
run deletes it); ``predict`` and ``submit`` use a temperature fitted for that very checkpoint (by content).
"""

from __future__ import annotations

from pathlib import Path

from conserviz_utils.course.provenance import check_matches, make_provenance, remove_with_sidecar, write_sidecar
from conserviz_utils.course.recipe import Recipe
from conserviz_utils.errors import CheckpointError

__all__ = ["METRICS_MODEL_INPUT", "check_start_model", "finish_resume", "metrics_record", "model_temperature",
           "prepare_resume", "resume_provenance"]

#: The name under which a metrics record lists the checkpoint it scored (``course.results``' too).
METRICS_MODEL_INPUT = "model.pt"
#: What a fine-tuning needs of the head it starts from: the head's other settings do not matter.
START_MODEL_SETTINGS = ("arch", "pretrained", "split")


def _split_fingerprint(split) -> str:
    from conserviz_utils.course.splits import split_fingerprint

    return split_fingerprint(split)


def check_start_model(path: Path, data, split, recipe: Recipe, pretrained: bool, command: str) -> None:
    """Refuse (CheckpointError) to fine-tune a model.pt trained on other data, split or architecture.

    ``command`` is the command line that trains a head for this data (the fix names it).
    """
    expected = make_provenance(
        data=data, data_part="train",
        settings={"arch": recipe.arch, "pretrained": bool(pretrained), "split": _split_fingerprint(split)},
    )
    ok, reason = check_matches(path, expected, settings_keys=START_MODEL_SETTINGS)
    if not ok:
        raise CheckpointError(
            f"cannot fine-tune this model here: {reason}; its eval log loss is not comparable with a "
            "fine-tuning on this data and split",
            path=path,
            fix=f"train the head on this data first ({command} --stage both), or use another --out for this data",
        )


def resume_provenance(data, split, recipe: Recipe, pretrained: bool, start: Path) -> dict:
    """The record of a fine-tuning's resume state: the data, split and recipe, and the model it started from."""
    inputs = {"model.pt": start} if start.is_file() else {}
    settings = {"recipe": recipe.to_dict(), "pretrained": bool(pretrained), "split": _split_fingerprint(split)}
    return make_provenance(data=data, data_part="train", settings=settings, inputs=inputs)


def prepare_resume(path: Path, expected: dict, resume: bool, write: bool = True) -> bool:
    """Check the resume state before ``--resume`` continues it, or clear it for a fresh start; returns ``resume``.

    Args:
        expected: :func:`resume_provenance` of this run.
        resume: ``--resume`` was given and the state exists.
        write: This process writes files (rank 0 under torchrun).

    Raises:
        CheckpointError: the state belongs to another run, or it is damaged; the fix says how to start over.
    """
    from conserviz_utils.runtime.checkpoint import resume_state

    start_over = "run the same command without --resume to start fine-tuning afresh"
    if resume:
        ok, reason = check_matches(path, expected)
        if not ok:
            raise CheckpointError(f"cannot resume: {reason}", path=path,
                                  fix=f"{start_over} (the state is replaced), or resume with the --data, --out and "
                                  "flags of the run that was stopped")
        try:
            resume_state(path)
        except CheckpointError as err:
            raise CheckpointError(f"cannot resume from this fine-tuning state: {err.problem}", path=path,
                                  fix=f"delete {path} or {start_over}") from None
        return True
    if write:
        # An earlier run's state must not survive under this run's record.
        remove_with_sidecar(path)
        write_sidecar(path, expected, digest=False)
    return False


def finish_resume(path: Path) -> None:
    """Delete a finished fine-tuning's resume state and its record: nothing is left to resume."""
    remove_with_sidecar(path)


def metrics_record(data, split, checkpoint: Path) -> dict:
    """The record of metrics.json: the data and split it scored, and the checkpoint by content."""
    return make_provenance(data=data, data_part="train", settings={"split": _split_fingerprint(split)},
                           inputs={METRICS_MODEL_INPUT: checkpoint})


def model_temperature(checkpoint: Path, candidates: list[Path]) -> tuple[float, str]:
    """(temperature, where) fitted for ``checkpoint`` by the first metrics file whose record names it.

    ``where`` names the metrics file, or, with temperature 1, the one-line reason none applies.
    """
    import json
    import math

    expected = make_provenance(inputs={METRICS_MODEL_INPUT: checkpoint})
    reasons = []
    for path in dict.fromkeys(candidates):
        if not path.is_file():
            continue
        ok, reason = check_matches(path, expected, ignore=("data", "settings"))
        if ok:
            try:
                temperature = float(json.loads(path.read_text(encoding="utf-8"))["temperature"])
            except (OSError, ValueError, KeyError, TypeError):
                reason = f"{path.name} has no readable temperature"
            else:
                if math.isfinite(temperature) and temperature > 0:
                    return temperature, str(path)
                reason = f"{path.name} holds temperature {temperature}, not a positive number"
        reasons.append(f"{path}: {reason}")
    if not reasons:
        return 1.0, f"no metrics.json beside {checkpoint.name} (conserviz evaluate fits one)"
    return 1.0, "; ".join(reasons) + f" (conserviz evaluate --checkpoint {checkpoint} fits one)"
