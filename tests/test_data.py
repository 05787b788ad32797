"""load_competition, ImagesDataset, transforms, make_loader and resolve_data_dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.transforms as legacy_transforms
from PIL import Image
from torchvision.transforms import v2

from conserviz_utils import IMAGENET_MEAN, IMAGENET_STD, SPECIES
from conserviz_utils.data import (
    CompetitionData,
    ImagesDataset,
    collate_images,
    default_num_workers,
    default_transform,
    load_competition,
    make_loader,
    train_transform,
)
from conserviz_utils.errors import DataValidationError, ImageLoadError
from conserviz_utils.files import competition as competition_module
from conserviz_utils.files.competition import SAMPLE_MARKER, resolve_data_dir
from conserviz_utils.tools import sample

# --- a tiny dataset in the competition layout, written by hand (not by the generator) ------

SPECIES_COLOURS = {
    species: (40 + 25 * i, 200 - 20 * i, 90 + 15 * (i % 3)) for i, species in enumerate(SPECIES)
}


def write_competition(
    root: Path, n_train: int = 16, n_test: int = 4, image_size=(24, 16), images: bool = True
) -> Path:
    """Write a small valid dataset in the exact competition layout; return its root.

    Train image ``i`` shows species ``i % 8`` as a flat colour; train sites S0001–S0004,
    test sites S0005–S0006 (disjoint, like the real data).
    """
    root.mkdir(parents=True, exist_ok=True)
    train_ids = [f"ZJ{i:06d}" for i in range(n_train)]
    test_ids = [f"ZJ{i:06d}" for i in range(n_train, n_train + n_test)]
    train = pd.DataFrame(
        {
            "id": train_ids,
            "filepath": [f"train_features/{i}.jpg" for i in train_ids],
            "site": [f"S{1 + k % 4:04d}" for k in range(n_train)],
        }
    )
    test = pd.DataFrame(
        {
            "id": test_ids,
            "filepath": [f"test_features/{i}.jpg" for i in test_ids],
            "site": [f"S{5 + k % 2:04d}" for k in range(n_test)],
        }
    )
    labels = pd.DataFrame(0.0, index=pd.Index(train_ids, name="id"), columns=list(SPECIES))
    for k, image_id in enumerate(train_ids):
        labels.loc[image_id, SPECIES[k % len(SPECIES)]] = 1.0
    submission = pd.DataFrame(
        1 / len(SPECIES), index=pd.Index(test_ids, name="id"), columns=list(SPECIES)
    )
    train.to_csv(root / "train_features.csv", index=False)
    test.to_csv(root / "test_features.csv", index=False)
    labels.to_csv(root / "train_labels.csv")
    submission.to_csv(root / "submission_format.csv")
    if images:
        for folder in ("train_features", "test_features"):
            (root / folder).mkdir(exist_ok=True)
        for k, image_id in enumerate(train_ids):
            colour = SPECIES_COLOURS[SPECIES[k % len(SPECIES)]]
            Image.new("RGB", image_size, colour).save(root / "train_features" / f"{image_id}.jpg")
        for image_id in test_ids:
            Image.new("RGB", image_size, (128, 128, 128)).save(
                root / "test_features" / f"{image_id}.jpg"
            )
    return root


@pytest.fixture
def competition(tmp_path) -> Path:
    return write_competition(tmp_path / "competition")


# --- load_competition ----------------------------------------------------------------------


def test_load_competition_returns_validated_tables(competition):
    loaded = load_competition(competition)
    assert isinstance(loaded, CompetitionData)
    assert loaded.root == competition.resolve()
    assert loaded.species == list(SPECIES)
    for frame in (loaded.train_features, loaded.train_labels, loaded.test_features,
                  loaded.submission_format):
        assert frame.index.name == "id"
    assert list(loaded.train_features.index) == [f"ZJ{i:06d}" for i in range(16)]
    assert list(loaded.test_features.index) == [f"ZJ{i:06d}" for i in range(16, 20)]
    assert list(loaded.train_labels.columns) == list(SPECIES)
    assert list(loaded.submission_format.columns) == list(SPECIES)
    assert (loaded.train_labels.dtypes == "float64").all()
    assert (loaded.train_labels.index == loaded.train_features.index).all()
    # The CSV's filepath stays as it is; path is absolute and exists.
    row = loaded.train_features.loc["ZJ000003"]
    assert row["filepath"] == "train_features/ZJ000003.jpg"
    assert Path(row["path"]).is_absolute()
    assert Path(row["path"]) == competition.resolve() / "train_features" / "ZJ000003.jpg"
    assert all(Path(p).is_file() for p in loaded.test_features["path"])


def test_train_species_names_each_image(competition):
    species = load_competition(competition).train_species
    assert species.name == "species"
    assert species["ZJ000000"] == SPECIES[0]
    assert species["ZJ000011"] == SPECIES[11 % 8]
    assert species.value_counts().to_dict() == {name: 2 for name in SPECIES}


def test_repr_summarises_without_dumping_frames(competition):
    text = repr(load_competition(competition))
    assert "16 train images at 4 sites" in text
    assert "4 test images at 2 sites" in text
    assert "competition data" in text and "ZJ000005" not in text


def test_labels_in_another_row_and_column_order_are_aligned(competition):
    expected = load_competition(competition).train_labels
    labels = pd.read_csv(competition / "train_labels.csv")
    shuffled = labels.sample(frac=1, random_state=0)[["id", *reversed(SPECIES)]]
    shuffled.to_csv(competition / "train_labels.csv", index=False)
    loaded = load_competition(competition)
    assert list(loaded.train_labels.columns) == list(SPECIES)
    pd.testing.assert_frame_equal(loaded.train_labels, expected)


def test_check_images_false_needs_no_image_files(tmp_path):
    root = write_competition(tmp_path / "csvs", images=False)
    with pytest.raises(DataValidationError, match="missing"):
        load_competition(root)
    loaded = load_competition(root, check_images=False)
    assert loaded.train_features["path"].str.endswith(".jpg").all()


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataValidationError, match="data folder not found"):
        load_competition(tmp_path / "nowhere")


def test_generated_sample_loads_and_validates(sample_dir):
    loaded = load_competition(sample_dir)
    assert loaded.is_sample
    assert loaded.species == list(SPECIES)
    assert len(loaded.train_features) == 160 and len(loaded.test_features) == 40
    assert set(loaded.train_features["site"]).isdisjoint(loaded.test_features["site"])
    dataset = ImagesDataset(loaded.train_features.iloc[:4], loaded.train_labels)
    batch = collate_images([dataset[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 224, 224)
    assert torch.equal(batch["label"], torch.tensor(loaded.train_labels.iloc[:4].to_numpy(),
                                                    dtype=torch.float32))


def test_sample_marker_name_matches_the_generator():
    from conserviz_utils.tools.sample import MARKER_NAME

    assert SAMPLE_MARKER == MARKER_NAME


def test_real_competition_csvs_reproduce_the_known_facts(shared_dir):
    root = shared_dir / "reference" / "conservision_csvs"
    if not (root / "train_features.csv").is_file():
        pytest.skip("../shared/reference/conservision_csvs is absent")
    loaded = load_competition(root, check_images=False)
    assert not loaded.is_sample
    assert loaded.species == list(SPECIES)
    assert len(loaded.train_features) == 16_488 and len(loaded.test_features) == 4_464
    assert loaded.train_features.index[0] == "ZJ000000"
    assert loaded.train_features.index[-1] == "ZJ016487"
    assert loaded.test_features.index[0] == "ZJ016488"
    assert loaded.test_features.index[-1] == "ZJ020951"
    assert loaded.train_species.value_counts().to_dict() == {
        "monkey_prosimian": 2492, "antelope_duiker": 2474, "civet_genet": 2423, "leopard": 2254,
        "blank": 2213, "rodent": 2013, "bird": 1641, "hog": 978,
    }
    train_sites = set(loaded.train_features["site"])
    test_sites = set(loaded.test_features["site"])
    assert (len(train_sites), len(test_sites)) == (148, 51)
    assert train_sites.isdisjoint(test_sites)
    assert train_sites | test_sites == {f"S{i:04d}" for i in range(1, 200)}
    assert (loaded.submission_format.index == loaded.test_features.index).all()
    assert np.allclose(loaded.submission_format.sum(axis=1), 1.0)
    assert loaded.train_features["filepath"].iloc[0] == "train_features/ZJ000000.jpg"


# --- ImagesDataset -------------------------------------------------------------------------


def test_dataset_items_match_the_walkthrough(competition):
    loaded = load_competition(competition)
    dataset = ImagesDataset(loaded.train_features, loaded.train_labels)
    assert len(dataset) == 16
    item = dataset[5]
    assert set(item) == {"image_id", "image", "label"}
    assert item["image_id"] == "ZJ000005"
    assert type(item["image"]) is torch.Tensor  # a plain tensor, not a tv_tensors subclass
    assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.float32
    assert item["label"].tolist() == loaded.train_labels.loc["ZJ000005"].tolist()
    # The flat colour comes back after un-normalising.
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (item["image"] * std + mean)[:, 112, 112] * 255
    assert np.abs(rgb.numpy() - SPECIES_COLOURS[SPECIES[5]]).max() < 4


def test_dataset_without_labels_has_no_label(competition):
    loaded = load_competition(competition)
    item = ImagesDataset(loaded.test_features)[0]
    assert set(item) == {"image_id", "image"}


def test_dataset_matches_labels_by_id_not_by_position(competition):
    loaded = load_competition(competition)
    subset = loaded.train_features.iloc[[7, 2, 11]]
    shuffled_labels = loaded.train_labels.sample(frac=1, random_state=1)
    dataset = ImagesDataset(subset, shuffled_labels, decode_size=None)
    for i, image_id in enumerate(subset.index):
        assert dataset[i]["image_id"] == image_id
        assert dataset[i]["label"].tolist() == loaded.train_labels.loc[image_id].tolist()
    assert dataset.species == list(SPECIES)


def test_dataset_refuses_features_without_a_label(competition):
    loaded = load_competition(competition)
    with pytest.raises(DataValidationError, match="ZJ000003"):
        ImagesDataset(loaded.train_features, loaded.train_labels.drop(index="ZJ000003"))


def test_dataset_reads_a_relative_filepath_column(competition, monkeypatch):
    features = pd.read_csv(competition / "train_features.csv").set_index("id")
    monkeypatch.chdir(competition)
    item = ImagesDataset(features)[0]
    assert item["image"].shape == (3, 224, 224)


def test_dataset_needs_a_path_column(competition):
    frame = pd.DataFrame({"site": ["S0001"]}, index=pd.Index(["ZJ000000"], name="id"))
    with pytest.raises(DataValidationError, match="'path'"):
        ImagesDataset(frame)


def test_on_error_must_be_raise_or_skip(competition):
    loaded = load_competition(competition)
    with pytest.raises(ValueError, match="on_error"):
        ImagesDataset(loaded.test_features, on_error="ignore")


def test_unreadable_image_raises_naming_its_id(competition):
    loaded = load_competition(competition)
    (competition / "train_features" / "ZJ000002.jpg").write_bytes(b"")
    dataset = ImagesDataset(loaded.train_features)
    with pytest.raises(ImageLoadError) as caught:
        dataset[2]
    assert "ZJ000002" in str(caught.value) and "ZJ000002.jpg" in str(caught.value)
    assert caught.value.rows == ["ZJ000002"]


@pytest.mark.parametrize("consumer", ["fit", "predict"])
def test_an_unreadable_image_in_a_loader_worker_comes_back_whole(competition, consumer):
    """Not torch's re-raise: one string holding the worker's traceback, with no .path or .rows."""
    from torch import nn

    from conserviz_utils.inference import predict
    from conserviz_utils.train import fit

    loaded = load_competition(competition)
    (competition / "train_features" / "ZJ000005.jpg").write_bytes(b"not a jpeg")
    dataset = ImagesDataset(loaded.train_features, loaded.train_labels, transform=default_transform(size=16))
    loader = make_loader(dataset, batch_size=8, num_workers=1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, len(SPECIES)))
    with pytest.raises(ImageLoadError) as caught:
        if consumer == "fit":
            fit(model, loader, epochs=1, progress=False)
        else:
            predict(model, loader, progress=False)
    error = caught.value
    assert error.rows == ["ZJ000005"] and error.path == competition / "train_features" / "ZJ000005.jpg"
    assert "Traceback" not in str(error) and "worker process" not in str(error)
    assert "not an image Pillow can read" in str(error) and "Fix: extract the image again" in str(error)


def test_skip_policy_reports_unreadable_images_in_the_batch(competition):
    loaded = load_competition(competition)
    (competition / "train_features" / "ZJ000002.jpg").write_bytes(b"not a jpeg")
    (competition / "train_features" / "ZJ000005.jpg").unlink()
    dataset = ImagesDataset(loaded.train_features, loaded.train_labels, on_error="skip")
    assert set(dataset[2]) == {"image_id", "error"}
    batches = list(make_loader(dataset, batch_size=8, num_workers=0))
    assert [len(b["image_id"]) for b in batches] == [6, 8]
    assert batches[0]["image"].shape == (6, 3, 224, 224)
    assert batches[0]["label"].shape == (6, 8)
    assert "ZJ000002" not in batches[0]["image_id"]
    skipped = dict(batches[0]["skipped"])
    assert set(skipped) == {"ZJ000002", "ZJ000005"}
    assert "not an image" in skipped["ZJ000002"] and "not found" in skipped["ZJ000005"]
    assert batches[1]["skipped"] == []


def test_collate_a_batch_where_every_image_failed():
    batch = collate_images([{"image_id": "ZJ000001", "error": "empty"}])
    assert batch["image_id"] == [] and batch["image"].numel() == 0
    assert batch["skipped"] == [("ZJ000001", "empty")]


# --- decode size and transforms ------------------------------------------------------------


def test_decode_size_follows_the_transform(competition):
    features = load_competition(competition).test_features
    assert ImagesDataset(features).decode_size == (224, 224)
    assert ImagesDataset(features, transform=default_transform(size=(96, 128))).decode_size == (
        128,
        96,
    )
    assert ImagesDataset(features, transform=train_transform(size=160)).decode_size == (160, 160)
    walkthrough = legacy_transforms.Compose(
        [legacy_transforms.Resize((224, 224)), legacy_transforms.ToTensor()]
    )
    assert ImagesDataset(features, transform=walkthrough).decode_size == (224, 224)
    # A shorter-side resize or a crop first: the final shape depends on the image, decode it all.
    shorter_side = v2.Compose([v2.Resize(224), v2.CenterCrop(224), v2.ToImage()])
    assert ImagesDataset(features, transform=shorter_side).decode_size is None
    assert ImagesDataset(features, decode_size=None).decode_size is None
    assert ImagesDataset(features, decode_size=300).decode_size == (300, 300)


def test_decoding_at_the_transform_size_gives_the_same_tensor(tmp_path):
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (34, 60, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((960, 540), Image.Resampling.BICUBIC).save(
        tmp_path / "photo.jpg", quality=90
    )
    features = pd.DataFrame({"path": [str(tmp_path / "photo.jpg")]}, index=["ZJ000000"])
    fast = ImagesDataset(features)[0]["image"]
    full = ImagesDataset(features, decode_size=None)[0]["image"]
    levels = (fast - full).abs() * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    assert levels.mean() < 2.5


def test_default_transform_normalises_like_the_walkthrough():
    image = Image.new("RGB", (640, 360), (255, 128, 0))
    out = default_transform()(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert out.is_contiguous()
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(out[:, 100, 100], torch.tensor(expected), atol=1e-5)
    walkthrough = legacy_transforms.Compose([
        legacy_transforms.Resize((224, 224)),
        legacy_transforms.ToTensor(),
        legacy_transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 160, 3), np.uint8))
    assert torch.allclose(default_transform()(photo), walkthrough(photo), atol=1e-5)


def test_default_transform_other_size_and_statistics():
    out = default_transform(size=(96, 128), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(
        Image.new("RGB", (30, 20), (255, 255, 255))
    )
    assert out.shape == (3, 96, 128)
    assert torch.allclose(out, torch.ones_like(out))


def test_train_transform_flips_sideways_but_never_upside_down():
    # Bright sky above dark ground, and a bright left edge: what augmentation may do to it.
    picture = np.zeros((120, 200, 3), dtype=np.uint8)
    picture[:40] = 230
    picture[:, :30] = 255
    image = Image.fromarray(picture)
    transform = train_transform(size=64)
    left_brighter = []
    for seed in range(24):
        torch.manual_seed(seed)
        out = transform(image)
        assert out.shape == (3, 64, 64)
        assert out[:, :16].mean() > out[:, -16:].mean()  # the sky stays on top
        left_brighter.append(bool(out[:, :, :8].mean() > out[:, :, -8:].mean()))
    assert any(left_brighter) and not all(left_brighter)  # horizontal flips do happen


def test_train_transform_is_random_but_seedable():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), np.uint8))
    transform = train_transform(size=32)
    torch.manual_seed(0)
    first = transform(image)
    torch.manual_seed(0)
    assert torch.equal(first, transform(image))
    assert not torch.equal(first, transform(image))


# --- make_loader ---------------------------------------------------------------------------


def test_default_num_workers_leaves_a_core_for_the_model(monkeypatch):
    for cores, expected in [(1, 0), (2, 1), (4, 3), (16, 4)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)),
                            raising=False)
        assert default_num_workers() == expected


def test_make_loader_defaults(competition):
    dataset = ImagesDataset(load_competition(competition).test_features)
    loader = make_loader(dataset)
    assert loader.batch_size == 32
    assert loader.num_workers == default_num_workers()
    assert loader.persistent_workers == (loader.num_workers > 0)
    assert loader.pin_memory is False
    assert loader.collate_fn is collate_images
    assert make_loader(dataset, num_workers=0, device="cpu").pin_memory is False
    assert make_loader(dataset, num_workers=0, device="cuda").pin_memory is True


def test_make_loader_shuffles_reproducibly_from_the_seed(competition):
    loaded = load_competition(competition)
    dataset = ImagesDataset(loaded.train_features, decode_size=4,
                            transform=default_transform(size=4))

    def order(seed):
        loader = make_loader(dataset, batch_size=16, shuffle=True, num_workers=0, seed=seed)
        return [next(iter(loader))["image_id"] for _ in range(2)]

    first = order(0)
    assert first == order(0)
    assert first != order(1)
    assert sorted(first[0]) == list(loaded.train_features.index)


def test_make_loader_with_a_worker_process_seeds_its_augmentation(competition):
    loaded = load_competition(competition)
    # A picture with structure, so that random crops and flips change the tensor.
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 24, 3), np.uint8)).save(
        competition / "train_features" / "ZJ000000.jpg"
    )
    dataset = ImagesDataset(loaded.train_features, loaded.train_labels,
                            transform=train_transform(size=32))

    def first_images(seed):
        loader = make_loader(dataset, batch_size=8, num_workers=1, seed=seed)
        assert loader.persistent_workers
        batches = list(loader)
        assert [b["image"].shape for b in batches] == [(8, 3, 32, 32)] * 2
        assert sum((b["image_id"] for b in batches), []) == list(loaded.train_features.index)
        return batches[0]["image"]

    first = first_images(0)
    assert torch.equal(first, first_images(0))
    assert not torch.equal(first, first_images(1))


def test_dataset_runs_over_every_real_camera_trap_photo(shared_dir):
    folder = shared_dir / "real_camtrap"
    if not (folder / "manifest.csv").is_file():
        pytest.skip("../shared/real_camtrap is absent")
    manifest = pd.read_csv(folder / "manifest.csv")
    features = pd.DataFrame(
        {"path": [str(folder / p) for p in manifest["path"]]},
        index=pd.Index([f"real{i:03d}" for i in range(len(manifest))], name="id"),
    )
    dataset = ImagesDataset(features)
    batches = list(make_loader(dataset, batch_size=16, num_workers=0))
    assert sum(len(b["image_id"]) for b in batches) == len(manifest)
    for batch in batches:
        assert batch["skipped"] == []
        assert batch["image"].shape[1:] == (3, 224, 224)
        assert torch.isfinite(batch["image"]).all()
    # Grayscale IR shots stay grey: three equal channels before normalisation.
    gray = manifest.index[manifest["color"].astype(str).str.contains("gray")]
    if len(gray):
        image = dataset[int(gray[0])]["image"]
        rgb = image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(
            3, 1, 1
        )
        assert (rgb[0] - rgb[1]).abs().mean() < 0.02


# --- resolve_data_dir ----------------------------------------------------------------------


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project root, with CONSERVIZ_DATA unset."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    monkeypatch.setattr(competition_module, "project_root", lambda: root)
    monkeypatch.delenv("CONSERVIZ_DATA", raising=False)
    return root


@pytest.fixture
def fake_generator(monkeypatch):
    """Replace the sample generator by one that writes the competition layout instantly."""
    calls = []

    def generate_sample(out, n_train, n_test, seed, image_scale, progress):
        calls.append({"out": Path(out), "n_train": n_train, "n_test": n_test, "seed": seed,
                      "image_scale": image_scale, "progress": progress})
        write_competition(Path(out), n_train=8, n_test=2, images=False)
        marker = {"generator": sample.GENERATOR_NAME, "generator_version": sample.GENERATOR_VERSION}
        (Path(out) / SAMPLE_MARKER).write_text(json.dumps(marker))

    import conserviz_utils.tools.sample

    monkeypatch.setattr(conserviz_utils.tools.sample, "generate_sample", generate_sample)
    return calls


def test_resolve_uses_conserviz_data(project, competition, monkeypatch, capsys):
    monkeypatch.setenv("CONSERVIZ_DATA", str(competition))
    assert resolve_data_dir() == competition
    line = capsys.readouterr().out
    assert line.count("\n") == 1
    assert "CONSERVIZ_DATA" in line and "real data" in line and "16 train / 4 test" in line


def test_resolve_refuses_a_missing_conserviz_data(project, tmp_path, monkeypatch):
    monkeypatch.setenv("CONSERVIZ_DATA", str(tmp_path / "typo"))
    with pytest.raises(DataValidationError, match="CONSERVIZ_DATA"):
        resolve_data_dir()


def test_resolve_prefers_the_real_competition_data(project, fake_generator, capsys):
    write_competition(project / "data" / "competition", images=False)
    assert resolve_data_dir(quick=True) == project / "data" / "competition"
    assert fake_generator == []
    out = capsys.readouterr().out
    assert "data/competition" in out and "real data" in out


@pytest.mark.parametrize(
    ("quick", "folder", "n_train", "n_test", "scale"),
    [(False, "sample", 2000, 500, 1.0), (True, "sample-quick", 300, 100, 0.5)],
)
def test_resolve_builds_the_sample_once(project, fake_generator, capsys, quick, folder, n_train,
                                        n_test, scale):
    expected = project / "data" / folder
    assert resolve_data_dir(quick=quick) == expected
    assert fake_generator == [{"out": expected, "n_train": n_train, "n_test": n_test, "seed": 0,
                               "image_scale": scale, "progress": True}]
    first = capsys.readouterr().out
    assert first.count("\n") == 1 and "building the synthetic sample" in first
    assert resolve_data_dir(quick=quick, verbose=False) == expected
    assert len(fake_generator) == 1  # built once, reused
    assert capsys.readouterr().out == ""
    resolve_data_dir(quick=quick)
    again = capsys.readouterr().out
    assert "synthetic sample" in again and "data/competition" in again


def test_resolve_rebuilds_an_interrupted_sample(project, fake_generator):
    partial = project / "data" / "sample"
    write_competition(partial, images=False)  # CSVs but no marker: the build was cut short
    resolve_data_dir(verbose=False)
    assert len(fake_generator) == 1
    assert (partial / SAMPLE_MARKER).is_file()


def test_project_root_is_the_checkout():
    assert (competition_module.project_root() / "conserviz_utils" / "data.py").is_file()


def test_resolve_rebuilds_a_sample_made_by_an_older_generator(project, fake_generator):
    resolve_data_dir(quick=True, verbose=False)
    marker_path = resolve_data_dir(quick=True, verbose=False) / SAMPLE_MARKER
    marker = json.loads(marker_path.read_text())
    marker["generator_version"] = sample.GENERATOR_VERSION - 1
    marker_path.write_text(json.dumps(marker))
    resolve_data_dir(quick=True, verbose=False)
    assert len(fake_generator) == 2
