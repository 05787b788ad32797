"""Detector crops: read a MegaDetector batch-output JSON, crop each image to its animal.

An animal often fills a few percent of a camera-trap frame; the rest is the site's background,
which a classifier learns all too well. MegaDetector (or SpeciesNet's detector-only mode) writes a
*batch-output JSON* (https://lila.science/megadetector-output-format): ``images[]`` with a ``file``
and ``detections[]`` of ``category`` ("1" = animal), ``conf`` and ``bbox`` = [x_min, y_min,
width, height] as shares 0–1. You run the detector and bring the file; nothing here downloads one.

:func:`read_detections` validates it and matches it to a features frame, :func:`best_animal_boxes`
keeps each image's most confident animal box, and :func:`write_crops` writes padded, cached crops
as a features frame like any other; an image without a box stays whole, and keeps its embedding
(:func:`embed_crops`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from conserviz_utils.course.embeddings import Embeddings, compute_embeddings
from conserviz_utils.course.provenance import FileDigests, digest_cache_dir
from conserviz_utils.data import path_column
from conserviz_utils.errors import DataValidationError
from conserviz_utils.files.fileio import atomic_writer
from conserviz_utils.files.images import open_image

__all__ = [
    "BOX_COLUMNS", "DETECTIONS_FILE", "SOURCES", "Detections", "best_animal_boxes", "crop_box", "embed_crops",
    "match_detections", "no_detections", "read_detections", "with_crops", "write_crops",
]

#: Where the sample generator (and a user, by convention) puts the detector's output.
DETECTIONS_FILE = "detections.json"

#: A detection's box: corner, width and height, as shares of the image's width and height.
BOX_COLUMNS = ("x_min", "y_min", "width", "height")

#: Why an image got the box it got (the ``source`` column of :func:`best_animal_boxes`).
SOURCES = ("animal box", "nothing above threshold", "detector failed", "not in the detections")

# The format's categories when the file does not list them (MegaDetector v4 and later).
_DEFAULT_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}
# MegaDetector rounds boxes to 4 decimals, so x_min + width can pass 1 by a hair.
_BOX_SLACK = 1e-3
_FORMAT_FIX = (
    "pass the batch-output JSON of MegaDetector's run_detector_batch (format 1.x, see "
    "https://lila.science/megadetector-output-format)"
)
#: The category names whose boxes are animals to crop (``best_animal_boxes(animal_names=...)`` changes them).
ANIMAL_NAMES = ("animal",)
# Bump when crops are cut or keyed differently, so old crop files are not reused.
_CROP_FORMAT = 2


@dataclass(frozen=True)
class Detections:
    """A validated MegaDetector batch-output file, optionally matched to a features frame.

    ``boxes`` has one row per detection (``file``, ``category``, ``conf``, the `BOX_COLUMNS`, and
    ``id`` once matched); ``files`` every image listed, in order; ``failures`` file → the detector's
    message. Once matched: ``file_ids`` file → id, ``missing_ids`` the features' ids the file does
    not list (kept whole), ``unmatched_files`` files of no image of the features (ignored).
    """

    path: Path | None
    format_version: str
    categories: dict[str, str]
    boxes: pd.DataFrame
    files: pd.Index
    failures: pd.Series
    file_ids: pd.Series | None = None
    missing_ids: pd.Index = field(default_factory=lambda: pd.Index([], name="id"))
    unmatched_files: pd.Index = field(default_factory=lambda: pd.Index([], name="file"))

    def animal_categories(self, names=ANIMAL_NAMES) -> list[str]:
        """The ids of the categories whose name is one of ``names`` (case aside), in the file's order."""
        wanted = {str(name).strip().lower() for name in names}
        return [key for key, name in self.categories.items() if name.strip().lower() in wanted]

    @property
    def matched(self) -> bool:
        """Whether the files have been matched to the ids of a features frame."""
        return self.file_ids is not None

    def summary(self) -> dict:
        """Counts: images listed, failed, with an animal detection, and how the match went."""
        animals = self.boxes.loc[self.boxes["category"].isin(self.animal_categories()), "file"].nunique()
        counts = {"files": len(self.files), "failed": len(self.failures), "with_animal": int(animals)}
        if self.matched:
            counts.update(
                matched=len(self.file_ids), missing=len(self.missing_ids), unmatched=len(self.unmatched_files)
            )
        return counts


