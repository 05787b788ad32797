"""The synthetic Taï-like sample dataset: camera-trap scenes in exactly the competition layout (docs/sample.md).

Learners without the Conser-vision images get a dataset every notebook reads unchanged, with the real
data's facts: disjoint train and test sites, heavy-tailed site sizes, class shares, image sizes, infrared
night shots, info bands, and a simulated detector's ``detections.json``. By role: ``plan`` decides every
image from the seed; ``draw`` draws one (``scenery``, ``animals``, ``sketch``, ``paint``), each from
``(seed, image index)`` so the bytes do not depend on the workers; ``detector`` simulates the boxes;
``write`` runs the workers and writes the folder; ``cli`` is ``python -m conserviz_utils.tools.sample``.
"""

from __future__ import annotations

from conserviz_utils.errors import SampleFolderError, SampleParameterError
from conserviz_utils.tools.sample.cli import main
from conserviz_utils.tools.sample.draw import sample_grid
from conserviz_utils.tools.sample.plan import (
    REAL_CLASS_COUNTS, REAL_IMAGE_SIZES, REAL_N_TEST, REAL_N_TRAIN, REAL_TEST_SITES, REAL_TRAIN_SITES, plan_sample,
)
from conserviz_utils.tools.sample.write import (
    DETECTIONS_NAME, GENERATOR_NAME, GENERATOR_VERSION, INCOMPLETE_NAME, MARKER_NAME, SampleReport, generate_sample,
    sample_marker,
)

__all__ = [
    "DETECTIONS_NAME", "GENERATOR_NAME", "GENERATOR_VERSION", "INCOMPLETE_NAME", "MARKER_NAME", "REAL_CLASS_COUNTS",
    "REAL_IMAGE_SIZES", "REAL_N_TEST", "REAL_N_TRAIN", "REAL_TEST_SITES", "REAL_TRAIN_SITES", "SampleFolderError",
    "SampleParameterError", "SampleReport", "generate_sample", "main", "plan_sample", "sample_grid", "sample_marker",
]
