"""The synthetic Taï-like sample dataset: camera-trap scenes in exactly the competition layout.

Learners without the Conser-vision images (offline, in CI, in a workshop) get a dataset that every
notebook reads unchanged: the same four CSVs, the same columns, ids ``ZJ000000…`` with test ids
continuing after train ids, and JPEGs under ``train_features/`` and ``test_features/``. It mirrors
the facts of the real data (docs/sample.md lists them): train and test sites disjoint in the
proportion 148:51, heavy-tailed site sizes, the class shares, species that live at only some
sites, the camera image sizes, infrared night shots and camera info bands. It also holds
``detections.json``, what a MegaDetector-like detector would report for its images (simulated).

How a dataset is made, by module:

1. :mod:`~conserviz_utils.tools.sample.plan` decides, from the seed alone, every image's split, site,
   species, size, day or night and info band (a DataFrame; cheap, so tests check its
   statistics at full scale).
2. :mod:`~conserviz_utils.tools.sample.draw` draws each planned image: the site's style and
   persistent background (:mod:`~conserviz_utils.tools.sample.scenery`), lighting, one animal
   with the body plan of its class (:mod:`~conserviz_utils.tools.sample.animals`, drawn with the
   pen of :mod:`~conserviz_utils.tools.sample.sketch`; both use
   :mod:`~conserviz_utils.tools.sample.paint`), occluding plants, camera effects, the info band.
   Every random draw of an image comes from ``(seed, image index)`` and every draw of a site
   from ``(seed, site number)``, so the bytes do not depend on the number of workers or their
   order.
3. :mod:`~conserviz_utils.tools.sample.detector` turns what was drawn into a detector's boxes, with a
   detector's faults, from a random stream of its own.
4. :mod:`~conserviz_utils.tools.sample.write` runs the workers and writes the folder: JPEGs,
   ``detections.json``, the CSVs and, last, the marker.

Run ``python -m conserviz_utils.tools.sample --out data/sample`` (:mod:`~conserviz_utils.tools.sample.cli`)
to build one from the shell.
"""

from __future__ import annotations

from conserviz_utils.errors import SampleFolderError, SampleParameterError
from conserviz_utils.tools.sample.cli import main
from conserviz_utils.tools.sample.draw import sample_grid
from conserviz_utils.tools.sample.plan import (
    REAL_CLASS_COUNTS,
    REAL_IMAGE_SIZES,
    REAL_N_TEST,
    REAL_N_TRAIN,
    REAL_TEST_SITES,
    REAL_TRAIN_SITES,
    plan_sample,
)
from conserviz_utils.tools.sample.write import (
    DETECTIONS_NAME,
    GENERATOR_NAME,
    GENERATOR_VERSION,
    INCOMPLETE_NAME,
    MARKER_NAME,
    SampleReport,
    generate_sample,
    sample_marker,
)

__all__ = [
    "DETECTIONS_NAME",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "INCOMPLETE_NAME",
    "MARKER_NAME",
    "REAL_CLASS_COUNTS",
    "REAL_IMAGE_SIZES",
    "REAL_N_TEST",
    "REAL_N_TRAIN",
    "REAL_TEST_SITES",
    "REAL_TRAIN_SITES",
    "SampleFolderError",
    "SampleParameterError",
    "SampleReport",
    "generate_sample",
    "main",
    "plan_sample",
    "sample_grid",
    "sample_marker",
]