def _fail(problem: str, path, *, field_name: str | None = None, file: str | None = None, fix: str = _FORMAT_FIX):
    """The error for a malformed detections file, naming the field and the image."""
    return DataValidationError(problem, path=path, column=field_name, rows=[file] if file else None, fix=fix)


def _number(value) -> bool:
    """A real, finite number (not a bool, not NaN)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_detections(path: str | os.PathLike, features: pd.DataFrame | None = None) -> Detections:
    """Read and validate a MegaDetector batch-output JSON; match it to ``features`` if given (`match_detections`).

    Raises:
        DataValidationError: naming the image and the field, when the file is missing or not
            JSON, not the format's version or layout, has a box out of range or an image twice.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(
            "detections file not found",
            path,
            fix="run MegaDetector on the images (run_detector_batch) and save its output there, "
            "or pass the path of the JSON it wrote",
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except RecursionError:
        raise _fail("the JSON is nested too deeply (thousands of levels) to be a detections file", path) from None
    except UnicodeDecodeError as exc:
        raise _fail(f"not a text file ({exc.reason})", path) from None
    except json.JSONDecodeError as exc:
        raise _fail(f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})", path) from None
    detections = _parse(document, path)
    return detections if features is None else match_detections(detections, features)


def _parse(document, path: Path) -> Detections:
    """Validate the parsed JSON document and collect its detections."""
    if not isinstance(document, Mapping):
        raise _fail(f"the top level is a JSON {type(document).__name__}, not an object with 'images'", path)
    if "images" not in document:
        hint = (
            " (this looks like SpeciesNet's own output: convert it with SpeciesNet's "
            "speciesnet_to_md, or run its detector-only mode with MegaDetector output)"
            if "predictions" in document
            else ""
        )
        raise _fail(f"no 'images' list{hint}", path, field_name="images")
    info = document.get("info")
    version = info.get("format_version") if isinstance(info, Mapping) else None
    if version is None:
        raise _fail(
            "no info.format_version: not a MegaDetector batch-output file", path, field_name="info.format_version"
        )
    version = str(version)
    if version.split(".")[0] != "1":
        raise _fail(
            f"format version {version} is not supported (this reader knows 1.x)",
            path,
            field_name="info.format_version",
        )
    categories = document.get("detection_categories", _DEFAULT_CATEGORIES)
    if not isinstance(categories, Mapping) or not all(isinstance(name, str) for name in categories.values()):
        raise _fail("detection_categories must map category ids to names", path, field_name="detection_categories")
    categories = {str(key): name for key, name in categories.items()}
    images = document["images"]
    if not isinstance(images, list):
        raise _fail(f"'images' must be a list, got a JSON {type(images).__name__}", path, field_name="images")

    rows: list[tuple] = []
    files: list[str] = []
    failures: dict[str, str] = {}
    first_entry: dict[str, int] = {}
    for i, entry in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(entry, Mapping):
            raise _fail(f"{where} is a JSON {type(entry).__name__}, not an object", path, field_name=where)
        file = entry.get("file")
        if not isinstance(file, str) or not file.strip():
            raise _fail(f"{where} has no file name", path, field_name=f"{where}.file")
        if file in first_entry:
            raise _fail(
                f"the image is listed twice, as images[{first_entry[file]}] and {where}",
                path,
                field_name=f"{where}.file",
                file=file,
                fix="keep one entry per image (merge the detector's runs into one file without repeats)",
            )
        first_entry[file] = i
        files.append(file)
        failure = entry.get("failure")
        if failure is not None:
            failures[file] = str(failure)
            continue
        found = entry.get("detections")
        if not isinstance(found, list):
            raise _fail(
                f"the image has no 'detections' list (got {type(found).__name__}); an image without "
                "detections has an empty list, one the detector failed on a 'failure' message",
                path,
                field_name=f"{where}.detections",
                file=file,
            )
        for j, detection in enumerate(found):
            rows.append((file, *_parse_detection(detection, f"{where}.detections[{j}]", file, path)))
    return Detections(
        path=path,
        format_version=version,
        categories=categories,
        boxes=_boxes(rows),
        files=pd.Index(files, name="file"),
        failures=pd.Series(failures, dtype=object, name="failure").rename_axis("file"),
    )


