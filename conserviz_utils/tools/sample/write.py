"""Writing a sample dataset: the folder, the JPEGs (in worker processes), detections.json, the CSVs, the marker.

The marker is written last and the folder holds ``.conserviz-sample-incomplete`` meanwhile, so an
interrupted run never looks complete and the next run replaces it.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from conserviz_utils import SPECIES, __version__
from conserviz_utils.errors import SampleFolderError
from conserviz_utils.files.fileio import TEMP_PREFIX, atomic_write_text
from conserviz_utils.labels import one_hot
from conserviz_utils.tools.sample.detector import detections_document, simulated_detections
from conserviz_utils.tools.sample.draw import ImageTask, render_image, site_style
from conserviz_utils.tools.sample.plan import check_parameters, plan_sample

__all__ = [
    "DETECTIONS_NAME", "GENERATOR_NAME", "GENERATOR_VERSION", "INCOMPLETE_NAME", "MARKER_NAME", "SampleReport",
    "draw_all", "draw_and_write", "generate_sample", "image_tasks", "prepare_folder", "sample_marker", "worker_count",
    "write_csvs", "write_detections", "write_marker",
]

#: The file that marks a folder as a complete sample dataset; it is written last.
MARKER_NAME = "conserviz-sample.json"
#: Present only while a generator is writing; marks the folder as an unfinished sample of ours.
INCOMPLETE_NAME = ".conserviz-sample-incomplete"
#: The simulated detector's MegaDetector batch output, in the dataset folder.
DETECTIONS_NAME = "detections.json"
#: Bump when the same parameters would draw different files, so old samples are rebuilt
#: (``files.competition.resolve_data_dir`` rebuilds a sample whose marker has another version).
#: 2: the folder also holds detections.json. 3: the simulated detector's rates tuned towards
#: published MegaDetector figures (docs/sample.md).
GENERATOR_VERSION = 3
#: Written into the marker (not ``__name__``, which is "__main__" under ``python -m``).
GENERATOR_NAME = "conserviz_utils.tools.sample"

_CSV_NAMES = ("train_features.csv", "train_labels.csv", "test_features.csv", "submission_format.csv")
_IMAGE_DIRS = ("train_features", "test_features")
_WRITTEN_FILES = (*_CSV_NAMES, DETECTIONS_NAME, MARKER_NAME)
#: Everything a sample folder may hold; ``.partial`` files are what an interrupted write of
#: generator version 1 left behind (version 2 writes through ``conserviz_utils.files.fileio``).
_SAMPLE_ENTRIES = frozenset((*_WRITTEN_FILES, *_IMAGE_DIRS, INCOMPLETE_NAME, *(f"{n}.partial" for n in _WRITTEN_FILES)))


def _is_sample_entry(name: str) -> bool:
    """Whether a sample folder may hold ``name``: one of its files, or a killed write's temp."""
    return name in _SAMPLE_ENTRIES or (name.startswith(TEMP_PREFIX) and name.endswith(".tmp"))


@dataclass(frozen=True)
class SampleReport:
    """What :func:`generate_sample` wrote and how fast."""

    out: Path
    n_train: int
    n_test: int
    n_train_sites: int
    n_test_sites: int
    image_scale: float
    workers: int
    seconds: float
    megabytes: float

    @property
    def n_images(self) -> int:
        return self.n_train + self.n_test

    @property
    def detections_path(self) -> Path:
        return self.out / DETECTIONS_NAME

    @property
    def images_per_second(self) -> float:
        """Generation speed over the whole run, writing the files included."""
        return self.n_images / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (
            f"sample dataset in {self.out}: {self.n_train} train images at {self.n_train_sites} "
            f"sites, {self.n_test} test images at {self.n_test_sites} other sites, "
            f"{self.megabytes:.1f} MB; {self.seconds:.1f} s with {self.workers} worker(s), "
            f"{self.images_per_second:.1f} images/s"
        )


def generate_sample(out: str | Path, n_train: int = 2000, n_test: int = 500, seed: int = 0, image_scale: float = 1.0,
                    workers: int | None = None, progress: bool = True) -> SampleReport:
    """Write a synthetic sample dataset in the competition layout, with a simulated ``detections.json``, into ``out``.

    ``out`` must be missing, empty or hold a previous sample dataset (which is replaced); any
    other content makes it refuse.

    Args:
        n_train: train images (at least 8, one per class).
        n_test: test images (0 or more); their sites never appear in train.
        seed: everything drawn follows from it; the same seed gives the same bytes.
        image_scale: multiplies every image size, e.g. 0.25 for fast tests.
        workers: processes drawing images; None picks one per available CPU core.
    """
    check_parameters(n_train, n_test, seed, image_scale, workers)
    out = Path(out)
    prepare_folder(out)
    started = time.perf_counter()
    plan = plan_sample(n_train, n_test, seed)
    tasks = image_tasks(plan, out, seed, image_scale)
    n_workers = worker_count(workers, len(tasks))
    n_bytes, detections = draw_all(tasks, n_workers, progress)
    write_detections(plan, detections, out, seed)
    write_csvs(plan, out)
    report = SampleReport(
        out=out, n_train=n_train, n_test=n_test, n_train_sites=plan.loc[plan.split == "train", "site"].nunique(),
        n_test_sites=plan.loc[plan.split == "test", "site"].nunique(), image_scale=float(image_scale),
        workers=n_workers, seconds=time.perf_counter() - started, megabytes=n_bytes / 1e6,
    )
    write_marker(out, report, seed)
    return report


def sample_marker(folder: str | Path) -> dict | None:
    """The generator parameters of the complete sample dataset in ``folder``, else None."""
    marker = Path(folder) / MARKER_NAME
    try:
        content = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and content.get("generator") == GENERATOR_NAME else None


