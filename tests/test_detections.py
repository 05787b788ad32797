"""MegaDetector batch output: reading, validation, matching, best boxes and crops."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from conserviz_utils import DataValidationError, ImageLoadError
from conserviz_utils.data import ImagesDataset, default_transform, load_competition
from conserviz_utils.climb.detections import (
    BOX_COLUMNS,
    DETECTIONS_FILE,
    best_animal_boxes,
    crop_box,
    embed_crops,
    match_detections,
    no_detections,
    read_detections,
    with_crops,
    write_crops,
)
from conserviz_utils.course.embeddings import Embeddings, compute_embeddings

# --- helpers -----------------------------------------------------------------------------------


def animal(conf, bbox, category="1"):
    return {"category": category, "conf": conf, "bbox": bbox}


def document(images, version="1.4", **extra):
    return {"info": {"format_version": version}, "detection_categories": {"1": "animal", "2": "person"},
            "images": images, **extra}


def write_json(tmp_path, content, name="detections.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.fixture()
def images(tmp_path):
    """Three 200×100 images with a features frame in load_competition's layout."""
    folder = tmp_path / "data" / "train_features"
    folder.mkdir(parents=True)
    ids = ["ZJ000000", "ZJ000001", "ZJ000002"]
    rng = np.random.default_rng(0)
    paths = []
    for image_id in ids:
        path = folder / f"{image_id}.jpg"
        Image.fromarray(rng.integers(0, 255, (100, 200, 3), dtype=np.uint8)).save(path, quality=95)
        paths.append(str(path))
    return pd.DataFrame(
        {"filepath": [f"train_features/{i}.jpg" for i in ids], "site": "S0001", "path": paths},
        index=pd.Index(ids, name="id"),
    )


GOOD = [
    {"file": "train_features/ZJ000000.jpg",
     "detections": [animal(0.3, [0.1, 0.1, 0.2, 0.2]), animal(0.9, [0.25, 0.25, 0.5, 0.5]),
                    animal(0.99, [0.0, 0.0, 1.0, 1.0], category="2")]},
    {"file": "train_features/ZJ000001.jpg", "detections": [animal(0.1, [0.5, 0.5, 0.25, 0.25])]},
    {"file": "train_features/ZJ000002.jpg", "failure": "Failure image access", "detections": None},
]


# --- reading and validating --------------------------------------------------------------------


def test_reads_a_valid_file(tmp_path):
    detections = read_detections(write_json(tmp_path, document(GOOD)))
    assert detections.format_version == "1.4"
    assert detections.animal_categories() == ["1"]  # "animal" in MegaDetector's files
    assert list(detections.files) == [entry["file"] for entry in GOOD]
    assert list(detections.failures.index) == ["train_features/ZJ000002.jpg"]
    assert list(detections.boxes.columns) == ["file", "category", "conf", *BOX_COLUMNS]
    assert len(detections.boxes) == 4
    assert detections.summary() == {"files": 3, "failed": 1, "with_animal": 2}


def test_missing_file(tmp_path):
    with pytest.raises(DataValidationError, match="not found") as caught:
        read_detections(tmp_path / "nowhere.json")
    assert caught.value.path == tmp_path / "nowhere.json"
    assert "MegaDetector" in caught.value.fix


def test_not_json(tmp_path):
    path = write_json(tmp_path, '{"images": [\n  {"file": "a.jpg",]\n}')
    with pytest.raises(DataValidationError, match="not valid JSON .* line 2") as caught:
        read_detections(path)
    assert caught.value.path == path


def test_binary_garbage(tmp_path):
    path = tmp_path / "detections.json"
    path.write_bytes(b"\xff\xd8\xff\xe0 a jpeg, not json")
    with pytest.raises(DataValidationError, match="not a text file|not valid JSON"):
        read_detections(path)