def _boxes(rows, *extra_columns: str) -> pd.DataFrame:
    """The detections' table: ``file``, ``category``, then ``conf`` and the `BOX_COLUMNS` as floats."""
    boxes = pd.DataFrame(rows, columns=["file", "category", "conf", *BOX_COLUMNS, *extra_columns])
    return boxes.astype(dict.fromkeys(["conf", *BOX_COLUMNS], "float64"))


def _parse_detection(detection, where: str, file: str, path: Path) -> tuple:
    """(category, conf, x_min, y_min, width, height) of one detection, validated."""

    def fail(problem: str, part: str = "", **options) -> DataValidationError:
        return _fail(problem, path, field_name=where + part, file=file, **options)

    if not isinstance(detection, Mapping):
        raise fail(f"{where} is not an object")
    category = detection.get("category")
    if isinstance(category, bool) or not isinstance(category, str | int):
        raise fail(f"{where} has no category id", ".category")
    conf = detection.get("conf")
    if not _number(conf) or not 0 <= conf <= 1:
        raise fail(f"{where}.conf must be a number from 0 to 1, got {conf!r}", ".conf")
    bbox = detection.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
        raise fail(f"{where}.bbox must be 4 numbers [x_min, y_min, width, height], got {bbox!r}", ".bbox")
    x_min, y_min, width, height = (float(v) for v in bbox)
    if min(x_min, y_min) < 0 or width <= 0 or height <= 0:
        raise fail(
            f"{where}.bbox {bbox} has a negative corner or a size that is not positive",
            ".bbox",
            fix="boxes are [x_min, y_min, width, height] as shares 0–1 of the image; check the tool "
            "that wrote the file",
        )
    if x_min + width > 1 + _BOX_SLACK or y_min + height > 1 + _BOX_SLACK:
        raise fail(
            f"{where}.bbox {bbox} reaches past the image (x_min + width or y_min + height above 1): "
            "boxes must be normalised to 0–1",
            ".bbox",
            fix="divide pixel boxes by the image's width and height (MegaDetector writes shares 0–1)",
        )
    return str(category), float(conf), x_min, y_min, width, height


def _normalised(name: str) -> str:
    """A file name with forward slashes and no leading './' (Windows and Unix runs alike)."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def match_detections(detections: Detections, features: pd.DataFrame) -> Detections:
    """The detections with the image ids of ``features`` matched to their file names.

    A file matches an image when it is the image's ``filepath`` (``train_features/ZJ000000.jpg``),
    ends with it (the detector ran on a parent folder, or with absolute paths), or has its base
    name where base names are unique (the detector ran on the image folder); backslashes count as '/'.

    Raises:
        DataValidationError: no file matches any image, or two entries name the same image.
    """
    column = path_column(features, ("filepath", "path"))
    expected = pd.Series(features.index, index=[_normalised(str(p)) for p in features[column]])
    by_path = expected.to_dict()
    names = pd.Series([PurePosixPath(p).name for p in expected.index])
    by_name = dict(zip(names, expected.to_numpy())) if names.is_unique else {}

    file_ids: dict[str, str] = {}
    owner: dict[str, str] = {}
    unmatched = []
    for file in detections.files:
        image_id = _match_one(_normalised(file), by_path, by_name)
        if image_id is None:
            unmatched.append(file)
            continue
        if image_id in owner:
            raise _fail(
                f"two entries name the same image {image_id}: {owner[image_id]!r} and {file!r}",
                detections.path,
                field_name="images[].file",
                file=file,
                fix="keep one entry per image",
            )
        owner[image_id] = file
        file_ids[file] = image_id
    if not file_ids:
        shown = ", ".join(repr(f) for f in list(detections.files[:3])) or "none"
        wanted = ", ".join(repr(p) for p in list(expected.index[:3]))
        raise _fail(
            f"none of the {len(detections.files)} files in the detections is an image of these "
            f"{len(features)} features: the file lists {shown}, the features expect {wanted}",
            detections.path,
            field_name="images[].file",
            fix="run the detector on this data folder (file names as in the CSV's filepath column), "
            "or pass the features it was run on",
        )
    file_ids_series = pd.Series(file_ids, dtype=object, name="id").rename_axis("file")
    boxes = detections.boxes.assign(id=detections.boxes["file"].map(file_ids_series))
    listed = pd.Index(file_ids_series.to_numpy())
    return replace(
        detections,
        boxes=boxes,
        file_ids=file_ids_series,
        missing_ids=pd.Index(features.index[~features.index.isin(listed)], name="id"),
        unmatched_files=pd.Index(unmatched, name="file"),
    )


def no_detections(features: pd.DataFrame) -> Detections:
    """Detections that list no image, for data without a detector's output yet: every image stays whole."""
    return Detections(
        path=None,
        format_version="1.4",
        categories=dict(_DEFAULT_CATEGORIES),
        boxes=_boxes(None, "id"),
        files=pd.Index([], name="file", dtype=object),
        failures=pd.Series(dtype=object, name="failure").rename_axis("file"),
        file_ids=pd.Series(dtype=object, name="id").rename_axis("file"),
        missing_ids=pd.Index(features.index, name="id"),
    )


