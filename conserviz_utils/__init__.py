"""Helpers for the conserviz course: camera-trap species classification on Conser-vision data."""

__version__ = "0.1.0"

#: The eight Conser-vision classes, in the sorted order of the label and submission columns.
SPECIES = (
    "antelope_duiker",
    "bird",
    "blank",
    "civet_genet",
    "hog",
    "leopard",
    "monkey_prosimian",
    "rodent",
)

from conserviz_utils.errors import (  # noqa: E402  (SPECIES first: errors may name it)
    CheckpointError,
    ConservizError,
    DataValidationError,
    ImageLoadError,
    SubmissionError,
    TrainingError,
    WeightsUnavailableError,
)

__all__ = [
    "SPECIES",
    "ConservizError",
    "DataValidationError",
    "ImageLoadError",
    "CheckpointError",
    "SubmissionError",
    "TrainingError",
    "WeightsUnavailableError",
]