@pytest.mark.parametrize(
    "content, field, message",
    [
        ([1, 2], None, "top level is a JSON list"),
        ({"info": {"format_version": "1.4"}}, "images", "no 'images' list"),
        ({"images": []}, "info.format_version", "no info.format_version"),
        (document([], version="2.0"), "info.format_version", "format version 2.0 is not supported"),
        (document({"file": "a.jpg"}), "images", "'images' must be a list"),
        (document([["a.jpg"]]), "images[0]", "not an object"),
        (document([{"detections": []}]), "images[0].file", "no file name"),
        (document([], detection_categories=["animal"]), "detection_categories", "map category ids"),
    ],
)
def test_wrong_version_or_shape_names_the_field(tmp_path, content, field, message):
    with pytest.raises(DataValidationError, match=message) as caught:
        read_detections(write_json(tmp_path, content))
    assert caught.value.column == field


def test_speciesnet_output_gets_a_hint(tmp_path):
    with pytest.raises(DataValidationError, match="SpeciesNet"):
        read_detections(write_json(tmp_path, {"predictions": []}))


@pytest.mark.parametrize(
    "detection, field, message",
    [
        (animal(0.5, [-0.1, 0.2, 0.3, 0.3]), "bbox", "negative corner"),
        (animal(0.5, [0.2, 0.2, 0.0, 0.3]), "bbox", "not positive"),
        (animal(0.5, [0.5, 0.2, 0.7, 0.3]), "bbox", "past the image"),
        (animal(0.5, [10, 20, 300, 200]), "bbox", "past the image"),
        (animal(0.5, [0.2, 0.2, 0.3]), "bbox", "must be 4 numbers"),
        (animal(0.5, [0.2, "a", 0.3, 0.3]), "bbox", "must be 4 numbers"),
        (animal(1.5, [0.2, 0.2, 0.3, 0.3]), "conf", "from 0 to 1"),
        ({"conf": 0.5, "bbox": [0.2, 0.2, 0.3, 0.3]}, "category", "no category"),
    ],
)
def test_bad_boxes_name_the_image_and_the_field(tmp_path, detection, field, message):
    images = [{"file": "train_features/ZJ000000.jpg", "detections": []},
              {"file": "train_features/ZJ000001.jpg", "detections": [animal(0.9, [0.1, 0.1, 0.2, 0.2]), detection]}]
    with pytest.raises(DataValidationError, match=message) as caught:
        read_detections(write_json(tmp_path, document(images)))
    assert caught.value.column == f"images[1].detections[1].{field}"
    assert caught.value.rows == ["train_features/ZJ000001.jpg"]


def test_rounding_past_the_edge_is_accepted(tmp_path):
    images = [{"file": "a.jpg", "detections": [animal(0.9, [0.5, 0.5, 0.5001, 0.5003])]}]
    assert len(read_detections(write_json(tmp_path, document(images))).boxes) == 1


def test_a_processed_image_needs_a_detections_list(tmp_path):
    images = [{"file": "train_features/ZJ000000.jpg"}]
    with pytest.raises(DataValidationError, match="no 'detections' list") as caught:
        read_detections(write_json(tmp_path, document(images)))
    assert caught.value.column == "images[0].detections"
    assert caught.value.rows == ["train_features/ZJ000000.jpg"]


def test_an_image_listed_twice(tmp_path):
    images = [{"file": "train_features/ZJ000000.jpg", "detections": []},
              {"file": "train_features/ZJ000001.jpg", "detections": []},
              {"file": "train_features/ZJ000000.jpg", "detections": []}]
    with pytest.raises(DataValidationError, match=r"listed twice, as images\[0\] and images\[2\]") as caught:
        read_detections(write_json(tmp_path, document(images)))
    assert caught.value.rows == ["train_features/ZJ000000.jpg"]


# --- matching to the features ------------------------------------------------------------------


def test_images_absent_from_the_file_are_counted_and_stay_whole(tmp_path, images):
    detections = read_detections(write_json(tmp_path, document(GOOD[:2])), images)
    assert list(detections.missing_ids) == ["ZJ000002"]
    assert detections.summary()["missing"] == 1
    boxes = best_animal_boxes(detections)
    assert boxes.loc["ZJ000002", "source"] == "not in the detections"
    assert np.isnan(boxes.loc["ZJ000002", "conf"])


