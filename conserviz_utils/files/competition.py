"""The competition folder on disk: its four CSVs and image files validated, and where it is.

`data.load_competition` calls `validated_tables`: every problem a learner can cause by editing,
half-extracting or exporting the data raises a `DataValidationError` naming the file, the
column, the first offending rows (as the line numbers a text editor shows) and the fix.
`resolve_data_dir` finds the data folder, building the synthetic sample on first use.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from conserviz_utils import SPECIES
from conserviz_utils.errors import DataValidationError
from conserviz_utils.files.tables import one_hot_faults

#: The marker file that identifies a folder as a generated sample dataset (see `tools.sample`).
SAMPLE_MARKER = "conserviz-sample.json"

#: Sample datasets built by `resolve_data_dir`: the course's default, and the quick one for CI.
SAMPLE_SETTINGS = {
    "sample": {"n_train": 2000, "n_test": 500, "image_scale": 1.0},
    "sample-quick": {"n_train": 300, "n_test": 100, "image_scale": 0.5},
}

_TABLES = ("train_features", "train_labels", "test_features", "submission_format")
_FEATURE_COLUMNS = ("id", "filepath", "site")
_UNZIP_FIX = "unzip competition.zip into the data folder so that it holds the four CSVs"
_RESTORE_FIX = "restore the file from competition.zip"


def is_sample_folder(folder: Path) -> bool:
    """True when ``folder`` holds a generated sample dataset, not the real competition data."""
    return (folder / SAMPLE_MARKER).is_file()


def validated_tables(root: str | os.PathLike, check_images: bool = True) -> dict:
    """The fields of `data.CompetitionData`: ``root``, the four tables validated and indexed by id, ``species``.

    Harmless differences simply work: a UTF-8 BOM, Windows line endings, rows or species columns
    in another order, extra columns in the features CSVs. In ``train_labels.csv`` and
    ``submission_format.csv`` every column besides ``id`` is a species, so an extra one there is an
    error: a silently ignored column would train on the wrong classes.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataValidationError(
            "data folder not found",
            path=root,
            fix="pass the folder that holds train_features.csv (or set CONSERVIZ_DATA)",
        )
    root = root.resolve()
    paths = {name: root / f"{name}.csv" for name in _TABLES}

    features = ("train_features", "test_features")
    frames = {
        name: _read_csv(paths[name], required=_FEATURE_COLUMNS if name in features else ("id",))
        for name in (*features, "train_labels", "submission_format")
    }
    for name, frame in frames.items():
        _check_ids(frame, paths[name])
    for name in features:
        _check_features(frames[name], paths[name])
    train_features, test_features, train_labels, submission_format = frames.values()

    species = _check_species(train_labels, paths["train_labels"], submission_format, paths["submission_format"])
    _check_numeric(submission_format, species, paths["submission_format"])
    _check_one_hot(train_labels, species, paths["train_labels"])

    train_features = train_features.set_index("id")
    test_features = test_features.set_index("id")
    train_labels = train_labels.set_index("id")[species].astype("float64")
    submission_format = submission_format.set_index("id")[species]
    _check_same_ids(train_features.index, paths["train_features"], train_labels.index, paths["train_labels"])
    _check_disjoint(train_features.index, paths["train_features"], test_features.index, paths["test_features"])
    _check_submission_order(
        test_features.index, paths["test_features"], submission_format.index, paths["submission_format"]
    )

    for name, frame in [("train_features", train_features), ("test_features", test_features)]:
        relative = _relative_paths(frame["filepath"])
        if check_images:
            _check_image_files(frame.index, relative, root, paths[name])
        frame["path"] = str(root) + os.sep + relative.str.replace("/", os.sep, regex=False)

    return {
        "root": root,
        "train_features": train_features,
        "train_labels": train_labels.loc[train_features.index],
        "test_features": test_features,
        "submission_format": submission_format,
        "species": species,
    }


