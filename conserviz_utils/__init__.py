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

#: Channel means and standard deviations of ImageNet, which every pretrained backbone expects.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

from conserviz_utils.errors import (  # noqa: E402  (the constants first: errors may name them)
    CheckpointError,
    ConservizError,
    DataValidationError,
    ImageLoadError,
    SubmissionError,
    TrainingError,
    WeightsUnavailableError,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPECIES",
    "ConservizError",
    "DataValidationError",
    "ImageLoadError",
    "CheckpointError",
    "SubmissionError",
    "TrainingError",
    "WeightsUnavailableError",
]