def test_file_names_that_do_not_match_are_a_clear_error(tmp_path, images):
    other = [{"file": f"cameras/C{i}.JPG", "detections": []} for i in range(5)]
    with pytest.raises(DataValidationError, match="none of the 5 files") as caught:
        read_detections(write_json(tmp_path, document(other)), images)
    message = str(caught.value)
    assert "'cameras/C0.JPG', 'cameras/C1.JPG', 'cameras/C2.JPG'" in message
    assert "C3" not in message  # the first few only
    assert "'train_features/ZJ000000.jpg'" in message


@pytest.mark.parametrize(
    "name",
    ["train_features/ZJ000001.jpg", "/data/conservision/train_features/ZJ000001.jpg",
     "C:\\data\\train_features\\ZJ000001.jpg", "./train_features/ZJ000001.jpg", "ZJ000001.jpg"],
)
def test_file_names_match_in_the_forms_detectors_write(tmp_path, images, name):
    detections = read_detections(write_json(tmp_path, document([{"file": name, "detections": []}])), images)
    assert detections.file_ids.to_dict() == {name: "ZJ000001"}
    assert sorted(detections.missing_ids) == ["ZJ000000", "ZJ000002"]


def test_files_of_other_images_are_reported_not_matched(tmp_path, images):
    extra = GOOD + [{"file": "test_features/ZJ016488.jpg", "detections": []}]
    detections = read_detections(write_json(tmp_path, document(extra)), images)
    assert list(detections.unmatched_files) == ["test_features/ZJ016488.jpg"]
    assert len(detections.file_ids) == 3


def test_two_entries_for_one_image_after_matching(tmp_path, images):
    twice = [{"file": "train_features/ZJ000000.jpg", "detections": []},
             {"file": "/abs/train_features/ZJ000000.jpg", "detections": []}]
    with pytest.raises(DataValidationError, match="same image ZJ000000"):
        read_detections(write_json(tmp_path, document(twice)), images)


def test_match_detections_needs_file_names(tmp_path, images):
    detections = read_detections(write_json(tmp_path, document(GOOD)))
    with pytest.raises(DataValidationError, match="filepath"):
        match_detections(detections, images.drop(columns=["filepath", "path"]))


# --- best boxes --------------------------------------------------------------------------------


def test_best_animal_box_is_the_most_confident_animal_above_the_threshold(tmp_path, images):
    boxes = best_animal_boxes(read_detections(write_json(tmp_path, document(GOOD)), images), threshold=0.2)
    assert list(boxes.index) == ["ZJ000000", "ZJ000001", "ZJ000002"]
    best = boxes.loc["ZJ000000"]
    assert best["conf"] == 0.9  # not the person at 0.99, not the weaker animal
    assert tuple(best[list(BOX_COLUMNS)]) == (0.25, 0.25, 0.5, 0.5)
    assert best["source"] == "animal box"
    assert boxes.loc["ZJ000001", "source"] == "nothing above threshold"  # 0.1 < 0.2
    assert boxes.loc["ZJ000002", "source"] == "detector failed"
    lower = best_animal_boxes(read_detections(write_json(tmp_path, document(GOOD)), images), threshold=0.05)
    assert lower.loc["ZJ000001", "conf"] == 0.1


def test_best_boxes_without_features_are_by_file(tmp_path):
    boxes = best_animal_boxes(read_detections(write_json(tmp_path, document(GOOD))))
    assert boxes.index.name == "file"
    assert boxes.loc["train_features/ZJ000000.jpg", "conf"] == 0.9


@pytest.mark.parametrize("threshold", [-0.1, 1.5, "0.2"])
def test_threshold_must_be_a_share(tmp_path, threshold):
    with pytest.raises(ValueError, match="threshold"):
        best_animal_boxes(read_detections(write_json(tmp_path, document(GOOD))), threshold=threshold)


# --- crops -------------------------------------------------------------------------------------


