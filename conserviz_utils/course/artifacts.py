"""Where the notebooks pass their files along: one output folder, one name per artifact.

Each artifact the course writes has a ``<name>.provenance.json`` sidecar beside it saying what it
was made from (``provenance.sidecar_path``); the ``ensure_*`` steps of ``course`` compare it
with what they would write now and rebuild what no longer matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CourseArtifacts"]


@dataclass(frozen=True)
class CourseArtifacts:
    """The files the notebooks pass along, all under one output folder."""

    output_dir: Path

    @property
    def splits(self) -> Path:
        """The site-grouped train/eval split of notebook 02 (``id,split`` CSV)."""
        return self.output_dir / "splits.csv"

    @property
    def checkpoint(self) -> Path:
        """The trained model of notebook 04, read by 05 and 06."""
        return self.output_dir / "model.pt"

    @property
    def recipe(self) -> Path:
        """The hyperparameters the checkpoint was trained with, beside it (JSON)."""
        return self.output_dir / "recipe.json"

    @property
    def resume(self) -> Path:
        """Fine-tuning's resumable state, written after every epoch and when interrupted."""
        return self.output_dir / "fine_tune_resume.pt"

    @property
    def metrics(self) -> Path:
        """The headline figures of notebook 05, read by 06 and ``make course``."""
        return self.output_dir / "metrics.json"

    @property
    def submission(self) -> Path:
        """The submission file of notebook 06."""
        return self.output_dir / "submission.csv"

    @property
    def predictions(self) -> Path:
        """The cached logits of notebooks 05 and 06, each with a provenance sidecar (safe to delete)."""
        return self.output_dir / "predictions"

    @property
    def eval_logits(self) -> Path:
        """The kept model's logits on the eval images (notebook 05), cached."""
        return self.predictions / "eval_logits.csv"

    @property
    def test_logits(self) -> Path:
        """The kept model's logits on the test images (notebook 06), cached."""
        return self.predictions / "test_logits.csv"

    @property
    def features(self) -> Path:
        """The embedding cache of the frozen backbones."""
        return self.output_dir / "features"

    @property
    def images(self) -> Path:
        """Pre-resized copies of every image the course reads, decoded once (``files.image_cache``; safe to delete)."""
        return self.output_dir / "images"

    @property
    def executed(self) -> Path:
        """The executed copies of the notebooks that ``make course`` ran."""
        return self.output_dir / "executed"