def _match_one(name: str, by_path: dict, by_name: dict):
    """The id a normalised file name matches, or None."""
    if name in by_path:
        return by_path[name]
    parts = name.split("/")
    for start in range(1, len(parts)):
        image_id = by_path.get("/".join(parts[start:]))
        if image_id is not None:
            return image_id
    return by_name.get(parts[-1])


def best_animal_boxes(detections: Detections, threshold: float = 0.2, animal_names=ANIMAL_NAMES) -> pd.DataFrame:
    """The most confident animal box of each image, if its confidence reaches ``threshold``.

    MegaDetector suggests ``threshold`` 0.2; the 11th-place solution used 0.05 and 0.1 (more
    animals, more false boxes). Returns one row per matched id (or per file listed): ``conf``, the
    `BOX_COLUMNS` (NaN without a box) and ``source``, one of :data:`SOURCES`.
    """
    if not _number(threshold) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number from 0 to 1, got {threshold!r}")
    boxes = detections.boxes
    animals = boxes[boxes["category"].isin(detections.animal_categories(animal_names)) & (boxes["conf"] >= threshold)]
    key = "id" if detections.matched else "file"
    animals = animals.dropna(subset=[key])
    # The most confident box per image; a stable sort keeps the file's order between equals.
    best = animals.sort_values("conf", ascending=False, kind="stable").drop_duplicates(key).set_index(key)
    if detections.matched:
        index = pd.Index(list(detections.file_ids.to_numpy()) + list(detections.missing_ids), name="id")
        failed = set(detections.file_ids.reindex(detections.failures.index).dropna())
        absent = set(detections.missing_ids)
    else:
        index = pd.Index(detections.files, name="file")
        failed, absent = set(detections.failures.index), set()
    table = best[["conf", *BOX_COLUMNS]].reindex(index)
    source = np.where(table["conf"].notna(), SOURCES[0], SOURCES[1]).astype(object)
    source[index.isin(list(failed))] = SOURCES[2]
    source[index.isin(list(absent))] = SOURCES[3]
    table["source"] = pd.Categorical(source, categories=list(SOURCES))
    return table


def crop_box(image: Image.Image, box, padding: float = 0.1) -> Image.Image:
    """Crop ``image`` to a box of shares 0–1 grown by ``padding`` of its size on every side, within the image."""
    x_min, y_min, width, height = (float(v) for v in box)
    image_width, image_height = image.size
    left = max(0.0, x_min - padding * width) * image_width
    right = min(1.0, x_min + width + padding * width) * image_width
    top = max(0.0, y_min - padding * height) * image_height
    bottom = min(1.0, y_min + height + padding * height) * image_height
    # Outwards to whole pixels, forgiving float noise (0.55 * 200 is 110.00000000000001).
    left = min(math.floor(left + 1e-6), image_width - 1)
    top = min(math.floor(top + 1e-6), image_height - 1)
    right = max(math.ceil(right - 1e-6), left + 1)
    bottom = max(math.ceil(bottom - 1e-6), top + 1)
    return image.crop((left, top, right, bottom))