# --- reading -----------------------------------------------------------------------------


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """Read one competition CSV as text ids, failing clearly on every unreadable layout."""
    if not path.is_file():
        raise DataValidationError("file not found", path=path, fix=_UNZIP_FIX)
    with open(path, "rb") as file:  # decoded leniently: only to sniff the delimiter
        header = file.readline(64 * 1024).decode("utf-8-sig", errors="replace")
    if not header.strip():
        raise DataValidationError("is empty (no header, no rows)", path=path, fix=_RESTORE_FIX)
    if "," not in header:
        for delimiter, name in [(";", "semicolons"), ("\t", "tabs"), ("|", "pipes")]:
            if delimiter in header:
                raise DataValidationError(
                    f"uses {name} ({delimiter!r}) as its delimiter, not commas",
                    path=path,
                    fix="save it as comma-separated CSV (in a spreadsheet: 'CSV UTF-8 (comma "
                    "delimited)'), or restore it from competition.zip",
                )
    text_columns = {name: str for name in _FEATURE_COLUMNS}
    try:
        with warnings.catch_warnings():
            # A row with more fields than the header would silently lose data: make it fail.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # Mixed types in a column are reported by the checks below, row by row.
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            frame = pd.read_csv(path, encoding="utf-8-sig", dtype=text_columns, index_col=False)
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"is not UTF-8 text ({exc.reason} at byte {exc.start})",
            path=path,
            fix="save it as 'CSV UTF-8', or restore it from competition.zip",
        ) from exc
    except (pd.errors.ParserError, pd.errors.ParserWarning) as exc:
        detail = str(exc).strip().replace("Error tokenizing data. C error: ", "")
        raise DataValidationError(
            f"is not a well-formed CSV: {detail}",
            path=path,
            fix="every row needs exactly as many comma-separated fields as the header",
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError("is empty", path=path, fix=_RESTORE_FIX) from exc

    frame.columns = [str(column).strip() for column in frame.columns]
    for column in required:
        if column not in frame.columns:
            hint = f"add the {column!r} column"
            # Suggest a rename only from columns that have no meaning of their own.
            unknown = {c.lower(): c for c in frame.columns if c not in required and c not in SPECIES}
            close = difflib.get_close_matches(column.lower(), list(unknown), n=1, cutoff=0.75)
            if close:
                hint = f"rename {unknown[close[0]]!r} back to {column!r}"
            raise DataValidationError(
                f"a required column is missing (found: {', '.join(map(str, frame.columns))})",
                path=path,
                column=column,
                fix=f"{hint}; the header must hold {', '.join(required)}",
            )
    if frame.empty:
        raise DataValidationError("has a header but no rows", path=path, fix=_RESTORE_FIX)
    return frame


# --- checks of one table -------------------------------------------------------------------


def _lines(frame: pd.DataFrame, mask: pd.Series | np.ndarray) -> list[str]:
    """Name the masked rows as ``id (line N)``, the line number a text editor shows."""
    positions = np.flatnonzero(np.asarray(mask))
    ids = frame["id"].to_numpy()
    return [f"{ids[p]} (line {p + 2})" if isinstance(ids[p], str) else f"line {p + 2}" for p in positions]


def _check_ids(frame: pd.DataFrame, path: Path) -> None:
    """Every row has an id, and no id appears twice."""
    empty = frame["id"].isna()
    if empty.any():
        raise DataValidationError(
            "rows without an id", path=path, column="id", rows=_lines(frame, empty),
            fix="fill in the id of those rows or delete them",
        )
    repeated = frame["id"].duplicated(keep=False)
    if repeated.any():
        lines: dict[str, list[str]] = {}
        for position in np.flatnonzero(repeated.to_numpy()):
            lines.setdefault(frame["id"].iat[position], []).append(str(position + 2))
        rows = [f"{image_id} (lines {', '.join(found)})" for image_id, found in lines.items()]
        raise DataValidationError(
            "duplicate ids", path=path, column="id", rows=rows,
            fix="each image must appear once: delete the repeated rows",
        )


def _check_features(frame: pd.DataFrame, path: Path) -> None:
    """Every row has a site and a relative filepath that stays inside the data folder."""
    for column in ("filepath", "site"):
        empty = frame[column].isna() | (frame[column].str.strip() == "")
        if empty.any():
            raise DataValidationError(
                f"rows with an empty {column}", path=path, column=column,
                rows=_lines(frame, empty), fix=f"fill in the {column} of those rows or delete them",
            )
    relative = frame["filepath"].str.replace("\\", "/", regex=False)
    absolute = relative.str.startswith("/") | relative.str.match(r"[A-Za-z]:")
    if absolute.any():
        raise DataValidationError(
            "absolute filepaths (they must be relative to the data folder)",
            path=path, column="filepath", rows=_lines(frame, absolute),
            fix="write them relative to the data folder, e.g. train_features/ZJ000000.jpg",
        )
    climbing = relative.str.contains(r"(?:^|/)\.\.(?:/|$)", regex=True)
    if climbing.any():
        raise DataValidationError(
            "filepaths containing '..' (they could leave the data folder)",
            path=path, column="filepath", rows=_lines(frame, climbing),
            fix="write them relative to the data folder without '..', "
            "e.g. train_features/ZJ000000.jpg",
        )


def _check_species(
    labels: pd.DataFrame, labels_path: Path, submission: pd.DataFrame, submission_path: Path
) -> list[str]:
    """Both tables list the same species columns; return them sorted."""
    for frame, path in [(labels, labels_path), (submission, submission_path)]:
        columns = [column for column in frame.columns if column != "id"]
        index_columns = [column for column in columns if column.startswith("Unnamed:")]
        if index_columns:
            raise DataValidationError(
                "a column without a header, usually a saved row index or a trailing comma",
                path=path, column=index_columns[0],
                fix="delete that column (save with DataFrame.to_csv(..., index=False))",
            )
        if not columns:
            raise DataValidationError(
                "no species columns besides id", path=path,
                fix=f"the header must be id followed by the species: {', '.join(SPECIES)}",
            )
    label_species = {column for column in labels.columns if column != "id"}
    submission_species = {column for column in submission.columns if column != "id"}
    if label_species != submission_species:
        # Blame the file that differs from the competition's classes; else the labels.
        if label_species == set(SPECIES):
            path, other = submission_path, labels_path
            have, want = submission_species, label_species
        else:
            path, other = labels_path, submission_path
            have, want = label_species, submission_species
        unknown, missing = sorted(have - want), sorted(want - have)
        parts = [f"unknown: {', '.join(unknown)}"] if unknown else []
        parts += [f"missing: {', '.join(missing)}"] if missing else []
        raise DataValidationError(
            f"species columns differ from {other.name} ({'; '.join(parts)})",
            path=path, column=(unknown or missing)[0],
            fix=f"both files need the same species columns; the competition's are "
            f"{', '.join(SPECIES)}",
        )
    return sorted(label_species)


def _check_numeric(frame: pd.DataFrame, species: list[str], path: Path) -> pd.DataFrame:
    """Every species value is a number; return the values as floats."""
    values = frame[species]
    numbers = values.apply(pd.to_numeric, errors="coerce")
    for column in species:
        text = numbers[column].isna() & values[column].notna()
        if text.any():
            raise DataValidationError(
                f"non-numeric values (e.g. {values[column][text].iloc[0]!r})",
                path=path, column=column, rows=_lines(frame, text),
                fix="species columns hold numbers only (0 or 1 for labels)",
            )
    return numbers.astype("float64")


def _check_one_hot(labels: pd.DataFrame, species: list[str], path: Path) -> None:
    """Each label row is exactly one 1 and zeros otherwise (the rule of `labels.one_hot_faults`)."""
    values = _check_numeric(labels, species, path)
    faults = one_hot_faults(values.to_numpy())
    # The same rule as everywhere, worded for a CSV: the column and lines of each kind of fault.
    for column, empty in zip(species, faults.missing.T):
        if empty.any():
            raise DataValidationError(
                "empty (NaN) label values", path=path, column=column,
                rows=_lines(labels, empty), fix="each label row holds 0 or 1 in every column",
            )
    for column, other in zip(species, faults.not_binary.T):
        if other.any():
            raise DataValidationError(
                f"label values other than 0 and 1 (e.g. {values[column][other].iloc[0]!r})",
                path=path, column=column, rows=_lines(labels, other),
                fix="labels are one-hot: 1 in the image's species column, 0 elsewhere",
            )
    wrong = faults.ones != 1
    if wrong.any():
        hot = values.to_numpy() == 1.0
        rows = [
            f"{row} with {int(faults.ones[p])} ones"
            + (f" ({', '.join(np.array(species)[hot[p]])})" if faults.ones[p] > 1 else "")
            for row, p in zip(_lines(labels, wrong), np.flatnonzero(wrong))
        ]
        raise DataValidationError(
            "label rows that are not one-hot (exactly one 1 per row)", path=path, rows=rows,
            fix="give each image exactly one species; delete images you cannot label",
        )


# --- checks across tables ------------------------------------------------------------------


def _require_ids(ids: pd.Index, listed: pd.Index, problem: str, path: Path, fix: str) -> None:
    """Raise naming every id of ``ids`` that ``listed`` lacks."""
    absent = ids.difference(listed, sort=False)
    if len(absent):
        raise DataValidationError(problem, path=path, column="id", rows=list(absent), fix=fix)


def _check_same_ids(features: pd.Index, features_path: Path, labels: pd.Index, labels_path: Path) -> None:
    """Every training image has a label row, and every label row an image."""
    features_name = features_path.name
    _require_ids(
        features, labels, f"ids of {features_name} without a row in {labels_path.name}",
        labels_path, f"add their label rows, or delete those images from {features_name}",
    )
    _require_ids(
        labels, features, f"ids not listed in {features_name}",
        labels_path, f"delete those label rows, or add the images to {features_name}",
    )


def _check_disjoint(train: pd.Index, train_path: Path, test: pd.Index, test_path: Path) -> None:
    """No id is both a training and a test image."""
    shared = test.intersection(train, sort=False)
    if len(shared):
        raise DataValidationError(
            f"ids that are also in {train_path.name}", path=test_path, column="id",
            rows=list(shared), fix="an image is either a training or a test image: remove one",
        )


def _check_submission_order(test: pd.Index, test_path: Path, submission: pd.Index, submission_path: Path) -> None:
    """submission_format lists exactly the test ids, in the same order."""
    _require_ids(test, submission, f"test ids of {test_path.name} missing", submission_path, _RESTORE_FIX)
    _require_ids(submission, test, f"ids that {test_path.name} does not list", submission_path, _RESTORE_FIX)
    moved = test.to_numpy() != submission.to_numpy()
    if moved.any():
        raise DataValidationError(
            f"ids in another order than {test_path.name}", path=submission_path, column="id",
            rows=[f"line {p + 2}: {submission[p]}" for p in np.flatnonzero(moved)],
            fix=f"{_RESTORE_FIX}; submissions follow its row order",
        )


# --- image files ---------------------------------------------------------------------------


def _relative_paths(filepaths: pd.Series) -> pd.Series:
    """Filepaths with '/' separators (a CSV edited on Windows may hold backslashes)."""
    return filepaths.str.replace("\\", "/", regex=False).str.replace(r"^(?:\./)+", "", regex=True)


def _check_image_files(ids: pd.Index, relative: pd.Series, root: Path, csv_path: Path) -> None:
    """Every listed image exists inside ``root``: one directory listing per folder."""
    missing: list[str] = []
    escaping: list[str] = []
    missing_folders: set[str] = set()
    case_only: list[str] = []
    folders = relative.str.rpartition("/")
    for folder_name, group in folders.groupby(0, sort=False):
        folder = root / folder_name
        try:
            entries = {entry.name: entry for entry in os.scandir(folder)}
        except (FileNotFoundError, NotADirectoryError):
            missing_folders.add(f"{folder_name}/" if folder_name else ".")
            missing.extend(f"{i} ({p})" for i, p in zip(group.index, relative[group.index]))
            continue
        # An image folder of the data folder may itself be a link (a hub's shared, read-only
        # copy): its tree is then the data's too. Links that leave both trees are refused.
        top = folder_name.split("/", 1)[0]
        trees = (root, (root / top).resolve()) if top else (root,)
        if not any(folder.resolve().is_relative_to(tree) for tree in trees):
            escaping.extend(f"{i} ({folder_name}/ is a link)" for i in group.index)
            continue
        lowered: set[str] | None = None
        for image_id, name in zip(group.index, group[2]):
            entry = entries.get(name)
            if entry is not None and entry.is_symlink():
                target = Path(entry.path).resolve()
                if not any(target.is_relative_to(tree) for tree in trees):
                    escaping.append(f"{image_id} ({relative[image_id]})")
                    continue
                if not target.is_file():
                    entry = None  # a broken link is as missing as no file
            if entry is None:
                missing.append(f"{image_id} ({relative[image_id]})")
                if lowered is None:
                    lowered = {entry_name.lower() for entry_name in entries}
                if name.lower() in lowered:
                    case_only.append(image_id)
    if escaping:
        raise DataValidationError(
            "filepaths that lead outside the data folder through a symbolic link",
            path=csv_path, column="filepath", rows=escaping,
            fix=f"copy the images into {root}, or point CONSERVIZ_DATA at the folder that "
            "really holds them",
        )
    if missing:
        problem = f"{len(missing):,} of {len(ids):,} image files listed are missing"
        if missing_folders:
            problem += f" (folder {', '.join(sorted(missing_folders))} does not exist)"
        fix = f"extract all images of competition.zip into {root}"
        if case_only:
            fix = (
                f"{len(case_only):,} of them exist with other upper/lower case in the name "
                f"(e.g. {case_only[0]}): rename those files to match the CSV"
                + (f"; {fix}" if len(case_only) < len(missing) else "")
            )
        raise DataValidationError(problem, path=csv_path, column="filepath", rows=missing, fix=fix)


# --- where the data is ---------------------------------------------------------------------


def resolve_data_dir(quick: bool = False, verbose: bool = True) -> Path:
    """The data folder to work on, building the synthetic sample on first use.

    In order: the folder in ``CONSERVIZ_DATA``; ``data/competition`` when it holds
    ``train_features.csv``; else the sample in ``data/sample`` (or the smaller ``data/sample-quick``
    when ``quick``), under the project root so notebooks find it from any working directory.
    ``verbose`` prints which data was picked and shows the build's progress.
    """
    from_env = os.environ.get("CONSERVIZ_DATA", "").strip()
    if from_env:
        folder = Path(from_env).expanduser()
        if not folder.is_dir():
            raise DataValidationError(
                "CONSERVIZ_DATA points to a folder that does not exist",
                path=folder,
                fix="set CONSERVIZ_DATA to the folder holding train_features.csv, or unset "
                "it to use data/competition or the sample",
            )
        if verbose:
            print(f"Data: {_describe(folder)} (from CONSERVIZ_DATA).")
        return folder

    data = project_root() / "data"
    competition = data / "competition"
    if (competition / "train_features.csv").is_file():
        if verbose:
            print(f"Data: {_describe(competition)}.")
        return competition

    folder = data / ("sample-quick" if quick else "sample")
    if _is_complete_sample(folder):
        if verbose:
            print(f"Data: {_describe(folder)}; unzip competition.zip into "
                  f"{_shown(competition)} to use the real data.")
        return folder
    settings = SAMPLE_SETTINGS[folder.name]
    if verbose:
        print(f"Data: no competition data in {_shown(competition)}, so building the synthetic "
              f"sample in {_shown(folder)} ({settings['n_train']:,} train / "
              f"{settings['n_test']:,} test images, first use only).")
    from conserviz_utils.tools.sample import generate_sample  # only needed on first use

    generate_sample(folder, seed=0, progress=verbose, **settings)  # it refuses a folder of other files
    return folder


def project_root() -> Path:
    """The folder above the package in a checkout; the working directory's otherwise."""
    package_parent = Path(__file__).resolve().parents[2]
    if (package_parent / "pyproject.toml").is_file():
        return package_parent
    cwd = Path.cwd()
    # An installed (non-editable) package: notebooks run from notebooks/ or the root.
    return next((p for p in (cwd, cwd.parent) if (p / "data").is_dir()), cwd)


def _is_complete_sample(folder: Path) -> bool:
    """A finished sample build by this generator version (its marker is written last)."""
    from conserviz_utils.tools.sample import GENERATOR_VERSION, sample_marker

    marker = sample_marker(folder)
    # A sample from an older generator is rebuilt, so every learner sees the same images.
    return (
        marker is not None
        and marker.get("generator_version") == GENERATOR_VERSION
        and all((folder / f"{name}.csv").is_file() for name in _TABLES)
    )


def _describe(folder: Path) -> str:
    """Say which data a folder holds: the real competition data or a sample, and its size."""
    kind = "a synthetic sample" if is_sample_folder(folder) else "the real data"
    counts = [_count_rows(folder / f"{name}.csv") for name in ("train_features", "test_features")]
    sizes = f", {counts[0]:,} train / {counts[1]:,} test images" if None not in counts else ""
    return f"{_shown(folder)} — {kind}{sizes}"


def _shown(folder: Path) -> str:
    """A folder as the learner would type it: relative to the project root when inside it."""
    try:
        return str(folder.resolve().relative_to(project_root()))
    except ValueError:
        return str(folder)


def _count_rows(csv_path: Path) -> int | None:
    """Data rows in a CSV (lines after the header), or None when it cannot be read."""
    try:
        with open(csv_path, "rb") as file:
            return max(sum(1 for line in file if line.strip()) - 1, 0)
    except OSError:
        return None