def test_crop_box_pads_by_a_tenth_of_the_box_and_stops_at_the_edges():
    image = Image.new("RGB", (200, 100))
    assert crop_box(image, (0.25, 0.25, 0.5, 0.5), padding=0.1).size == (120, 60)
    assert crop_box(image, (0.25, 0.25, 0.5, 0.5), padding=0.0).size == (100, 50)
    assert crop_box(image, (0.0, 0.0, 0.5, 1.0), padding=0.1).size == (110, 100)
    assert crop_box(image, (0.999, 0.999, 0.001, 0.001), padding=0.0).size == (1, 1)


def test_write_crops_crops_boxed_images_keeps_the_rest_whole_and_reuses_files(tmp_path, images):
    boxes = best_animal_boxes(read_detections(write_json(tmp_path, document(GOOD)), images))
    crops = write_crops(images, boxes, tmp_path / "crops", progress=False)
    assert list(crops["cropped"]) == [True, False, False]
    assert crops.loc["ZJ000001", "path"] == images.loc["ZJ000001", "path"]
    crop_path = crops.loc["ZJ000000", "path"]
    assert os.path.dirname(crop_path) == str(tmp_path / "crops")
    with Image.open(crop_path) as crop, Image.open(images.loc["ZJ000000", "path"]) as whole:
        assert crop.size == (120, 60)
        expected = np.asarray(whole.convert("RGB").crop((40, 20, 160, 80)), dtype=float)
        assert np.abs(np.asarray(crop, dtype=float) - expected).mean() < 8  # JPEG noise only
    written = os.stat(crop_path).st_mtime_ns
    again = write_crops(images, boxes, tmp_path / "crops", progress=False)
    assert again.loc["ZJ000000", "path"] == crop_path
    assert os.stat(crop_path).st_mtime_ns == written  # reused, not rewritten
    wider = write_crops(images, boxes, tmp_path / "crops", padding=0.3, progress=False)
    assert wider.loc["ZJ000000", "path"] != crop_path  # another padding, another crop


def test_write_crops_needs_boxes_by_id(tmp_path, images):
    by_file = best_animal_boxes(read_detections(write_json(tmp_path, document(GOOD))))
    with pytest.raises(DataValidationError, match="indexed by image id"):
        write_crops(images, by_file, tmp_path / "crops")


def test_write_crops_names_a_missing_image(tmp_path, images):
    boxes = best_animal_boxes(read_detections(write_json(tmp_path, document(GOOD)), images))
    os.remove(images.loc["ZJ000000", "path"])
    with pytest.raises(ImageLoadError) as caught:
        write_crops(images, boxes, tmp_path / "crops", progress=False)
    assert caught.value.path.name == "ZJ000000.jpg"