def write_crops(
    features: pd.DataFrame,
    boxes: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    padding: float = 0.1,
    quality: int = 95,
    progress: bool = True,
) -> pd.DataFrame:
    """``features`` with ``path`` at a JPEG crop in ``out_dir`` for each image with a box, ``cropped`` and ``source``.

    A crop's name hashes its source's content (``provenance.FileDigests``), box and padding, so
    it is written once and reused, its embeddings too; a changed image or box gets a new file.
    ``boxes`` come from :func:`best_animal_boxes`, matched to these features.
    """
    if "path" not in features.columns:
        raise DataValidationError(
            "the features frame has no 'path' column",
            column="path",
            fix="pass a features frame from load_competition(...), e.g. data.train_features",
        )
    if not 0 <= padding <= 1:
        raise ValueError(f"padding must be in [0, 1], got {padding!r}")
    if boxes.index.name != "id" or "conf" not in boxes.columns:
        raise DataValidationError(
            "the boxes must be indexed by image id, with a 'conf' column",
            fix="match the detections to the features first: "
            "best_animal_boxes(read_detections(path, features))",
        )
    boxes = boxes.reindex(features.index)
    has_box = boxes["conf"].notna().to_numpy()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = features["path"].astype(str).to_numpy().copy()
    todo = np.flatnonzero(has_box)
    contents = _content_digests([paths[row] for row in todo])
    for row, content in tqdm(zip(todo, contents), total=len(todo), desc="crops", unit="img",
                             disable=not progress, leave=False):
        box = boxes.iloc[row][list(BOX_COLUMNS)].to_numpy(dtype=float)
        target = out_dir / f"{features.index[row]}-{_crop_digest(content, box, padding)}.jpg"
        if not target.is_file():
            crop = crop_box(open_image(Path(paths[row])), box, padding)
            with atomic_writer(target, "wb", what="crop") as handle:
                crop.save(handle, "JPEG", quality=quality)
        paths[row] = str(target)
    cropped = features.copy()
    cropped["path"] = paths
    cropped["cropped"] = has_box
    cropped["source"] = boxes["source"].astype(object).fillna(SOURCES[3]) if "source" in boxes else SOURCES[3]
    return cropped


def _content_digests(paths: list[str]) -> list[str]:
    """The content digests of the source images, cached as the data fingerprint caches them."""
    digests = FileDigests(digest_cache_dir())
    try:
        return digests.digests(paths)
    except OSError as err:
        open_image(err.filename or paths[0])  # raises the ImageLoadError that names the file and the fix
        raise
    finally:
        digests.save()


def _crop_digest(content: str, box: np.ndarray, padding: float) -> str:
    """A short hash of what makes a crop: the source image's content digest, the box and the padding."""
    text = json.dumps([_CROP_FORMAT, content, [round(v, 6) for v in box], padding])
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def with_crops(whole: Embeddings, crops: Embeddings) -> Embeddings:
    """In-memory embeddings in the order of ``whole``, the rows of the cropped images replaced by ``crops``'."""
    positions = whole.ids.get_indexer(crops.ids)
    unknown = crops.ids[positions < 0]
    if len(unknown):
        raise DataValidationError(
            "crop embeddings of images the whole-image embeddings do not have",
            rows=list(unknown),
            fix="embed the crops of the same images (e.g. the train images' crops for the train embeddings)",
        )
    if crops.dim != whole.dim:
        raise DataValidationError(
            f"crop embeddings have {crops.dim} dimensions, the whole images' {whole.dim}",
            fix="embed the crops with the same backbone",
        )
    values = np.array(whole.values, dtype=np.float32, copy=True)
    values[positions] = np.asarray(crops.values)
    return Embeddings(ids=whole.ids, values=values)


def embed_crops(model, crops: pd.DataFrame, whole: Embeddings, **options) -> Embeddings:
    """Embeddings of a `write_crops` frame in the order of ``whole``: computed for the crops, reused for the rest.

    ``model`` and ``options`` (passed to ``compute_embeddings``) must be those ``whole`` was computed with.
    """
    cropped = crops[crops["cropped"].to_numpy(dtype=bool)]
    if cropped.empty:
        return whole
    return with_crops(whole, compute_embeddings(model, cropped, **options))
