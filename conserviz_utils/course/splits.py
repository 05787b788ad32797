"""The data and the split every notebook starts from: load this run's data, ensure notebook 02's site split.

``ensure_splits`` reuses ``splits.csv`` while its provenance sidecar
(:mod:`conserviz_utils.course.provenance`) matches this data, seed and eval share, keeps a split the
learner edited by hand, and otherwise draws the site split again, saying why in one line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from conserviz_utils.errors import DataValidationError

if TYPE_CHECKING:
    from conserviz_utils.course.settings import CourseSettings

__all__ = [
    "EVAL_SHARE", "ensure_splits", "load_course_data", "note", "save_course_splits", "split_fingerprint"
]

#: Share of the training sites notebook 02 keeps for evaluation.
EVAL_SHARE = 0.25


def note(message: str, verbose: bool = True) -> None:
    """Say in one line what an ``ensure_*`` step does about a stale artifact (stdout, not a warning)."""
    if verbose:
        print(message)


def load_course_data(settings: CourseSettings, verbose: bool = True):
    """Load this run's data (the real competition's, or the synthetic sample).

    Leftovers of killed runs in the output folder are removed first, so they neither fill the
    disk nor pass for artifacts.
    """
    from conserviz_utils.course.embedding_cache import remove_stale_partials
    from conserviz_utils.data import load_competition
    from conserviz_utils.files.competition import resolve_data_dir

    remove_stale_partials(settings.output_dir, recursive=True)
    return load_competition(settings.data_dir or resolve_data_dir(quick=settings.quick, verbose=verbose))


def split_fingerprint(split) -> str:
    """A short digest of a train/eval split (which ids on which side, in order)."""
    digest = hashlib.blake2b(digest_size=8)
    for side, ids in zip(("train", "eval"), split):
        digest.update(f"{side}\n".encode())
        digest.update("\n".join(map(str, ids)).encode())
    return digest.hexdigest()


def _provenance(data, seed: int) -> dict:
    """The provenance record of ``splits.csv``: the ids, sites and labels, the seed and the eval share."""
    from conserviz_utils.course.provenance import make_provenance

    return make_provenance(data=data, data_part="labels", settings={"seed": seed, "test_size": EVAL_SHARE})


def save_course_splits(data, settings: CourseSettings, split) -> Path:
    """Save notebook 02's split (drawn with ``test_size=EVAL_SHARE``) as ``splits.csv`` with its sidecar."""
    from conserviz_utils.course.provenance import write_sidecar
    from conserviz_utils.split import save_splits

    path = save_splits(settings.artifacts.splits, *split)
    write_sidecar(path, _provenance(data, settings.seed))
    return path


def _edited_split(path: Path, data, expected: dict):
    """A split the learner edited after it was saved for this very data, or None.

    An edit that no longer lists exactly the data's training ids is refused: drawing the split
    again would silently throw the edit away.
    """
    from conserviz_utils.course.provenance import file_digest, read_sidecar
    from conserviz_utils.split import load_splits

    record = read_sidecar(path)
    if record is None or record.get("format") != expected.get("format"):
        return None
    same_data = (record.get("data") or {}).get("fingerprint") == expected["data"]["fingerprint"]
    edited = record.get("artifact_digest") not in (None, file_digest(path))
    if not (same_data and edited and record.get("settings") == expected["settings"]):
        return None
    split = load_splits(path)  # a broken edit fails here, naming the file and the fix
    listed = split.train.append(split.eval)
    wanted = data.train_features.index
    missing, unknown = wanted.difference(listed), listed.difference(wanted)
    if len(missing) or len(unknown):
        problem = (f"{len(missing)} training images are on neither side" if len(missing)
                   else f"{len(unknown)} ids are not training images of this data")
        raise DataValidationError(
            f"{path.name} was edited after it was saved, and now {problem}",
            path=path,
            column="id",
            rows=list(missing if len(missing) else unknown),
            fix=f"correct the edit so that every training id is on one side, or delete {path.name} "
            "and rerun notebook 02 to draw the site split again",
        )
    return split


def ensure_splits(data, settings: CourseSettings, verbose: bool = True):
    """The `Split` notebook 02 saved, or the site split drawn again (and saved) for other data.

    Reused while its provenance record matches this data (the training CSVs' content), the seed
    and the eval share; kept (and recorded anew) when edited by hand after it was saved for this
    data; drawn again, saying so in one line, for other data, even data that shares its ids.
    """
    from conserviz_utils.course.provenance import check_matches, write_sidecar
    from conserviz_utils.split import load_splits, split_by_site

    path = settings.artifacts.splits
    expected = _provenance(data, settings.seed)
    ok, reason = check_matches(path, expected)
    if ok:
        return load_splits(path)
    if path.is_file():
        edited = _edited_split(path, data, expected)
        if edited is not None:
            note(f"{path.name} was edited after notebook 02 saved it; using the edited split", verbose)
            write_sidecar(path, expected)
            return edited
        note(f"{reason}; drawing the site split again", verbose)
    split = split_by_site(data.train_features, data.train_labels, test_size=EVAL_SHARE, seed=settings.seed)
    save_course_splits(data, settings, split)
    return split
