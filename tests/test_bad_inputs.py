"""The bad-input corpus: every way a learner's files can be wrong, and what conserviz does.

Each case states its exact expected behaviour: either a clear `ConservizError` naming the file,
the column or row and a fix, or "simply works". Property tests then throw random valid and
randomly broken tables at the validators.
"""

from __future__ import annotations

import io
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from conserviz_utils import SPECIES
from conserviz_utils.data import ImagesDataset, collate_images, load_competition
from conserviz_utils.errors import ConservizError, DataValidationError, ImageLoadError
from test_data import write_competition

# --- editing helpers -----------------------------------------------------------------------


def edit_table(root: Path, name: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """Rewrite one CSV through pandas, every cell kept as the text it was."""
    path = root / f"{name}.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    change(frame).to_csv(path, index=False)


def edit_text(root: Path, name: str, change: Callable[[str], str]) -> None:
    path = root / f"{name}.csv"
    path.write_bytes(change(path.read_bytes().decode("utf-8")).encode("utf-8"))


def set_cell(name: str, row: int, column: str, value: str):
    def change(frame):
        frame.loc[row, column] = value
        return frame

    return lambda root: edit_table(root, name, change)


def drop_rows(name: str, *rows: int):
    return lambda root: edit_table(root, name, lambda f: f.drop(index=list(rows)))


def add_column(name: str, column: str, value: str):
    return lambda root: edit_table(root, name, lambda f: f.assign(**{column: value}))


def drop_column(name: str, column: str):
    return lambda root: edit_table(root, name, lambda f: f.drop(columns=[column]))


def rename_column(name: str, old: str, new: str):
    return lambda root: edit_table(root, name, lambda f: f.rename(columns={old: new}))


def label_row(row: int, ones: list[str], other: str = "0.0"):
    """Set a whole label row: 1.0 in ``ones``, ``other`` elsewhere."""

    def change(frame):
        for species in SPECIES:
            frame.loc[row, species] = "1.0" if species in ones else other
        return frame

    return lambda root: edit_table(root, "train_labels", change)


def duplicate_row(name: str, row: int):
    return lambda root: edit_table(
        root, name, lambda f: pd.concat([f, f.iloc[[row]]], ignore_index=True)
    )


def remove_file(relative: str):
    return lambda root: (root / relative).unlink()


def write_bytes(relative: str, content: bytes):
    return lambda root: (root / relative).write_bytes(content)


def on_every_csv(change: Callable[[bytes], bytes]):
    def apply(root):
        for path in root.glob("*.csv"):
            path.write_bytes(change(path.read_bytes()))

    return apply


def symlink_outside(relative: str):
    def apply(root):
        outside = root.parent / "elsewhere"
        outside.mkdir(exist_ok=True)
        target = outside / Path(relative).name
        shutil.copy(root / relative, target)
        (root / relative).unlink()
        (root / relative).symlink_to(target)

    return apply


def symlink_folder_outside(folder: str):
    def apply(root):
        outside = root.parent / "elsewhere"
        shutil.move(root / folder, outside)
        (root / folder).symlink_to(outside, target_is_directory=True)

    return apply


def symlink_inside(relative: str):
    def apply(root):
        (root / "originals").mkdir()
        target = root / "originals" / Path(relative).name
        shutil.move(root / relative, target)
        (root / relative).symlink_to(target)

    return apply


def reorder_rows(name: str):
    return lambda root: edit_table(root, name, lambda f: f.iloc[::-1])


def move_test_id_to_train(root: Path) -> None:
    edit_table(root, "train_features", lambda f: pd.concat(
        [f, pd.DataFrame([{"id": "ZJ000016", "filepath": "test_features/ZJ000016.jpg",
                           "site": "S0001"}])], ignore_index=True))
    edit_table(root, "train_labels", lambda f: pd.concat(
        [f, pd.DataFrame([{"id": "ZJ000016", **{s: "0.0" for s in SPECIES}, "bird": "1.0"}])],
        ignore_index=True))


# --- the CSV corpus ------------------------------------------------------------------------


@dataclass
class Case:
    """One bad (or merely unusual) input and the behaviour expected of load_competition."""

    name: str
    edit: Callable[[Path], None]
    #: The file the error must name, or None when the input must simply work.
    file: str | None
    #: Phrases the error message must contain (column, rows, what is wrong).
    phrases: tuple[str, ...] = ()


CSV_CASES = [
    # missing files and columns
    Case("missing train_labels.csv", remove_file("train_labels.csv"), "train_labels.csv",
         ("file not found",)),
    Case("missing submission_format.csv", remove_file("submission_format.csv"),
         "submission_format.csv", ("file not found",)),
    Case("missing column", drop_column("test_features", "site"), "test_features.csv",
         ("column 'site'", "missing")),
    Case("renamed column", rename_column("train_features", "filepath", "file_path"),
         "train_features.csv", ("column 'filepath'", "rename 'file_path' back to 'filepath'")),
    Case("renamed id column", rename_column("train_labels", "id", "ID"), "train_labels.csv",
         ("column 'id'", "rename 'ID'")),
    Case("extra column in features", add_column("train_features", "notes", "checked"), None),
    Case("extra column in labels", add_column("train_labels", "notes", "0"), "train_labels.csv",
         ("unknown: notes", "column 'notes'")),
    Case("saved index column in labels",
         lambda root: edit_table(root, "train_labels", lambda f: f.reset_index().rename(
             columns={"index": "Unnamed: 0"})),
         "train_labels.csv", ("column 'Unnamed: 0'", "index=False")),
    Case("trailing commas in features", lambda root: edit_text(
        root, "test_features", lambda t: t.replace("\n", ",\n")), None),
    # ids
    Case("duplicate id in features", duplicate_row("train_features", 3), "train_features.csv",
         ("duplicate ids", "ZJ000003 (lines 5, 18)")),
    Case("duplicate id in labels", duplicate_row("train_labels", 0), "train_labels.csv",
         ("duplicate ids", "ZJ000000")),
    Case("empty id", set_cell("test_features", 1, "id", ""), "test_features.csv",
         ("without an id", "line 3")),
    Case("image without a label row", drop_rows("train_labels", 4), "train_labels.csv",
         ("without a row in train_labels.csv", "ZJ000004")),
    Case("label row without an image", drop_rows("train_features", 9), "train_labels.csv",
         ("not listed in train_features.csv", "ZJ000009")),
    Case("id both train and test", move_test_id_to_train, "test_features.csv",
         ("also in train_features.csv", "ZJ000016")),
    Case("labels in another row order", reorder_rows("train_labels"), None),
    # one-hot labels
    Case("label row with zero ones", label_row(2, []), "train_labels.csv",
         ("not one-hot", "ZJ000002 (line 4) with 0 ones")),
    Case("label row with two ones", label_row(6, ["bird", "hog"]), "train_labels.csv",
         ("not one-hot", "ZJ000006 (line 8) with 2 ones (bird, hog)")),
    Case("label value 0.5", set_cell("train_labels", 5, "leopard", "0.5"), "train_labels.csv",
         ("other than 0 and 1", "column 'leopard'", "ZJ000005")),
    Case("label value 2", set_cell("train_labels", 1, "bird", "2"), "train_labels.csv",
         ("other than 0 and 1", "column 'bird'", "ZJ000001")),
    Case("label value -1", set_cell("train_labels", 0, "blank", "-1.0"), "train_labels.csv",
         ("other than 0 and 1", "column 'blank'", "ZJ000000")),
    Case("NaN label", set_cell("train_labels", 7, "rodent", ""), "train_labels.csv",
         ("NaN", "column 'rodent'", "ZJ000007 (line 9)")),
    Case("NaN written out", set_cell("train_labels", 7, "rodent", "nan"), "train_labels.csv",
         ("NaN", "column 'rodent'", "ZJ000007")),
    Case("text label", set_cell("train_labels", 3, "hog", "yes"), "train_labels.csv",
         ("non-numeric", "'yes'", "column 'hog'", "ZJ000003")),
    Case("integer labels", lambda root: edit_text(
        root, "train_labels", lambda t: t.replace("1.0", "1").replace("0.0", "0")), None),
    # species columns
    Case("species added to labels only", add_column("train_labels", "zebra", "0.0"),
         "train_labels.csv", ("differ from submission_format.csv", "unknown: zebra")),
    Case("species dropped from labels", drop_column("train_labels", "hog"), "train_labels.csv",
         ("differ from submission_format.csv", "missing: hog")),
    Case("species dropped from submission_format", drop_column("submission_format", "bird"),
         "submission_format.csv", ("differ from train_labels.csv", "missing: bird")),
    Case("species misspelt in labels", rename_column("train_labels", "leopard", "leapord"),
         "train_labels.csv", ("unknown: leapord", "missing: leopard")),
    Case("species columns in another order", lambda root: edit_table(
        root, "train_labels", lambda f: f[["id", *reversed(SPECIES)]]), None),
    # filepaths
    Case("absolute filepath", set_cell("train_features", 2, "filepath",
                                       "/etc/ZJ000002.jpg"), "train_features.csv",
         ("absolute", "column 'filepath'", "ZJ000002 (line 4)")),
    Case("Windows absolute filepath", set_cell("test_features", 0, "filepath",
                                               r"C:\data\ZJ000016.jpg"), "test_features.csv",
         ("absolute", "ZJ000016")),
    Case("filepath with ..", set_cell("train_features", 1, "filepath",
                                      "../train_features/ZJ000001.jpg"), "train_features.csv",
         ("'..'", "column 'filepath'", "ZJ000001")),
    Case("filepath with .. that comes back", set_cell(
        "train_features", 1, "filepath", "train_features/../train_features/ZJ000001.jpg"),
         "train_features.csv", ("'..'", "ZJ000001")),
    Case("image symlinked outside the root", symlink_outside("train_features/ZJ000008.jpg"),
         "train_features.csv", ("symbolic link", "ZJ000008")),
    # A JupyterHub's shared, read-only copy of the images, linked in as the whole folder: it reads.
    Case("image folder symlinked to a shared copy", symlink_folder_outside("test_features"), None),
    Case("image symlinked inside the root", symlink_inside("train_features/ZJ000008.jpg"), None),
    Case("broken symlink", lambda root: (root / "train_features" / "ZJ000010.jpg").unlink()
         or (root / "train_features" / "ZJ000010.jpg").symlink_to(root / "gone.jpg"),
         "train_features.csv", ("1 of 16 image files", "ZJ000010")),
    Case("Windows backslashes in filepaths", lambda root: edit_text(
        root, "train_features", lambda t: t.replace("train_features/", "train_features\\")), None),
    Case("filepaths starting with ./", lambda root: edit_text(
        root, "test_features", lambda t: t.replace(",test_features/", ",./test_features/")), None),
    Case("empty filepath", set_cell("train_features", 4, "filepath", ""), "train_features.csv",
         ("empty filepath", "ZJ000004")),
    Case("empty site", set_cell("test_features", 2, "site", ""), "test_features.csv",
         ("empty site", "ZJ000018")),
    # image files
    Case("missing image file", remove_file("train_features/ZJ000007.jpg"), "train_features.csv",
         ("1 of 16 image files", "ZJ000007 (train_features/ZJ000007.jpg)", "extract")),
    Case("missing image folder", lambda root: shutil.rmtree(root / "test_features"),
         "test_features.csv", ("4 of 4", "folder test_features/ does not exist")),
    Case("image name in another case", lambda root: (root / "train_features" / "ZJ000001.jpg")
         .rename(root / "train_features" / "ZJ000001.JPG"), "train_features.csv",
         ("ZJ000001", "upper/lower case")),
    # file format
    Case("empty CSV", write_bytes("train_labels.csv", b""), "train_labels.csv", ("is empty",)),
    Case("blank CSV", write_bytes("test_features.csv", b"\n\n  \n"), "test_features.csv",
         ("is empty",)),
    Case("header only", write_bytes("test_features.csv", b"id,filepath,site\n"),
         "test_features.csv", ("header but no rows",)),
    Case("semicolon delimiter", lambda root: edit_text(
        root, "train_labels", lambda t: t.replace(",", ";")), "train_labels.csv",
         ("semicolons", "comma")),
    Case("tab delimiter", lambda root: edit_text(
        root, "train_features", lambda t: t.replace(",", "\t")), "train_features.csv",
         ("tabs",)),
    Case("row with an extra field", lambda root: edit_text(
        root, "train_features", lambda t: t.replace("S0002\n", "S0002,extra\n", 1)),
         "train_features.csv", ("not a well-formed CSV", "line 3")),
    Case("extra field in the first row", lambda root: edit_text(
        root, "train_labels", lambda t: t.replace("\n", ",0.0\n", 2).replace(",0.0\n", "\n", 1)),
         "train_labels.csv", ("not a well-formed CSV",)),
    Case("row with a missing field", lambda root: edit_text(
        root, "test_features", lambda t: t.replace(",S0005\n", "\n", 1)), "test_features.csv",
         ("empty site",)),
    Case("UTF-16 file", on_every_csv(lambda b: b.decode().encode("utf-16")),
         "train_features.csv", ("not UTF-8", "CSV UTF-8")),
    Case("UTF-8 BOM", on_every_csv(lambda b: b"\xef\xbb\xbf" + b), None),
    Case("Windows line endings", on_every_csv(lambda b: b.replace(b"\n", b"\r\n")), None),
    Case("BOM and Windows line endings", on_every_csv(
        lambda b: b"\xef\xbb\xbf" + b.replace(b"\n", b"\r\n")), None),
    Case("trailing blank lines", on_every_csv(lambda b: b + b"\n\n"), None),
    # submission_format
    Case("submission_format in another order", reorder_rows("submission_format"),
         "submission_format.csv", ("another order", "ZJ000019")),
    Case("submission_format missing a test id", drop_rows("submission_format", 1),
         "submission_format.csv", ("missing", "ZJ000017")),
    Case("submission_format with an extra id", lambda root: edit_table(
        root, "submission_format", lambda f: pd.concat(
            [f, f.iloc[[0]].assign(id="ZJ999999")], ignore_index=True)),
         "submission_format.csv", ("does not list", "ZJ999999")),
    Case("text in submission_format", set_cell("submission_format", 0, "hog", "high"),
         "submission_format.csv", ("non-numeric", "column 'hog'", "ZJ000016")),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A valid tiny dataset and what it loads as; each case edits a copy of it."""
    root = write_competition(tmp_path_factory.mktemp("pristine") / "competition")
    return root, load_competition(root)


@pytest.mark.parametrize("case", CSV_CASES, ids=[case.name for case in CSV_CASES])
def test_csv_corpus(tmp_path, pristine, case):
    root = shutil.copytree(pristine[0], tmp_path / "competition")
    expected = pristine[1]
    case.edit(root)
    if case.file is None:
        loaded = load_competition(root)
        pd.testing.assert_frame_equal(loaded.train_labels, expected.train_labels,
                                      check_dtype=False)
        assert list(loaded.test_features.index) == list(expected.test_features.index)
        for frame in (loaded.train_features, loaded.test_features):
            assert all(Path(p).is_file() for p in frame["path"])
        return
    with pytest.raises(DataValidationError) as caught:
        load_competition(root)
    message = str(caught.value)
    assert isinstance(caught.value, ConservizError)
    assert caught.value.path.name == case.file, message
    assert "Fix:" in message
    for phrase in case.phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"


def test_extra_feature_columns_are_kept(tmp_path):
    root = write_competition(tmp_path / "competition")
    add_column("train_features", "notes", "checked")(root)
    assert (load_competition(root).train_features["notes"] == "checked").all()


def test_species_added_to_both_files_is_a_dataset_of_its_own(tmp_path):
    root = write_competition(tmp_path / "competition")
    add_column("train_labels", "aardvark", "0.0")(root)
    add_column("submission_format", "aardvark", "0.0")(root)
    assert load_competition(root).species == ["aardvark", *SPECIES]


def test_missing_images_are_counted_and_the_first_few_named(tmp_path):
    root = write_competition(tmp_path / "competition")
    for k in range(3, 12):
        (root / "train_features" / f"ZJ{k:06d}.jpg").unlink()
    with pytest.raises(DataValidationError) as caught:
        load_competition(root)
    assert "9 of 16 image files" in str(caught.value)
    assert "9 row(s): ZJ000003" in str(caught.value) and "… and 4 more" in str(caught.value)


# --- the image corpus ----------------------------------------------------------------------


def photo(size=(40, 30)) -> Image.Image:
    picture = Image.new("RGB", size, (20, 80, 20))
    picture.paste((250, 60, 60), (0, 0, size[0] // 3, size[1] // 3))  # a red top-left corner
    return picture


def save_as(fmt: str, mode: str | None = None, **options):
    def write(path: Path) -> None:
        image = photo()
        if mode == "I;16":
            image = Image.fromarray((np.asarray(image.convert("L"), np.uint16) * 257))
        elif mode == "P":
            image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        elif mode is not None:
            image = image.convert(mode)
        image.save(path, fmt, **options)

    return write


def rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90° clockwise
    photo().transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=95,
                                                      exif=exif.tobytes())


def truncated(path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: buffer.tell() // 2])


def bomb(path: Path) -> None:
    buffer = io.BytesIO()
    photo((16, 16)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"\xff\xc0")
    data[start + 5 : start + 9] = struct.pack(">HH", 60_000, 60_000)
    path.write_bytes(bytes(data))


@dataclass
class ImageCase:
    name: str
    write: Callable[[Path], None] | None  # None: the file does not exist
    #: A phrase of the expected ImageLoadError, or None when the image must simply work.
    error: str | None
    #: The image works and is stored without colour.
    gray: bool = False


IMAGE_CASES = [
    ImageCase("missing", None, "not found"),
    ImageCase("zero bytes", lambda p: p.write_bytes(b""), "0 bytes"),
    ImageCase("truncated JPEG", truncated, "truncated"),
    ImageCase("text file named .jpg", lambda p: p.write_text("id,filepath\n"), "text file"),
    ImageCase("decompression bomb", bomb, "too large"),
    ImageCase("PNG named .jpg", save_as("PNG"), None),
    ImageCase("WebP named .jpg", save_as("WEBP", lossless=True), None),
    ImageCase("CMYK JPEG", save_as("JPEG", "CMYK", quality=95), None),
    ImageCase("16-bit PNG", save_as("PNG", "I;16"), None, gray=True),
    ImageCase("palette PNG", save_as("PNG", "P"), None),
    ImageCase("RGBA PNG", save_as("PNG", "RGBA"), None),
    ImageCase("grayscale JPEG", save_as("JPEG", "L", quality=95), None, gray=True),
    ImageCase("EXIF-rotated JPEG", rotated, None),
    ImageCase("1×1 image", lambda p: Image.new("RGB", (1, 1), (9, 9, 9)).save(p, "JPEG"), None),
]


def as_array(image: Image.Image) -> torch.Tensor:
    """The RGB pixels as an H×W×3 uint8 tensor, untransformed."""
    return torch.from_numpy(np.array(image))


def dataset_of(path: Path, **options) -> ImagesDataset:
    frame = pd.DataFrame({"path": [str(path)]}, index=pd.Index(["ZJ000042"], name="id"))
    return ImagesDataset(frame, **options)


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[case.name for case in IMAGE_CASES])
def test_image_corpus(tmp_path, case):
    if case.name.startswith("WebP") and not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    path = tmp_path / "ZJ000042.jpg"
    if case.write is not None:
        case.write(path)
    if case.error is None:
        item = dataset_of(path)[0]
        assert item["image"].shape == (3, 224, 224) and torch.isfinite(item["image"]).all()
        pixels = dataset_of(path, transform=as_array, decode_size=None)[0]["image"].int()
        if case.name == "1×1 image":
            assert pixels.shape == (1, 1, 3) and (pixels - 9).abs().max() <= 2
            return
        assert pixels.shape == (30, 40, 3)  # upright: 40 wide, 30 high
        corner, rest = pixels[2, 2], pixels[25, 35]
        if case.gray:
            assert corner.max() - corner.min() <= 2 and corner[0] > rest[0] + 30
        else:
            assert corner[0] - corner[1] > 100 and rest[1] - rest[0] > 30
        return
    with pytest.raises(ImageLoadError) as caught:
        dataset_of(path)[0]
    message = str(caught.value)
    assert str(path) in message and "ZJ000042" in message and "Fix:" in message
    assert case.error in message
    # With on_error="skip" the same file is reported, not raised.
    item = dataset_of(path, on_error="skip")[0]
    assert item["image_id"] == "ZJ000042" and case.error in item["error"]
    assert collate_images([item])["skipped"] == [("ZJ000042", item["error"])]


# --- property tests of the validators ------------------------------------------------------


@st.composite
def competition_tables(draw):
    """Random valid competition CSV tables: sizes, ids, sites, labels and column orders."""
    n_train = draw(st.integers(1, 25))
    n_test = draw(st.integers(1, 8))
    numbers = draw(st.lists(st.integers(0, 999_999), min_size=n_train + n_test,
                            max_size=n_train + n_test, unique=True))
    ids = [f"ZJ{k:06d}" for k in numbers]
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    species_of = draw(st.lists(st.sampled_from(SPECIES), min_size=n_train, max_size=n_train))
    sites = st.integers(1, 199).map(lambda k: f"S{k:04d}")
    train = pd.DataFrame({
        "id": train_ids,
        "filepath": [f"train_features/{i}.jpg" for i in train_ids],
        "site": draw(st.lists(sites, min_size=n_train, max_size=n_train)),
    })
    test = pd.DataFrame({
        "id": test_ids,
        "filepath": [f"test_features/{i}.jpg" for i in test_ids],
        "site": draw(st.lists(sites, min_size=n_test, max_size=n_test)),
    })
    labels = pd.DataFrame({"id": train_ids, **{
        s: [1.0 if chosen == s else 0.0 for chosen in species_of] for s in SPECIES}})
    labels = labels[["id", *draw(st.permutations(SPECIES))]]
    labels = labels.iloc[draw(st.permutations(range(n_train)))]
    probabilities = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).dirichlet(
        np.ones(len(SPECIES)), size=n_test)
    submission = pd.DataFrame(probabilities, columns=list(SPECIES)).assign(id=test_ids)
    submission = submission[["id", *SPECIES]]
    return {"train_features": train, "train_labels": labels, "test_features": test,
            "submission_format": submission}


def write_tables(root: Path, tables: dict, bom: bool = False, crlf: bool = False) -> None:
    for name, frame in tables.items():
        text = frame.to_csv(index=False, lineterminator="\r\n" if crlf else "\n")
        (root / f"{name}.csv").write_bytes(("\ufeff" if bom else "").encode() + text.encode())


def load_tables(tables: dict, **options):
    with tempfile.TemporaryDirectory() as folder:
        write_tables(Path(folder), tables, **options)
        return load_competition(folder, check_images=False)


FAST = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(tables=competition_tables(), bom=st.booleans(), crlf=st.booleans())
def test_valid_tables_always_load(tables, bom, crlf):
    loaded = load_tables(tables, bom=bom, crlf=crlf)
    train = tables["train_features"]
    assert list(loaded.train_features.index) == list(train["id"])
    assert list(loaded.train_labels.index) == list(train["id"])
    assert list(loaded.train_labels.columns) == list(SPECIES)
    expected = tables["train_labels"].set_index("id").loc[train["id"], list(SPECIES)]
    assert np.array_equal(loaded.train_labels.to_numpy(), expected.to_numpy())
    assert (loaded.train_labels.sum(axis=1) == 1).all()


def inject_duplicate(tables, data):
    name = data.draw(st.sampled_from(list(tables)))
    frame = tables[name]
    row = data.draw(st.integers(0, len(frame) - 1))
    tables[name] = pd.concat([frame, frame.iloc[[row]]], ignore_index=True)
    return frame["id"].iloc[row]


def inject_broken_label(tables, data):
    labels = tables["train_labels"].reset_index(drop=True)
    row = data.draw(st.integers(0, len(labels) - 1))
    species = list(SPECIES)
    defect = data.draw(st.sampled_from(["zeros", "two ones", "fraction", "NaN", "text", "two"]))
    if defect == "zeros":
        labels.loc[row, species] = 0.0
    elif defect == "two ones":
        hot = labels.loc[row, species].astype(float).idxmax()
        other = data.draw(st.sampled_from([s for s in species if s != hot]))
        labels.loc[row, other] = 1.0
    else:
        column = data.draw(st.sampled_from(species))
        value = {"fraction": 0.5, "NaN": np.nan, "text": "x", "two": 2.0}[defect]
        labels = labels.astype({column: object})
        labels.loc[row, column] = value
    tables["train_labels"] = labels
    return labels["id"].iloc[row]


def inject_missing_id(tables, data):
    name = data.draw(st.sampled_from(["train_features", "train_labels", "test_features",
                                      "submission_format"]))
    frame = tables[name]
    row = data.draw(st.integers(0, len(frame) - 1))
    removed = frame["id"].iloc[row]
    tables[name] = frame.drop(index=frame.index[row])
    if len(frame) == 1:
        return None  # an empty table: the error is "no rows", not about an id
    return removed


@FAST
@given(tables=competition_tables(), data=st.data(),
       inject=st.sampled_from([inject_duplicate, inject_broken_label, inject_missing_id]))
def test_injected_defects_are_always_caught(tables, data, inject):
    culprit = inject(tables, data)
    with pytest.raises(DataValidationError) as caught:
        load_tables(tables)
    if culprit is not None:
        assert culprit in str(caught.value)


@FAST
@given(tables=competition_tables(), data=st.data())
def test_filepaths_leaving_the_root_are_always_caught(tables, data):
    train = tables["train_features"]
    row = data.draw(st.integers(0, len(train) - 1))
    bad = data.draw(st.sampled_from(["/abs/{}.jpg", "../{}.jpg", "train_features/../../{}.jpg",
                                     "C:\\images\\{}.jpg", "a/..\\..\\{}.jpg"]))
    train.loc[train.index[row], "filepath"] = bad.format(train["id"].iloc[row])
    with pytest.raises(DataValidationError) as caught:
        load_tables(tables)
    assert train["id"].iloc[row] in str(caught.value)
    assert caught.value.column == "filepath"


def test_the_corpus_covers_every_case_of_the_issue():
    names = {case.name for case in CSV_CASES} | {case.name for case in IMAGE_CASES}
    for required in ["missing train_labels.csv", "missing column", "renamed column",
                     "extra column in features", "extra column in labels",
                     "duplicate id in features", "image without a label row",
                     "label row without an image", "label row with zero ones",
                     "label row with two ones", "label value 0.5", "NaN label",
                     "species added to labels only", "species dropped from labels",
                     "absolute filepath", "filepath with ..", "image symlinked outside the root",
                     "empty CSV", "semicolon delimiter", "UTF-8 BOM", "Windows line endings",
                     "missing", "zero bytes", "truncated JPEG", "text file named .jpg",
                     "PNG named .jpg", "WebP named .jpg", "CMYK JPEG", "16-bit PNG",
                     "palette PNG", "RGBA PNG", "grayscale JPEG", "EXIF-rotated JPEG",
                     "decompression bomb", "1×1 image"]:
        assert required in names