class TinyNet(nn.Module):
    """A ConservizNet-shaped toy: ``backbone`` gives pooled embeddings, ``head`` gives logits."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.arch = "tiny"
        self.embedding_dim = dim
        self.backbone = nn.Sequential(nn.Conv2d(3, dim, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(dim, 8)


def test_the_sample_detections_crop_and_embed_end_to_end(sample_dir, tmp_path):
    data = load_competition(sample_dir)
    detections = read_detections(sample_dir / DETECTIONS_FILE, data.train_features)
    assert detections.summary()["missing"] == 0
    assert len(detections.unmatched_files) == len(data.test_features)  # the test images
    boxes = best_animal_boxes(detections, threshold=0.2)
    assert boxes.index.equals(data.train_features.index)
    crops = write_crops(data.train_features, boxes, tmp_path / "crops", progress=False)
    assert 0 < crops["cropped"].mean() < 1  # the simulated detector misses some animals
    blanks = data.train_species == "blank"
    assert crops.loc[blanks, "cropped"].mean() < crops.loc[~blanks, "cropped"].mean()
    item = ImagesDataset(crops, transform=default_transform(32))[0]
    assert item["image"].shape == (3, 32, 32)
    torch.manual_seed(0)
    model = TinyNet()
    options = {"transform": default_transform(32), "cache_dir": tmp_path / "features", "num_workers": 0,
               "device": "cpu", "precision": "fp32", "progress": False}
    first = crops.index[:12]
    whole = compute_embeddings(model, data.train_features.loc[first], **options)
    merged = embed_crops(model, crops.loc[first], whole, **options)
    cropped = crops.loc[first, "cropped"].to_numpy()
    assert cropped.any() and not cropped.all()
    np.testing.assert_array_equal(merged.values[~cropped], whole.values[~cropped])
    assert not np.allclose(merged.values[cropped], whole.values[cropped])
    again = compute_embeddings(model, crops.loc[first][cropped], **options)
    assert again.reused  # the crop files are stable, so their embeddings come from the cache


def test_with_crops_replaces_only_the_cropped_rows():
    ids = pd.Index(["a", "b", "c"], name="id")
    whole = Embeddings(ids=ids, values=np.zeros((3, 2), dtype=np.float32))
    crops = Embeddings(ids=pd.Index(["c", "a"], name="id"), values=np.array([[3, 3], [1, 1]], dtype=np.float32))
    merged = with_crops(whole, crops)
    assert merged.ids.equals(ids)
    np.testing.assert_array_equal(merged.values, [[1, 1], [0, 0], [3, 3]])
    assert (whole.values == 0).all()  # the whole-image embeddings are untouched
    with pytest.raises(DataValidationError, match="do not have"):
        with_crops(whole, Embeddings(ids=pd.Index(["z"], name="id"), values=np.ones((1, 2), dtype=np.float32)))


def test_no_detections_keeps_every_image_whole(tmp_path, images):
    detections = no_detections(images)
    assert detections.summary() == {"files": 0, "failed": 0, "with_animal": 0, "matched": 0, "missing": 3,
                                    "unmatched": 0}
    boxes = best_animal_boxes(detections)
    assert list(boxes.index) == list(images.index)
    assert (boxes["source"] == "not in the detections").all()
    crops = write_crops(images, boxes, tmp_path / "crops", progress=False)
    assert not crops["cropped"].any() and crops["path"].equals(images["path"])


# --- issue 20: content-keyed crops, categories that mean animal, deep JSON ------------------------


def test_a_replaced_image_of_the_same_size_and_mtime_gets_a_new_crop(tmp_path, images):
    boxes = best_animal_boxes(read_detections(write_json(tmp_path, document(GOOD)), images))
    first = write_crops(images, boxes, tmp_path / "crops", progress=False).loc["ZJ000000", "path"]
    source = images.loc["ZJ000000", "path"]
    stat = os.stat(source)
    other = bytearray(open(images.loc["ZJ000001", "path"], "rb").read())
    other = bytes(other[: stat.st_size]) + b"\0" * max(0, stat.st_size - len(other))
    with open(source, "wb") as handle:  # what `cp -p` or `rsync -t` leave: same size, old mtime
        handle.write(other)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (os.stat(source).st_size, os.stat(source).st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    second = write_crops(images, boxes, tmp_path / "crops", progress=False).loc["ZJ000000", "path"]
    assert second != first


def test_only_categories_named_animal_are_cropped(tmp_path, images):
    people = document(GOOD)
    people["detection_categories"] = {"1": "person", "2": "animal"}
    detections = read_detections(write_json(tmp_path, people), images)
    assert detections.animal_categories() == ["2"]
    boxes = best_animal_boxes(detections)
    # ZJ000000's category-1 boxes are people now; its only category-2 box (0.99) is the animal.
    assert boxes.loc["ZJ000000", "conf"] == 0.99
    assert boxes.loc["ZJ000001", "source"] == "nothing above threshold"  # a person, not an animal
    assert detections.summary()["with_animal"] == 1
    assert best_animal_boxes(detections, animal_names=("person",)).loc["ZJ000000", "conf"] == 0.9


def test_a_file_without_an_animal_category_crops_nothing(tmp_path, images):
    vehicles = document(GOOD)
    vehicles["detection_categories"] = {"1": "person", "2": "vehicle"}
    detections = read_detections(write_json(tmp_path, vehicles), images)
    assert detections.animal_categories() == []
    assert best_animal_boxes(detections)["conf"].isna().all()


def test_deeply_nested_json_is_a_data_validation_error(tmp_path):
    path = write_json(tmp_path, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataValidationError, match="nested too deeply"):
        read_detections(path)