def prepare_folder(out: Path) -> None:
    """Make ``out`` an empty folder marked incomplete, refusing one that holds anything else."""
    if out.exists() and not out.is_dir():
        raise SampleFolderError("is a file, not a folder", path=out, fix="pass a new or empty folder as out")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        ours = (out / MARKER_NAME).is_file() or (out / INCOMPLETE_NAME).is_file()
        foreign = [name for name in entries if not _is_sample_entry(name)]
        if entries and (not ours or foreign):
            raise SampleFolderError(
                "holds files that are not a conserviz sample dataset, so nothing is written there",
                path=out, rows=foreign or entries, fix="pass a new or empty folder, or move those files away",
            )
    out.mkdir(parents=True, exist_ok=True)
    # From here on the folder never looks complete until the marker is written again.
    (out / INCOMPLETE_NAME).write_text("a conserviz sample dataset is being written\n")
    for name in _WRITTEN_FILES:
        (out / name).unlink(missing_ok=True)
        (out / f"{name}.partial").unlink(missing_ok=True)
    for leftover in out.glob(f"{TEMP_PREFIX}*.tmp"):
        leftover.unlink(missing_ok=True)
    for name in _IMAGE_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
        (out / name).mkdir()


def write_csvs(plan: pd.DataFrame, out: Path) -> None:
    """Write the four competition CSVs: features, one-hot labels and a uniform submission format."""
    train, test = plan[plan.split == "train"], plan[plan.split == "test"]
    frames = {
        "train_features.csv": train[["filepath", "site"]],
        "train_labels.csv": one_hot(train.species),
        "test_features.csv": test[["filepath", "site"]],
        "submission_format.csv": pd.DataFrame(1.0 / len(SPECIES), index=test.index, columns=list(SPECIES)),
    }
    for name, frame in frames.items():
        atomic_write_text(out / name, frame.to_csv(lineterminator="\n"), what="sample CSV")


def write_marker(out: Path, report: SampleReport, seed: int) -> None:
    """Mark the folder as a complete sample dataset (last step of a run)."""
    marker = {
        "generator": GENERATOR_NAME, "generator_version": GENERATOR_VERSION, "package_version": __version__,
        "n_train": report.n_train, "n_test": report.n_test, "seed": seed, "image_scale": report.image_scale,
        "n_train_sites": report.n_train_sites, "n_test_sites": report.n_test_sites, "detections": DETECTIONS_NAME,
    }
    atomic_write_text(out / MARKER_NAME, json.dumps(marker, indent=2) + "\n", what="sample marker")
    (out / INCOMPLETE_NAME).unlink(missing_ok=True)


def write_detections(plan: pd.DataFrame, detections: dict[int, list[dict]], out: Path, seed: int) -> None:
    """Write the simulated detector's batch output, one entry per image in plan order."""
    images = [{"file": filepath, "detections": detections[index]} for index, filepath in enumerate(plan["filepath"])]
    document = detections_document(images, seed, GENERATOR_NAME, GENERATOR_VERSION)
    # One line per detection keeps the file short and readable, as MegaDetector's indent=1 does.
    atomic_write_text(out / DETECTIONS_NAME, json.dumps(document, indent=1) + "\n", what="simulated detections")


def image_tasks(plan: pd.DataFrame, out: Path, seed: int, image_scale: float) -> list[ImageTask]:
    """One task per planned image, sorted by site so each worker reuses a site's background."""
    tasks = [
        ImageTask(index=i, path=out / row.filepath, species=row.species, site=int(row.site[1:]),
                  width=max(8, round(row.width * image_scale)), height=max(8, round(row.height * image_scale)),
                  night=bool(row.night), band=row.band, seed=seed)
        for i, row in enumerate(plan.itertuples())
    ]
    return sorted(tasks, key=lambda t: (t.site, t.index))


def worker_count(workers: int | None, n_tasks: int) -> int:
    """The requested workers, or one per usable core; a single process for tiny samples."""
    if workers is not None:
        return workers
    # Imported here: runtime.cpu loads torch, which the spawned drawing workers must not import.
    from conserviz_utils.runtime.cpu import available_cpus

    # Starting a worker costs about a second; give each at least a few dozen images.
    return 1 if n_tasks < 64 else max(1, min(available_cpus(), 32, n_tasks // 32))


def draw_all(tasks: list[ImageTask], workers: int, progress: bool) -> tuple[int, dict[int, list[dict]]]:
    """Draw and write every image; returns the bytes written and each image's simulated detections by index."""
    total = 0
    detections: dict[int, list[dict]] = {}
    bar = tqdm(total=len(tasks), desc="sample images", unit="img", disable=not progress)
    with bar, contextlib.ExitStack() as stack:
        if workers == 1:
            results = map(draw_and_write, tasks)
        else:
            # "spawn" is safe in processes that already run threads (notebooks, torch) on every OS.
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
            chunk = max(1, min(32, len(tasks) // (8 * workers)))
            results = pool.imap_unordered(draw_and_write, tasks, chunksize=chunk)
        for index, written, found in results:
            total += written
            detections[index] = found
            bar.update()
    return total, detections


def draw_and_write(task: ImageTask) -> tuple[int, int, list[dict]]:
    """Draw one image and save it as JPEG; returns its index, its bytes and the simulated detector's boxes."""
    drawn: dict = {}
    image = render_image(task, drawn)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=site_style(task.seed, task.site).jpeg_quality)
    data = buffer.getvalue()
    task.path.write_bytes(data)
    found = simulated_detections(drawn, task.night, task.seed, task.index)
    return task.index, len(data), found
