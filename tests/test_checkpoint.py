"""Checkpoints: round trips, atomic writes under injected failures, and refusal of unsafe files."""

from __future__ import annotations

import errno
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conserviz_utils import SPECIES, CheckpointError
from conserviz_utils.runtime.checkpoint import CHECKPOINT_VERSION, load_checkpoint, resume_state, save_checkpoint
from conserviz_utils.models import build_model, model_info
from conserviz_utils.inference import predict
from test_train import TinyNet, assert_same_weights, make_data, make_loader, one_thread, weights  # noqa: F401

QUIET = {"device": "cpu", "precision": "fp32", "progress": False}


@pytest.fixture(scope="module")
def resnet():
    """A small conserviz model with non-trivial weights in every layer, BatchNorm statistics included."""
    model = build_model("resnet18", pretrained=False, head="seed", dropout=0.2, seed=3)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 32, 32))  # move the BatchNorm running statistics off their defaults
    return model.eval()


def files_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------
# Round trip
# ------------------------------------------------------------------------------------------------


def test_round_trip_rebuilds_the_model_and_predicts_the_same(tmp_path, resnet):
    path = tmp_path / "checkpoints" / "model.pt"  # the folder is created
    save_checkpoint(path, resnet, epoch=3, batch=0, metrics={"eval_log_loss": np.float64(0.91)})
    loaded, checkpoint = load_checkpoint(path, species=SPECIES)

    assert type(loaded) is type(resnet) and loaded.training is False
    assert_same_weights(loaded, resnet, rtol=0, atol=0)
    images, _ = make_data(6, size=32)
    loader = make_loader(images)
    pd.testing.assert_frame_equal(predict(loaded, loader, **QUIET), predict(resnet, loader, **QUIET))

    info = model_info("resnet18")
    assert checkpoint["arch"] == "resnet18" and checkpoint["head"] == "seed"
    assert checkpoint["dropout"] == 0.2 and checkpoint["num_classes"] == 8
    assert checkpoint["species"] == list(SPECIES)
    assert checkpoint["input_size"] == info.input_size
    assert checkpoint["mean"] == list(info.mean) and checkpoint["std"] == list(info.std)
    assert checkpoint["epoch"] == 3 and checkpoint["batch"] == 0
    assert checkpoint["metrics"] == {"eval_log_loss": 0.91}
    assert checkpoint["versions"]["torch"] == str(torch.__version__)
    assert set(checkpoint["versions"]) >= {"conserviz", "torch", "torchvision"}


def test_training_state_loads_with_plain_weights_only_torch_load(tmp_path):
    model = TinyNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    images, labels = make_data(8)
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    scheduler.step()
    history = pd.DataFrame({"epoch": [1, 1], "train_loss": [2.1, 1.9], "eval_log_loss": [np.nan, 1.8]})
    path = save_checkpoint(
        tmp_path / "state.pt",
        model,
        optimizer=optimizer,
        scheduler=scheduler,
        epoch=1,
        batch=4,
        history=history,
        extra={"note": "two-stage recipe", "stage": np.int64(2), "lrs": np.array([0.1, 0.01])},
    )

    raw = torch.load(path, weights_only=True)  # no allow-listing, no pickled classes
    assert raw["history"]["train_loss"] == [2.1, 1.9] and np.isnan(raw["history"]["eval_log_loss"][0])
    assert raw["extra"]["stage"] == 2 and type(raw["extra"]["stage"]) is int
    torch.testing.assert_close(raw["extra"]["lrs"], torch.tensor([0.1, 0.01], dtype=torch.float64))
    assert raw["arch"] is None and raw["model_class"].endswith("TinyNet")

    fresh = TinyNet()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.01)
    fresh_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(fresh_optimizer, T_max=10)
    state = resume_state(path)
    fresh.load_state_dict(state["state_dict"])
    fresh_optimizer.load_state_dict(state["optimizer"])
    fresh_scheduler.load_state_dict(state["scheduler"])
    assert fresh_scheduler.last_epoch == 1
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    torch.testing.assert_close(
        fresh_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )


def test_values_that_would_need_unpickling_are_refused_at_save_time(tmp_path):
    path = tmp_path / "model.pt"
    with pytest.raises(CheckpointError, match=r"cannot store metrics\['split'\]: it is a pandas"):
        save_checkpoint(path, TinyNet(), metrics={"split": pd.Series([1, 2])})
    with pytest.raises(CheckpointError, match=r"cannot store extra\['callback'\]"):
        save_checkpoint(path, TinyNet(), extra={"callback": lambda: None})
    assert not path.exists()


def test_species_must_fit_the_number_of_logits(tmp_path):
    with pytest.raises(CheckpointError, match="gives 8 logits but 3 species"):
        save_checkpoint(tmp_path / "m.pt", build_model("resnet18", pretrained=False), species=["a", "b", "c"])


# ------------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------------


def failing_save(exception):
    """A torch.save that writes half an archive, then fails like a full disk or a crash."""

    def save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half of a zip archive")
        raise exception

    return save


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = TinyNet()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, epoch=1)
    first = weights(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)

    monkeypatch.setattr(torch, "save", failing_save(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(CheckpointError, match="No space left on device") as caught:
        save_checkpoint(path, model, epoch=2)
    assert "free some disk space" in caught.value.fix
    assert "previous checkpoint" in str(caught.value)
    monkeypatch.undo()

    assert files_in(tmp_path) == ["model.pt"]  # no temporary file left behind
    state = resume_state(path)
    assert state["epoch"] == 1
    assert_same_weights(state["state_dict"], first, rtol=0, atol=0)


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, TinyNet(), epoch=1)
    monkeypatch.setattr(torch, "save", failing_save(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, TinyNet(), epoch=2)
    monkeypatch.undo()
    assert files_in(tmp_path) == ["model.pt"]
    assert resume_state(path)["epoch"] == 1


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", failing_save(OSError(errno.EACCES, "Permission denied")))
    with pytest.raises(CheckpointError, match="Permission denied") as caught:
        save_checkpoint(tmp_path / "model.pt", TinyNet())
    assert "folder you can write to" in caught.value.fix
    assert files_in(tmp_path) == []


def test_saving_replaces_the_file_in_one_step(tmp_path, monkeypatch):
    """The final file only ever appears complete: it is renamed into place after the write."""
    import os

    path = tmp_path / "model.pt"
    save_checkpoint(path, TinyNet(), epoch=1)
    renames = []
    real_replace = os.replace

    def watching_replace(source, target):
        renames.append((os.path.dirname(source), os.path.basename(source), str(target)))
        assert torch.load(source, weights_only=True)["epoch"] == 2  # complete before the rename
        assert resume_state(target)["epoch"] == 1  # the old one still in place until then
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", watching_replace)
    save_checkpoint(path, TinyNet(), epoch=2)
    [(folder, name, target)] = renames
    assert folder == str(tmp_path) and name.startswith(".conserviz-model.pt.") and target == str(path)
    assert resume_state(path)["epoch"] == 2


# ------------------------------------------------------------------------------------------------
# Refusing what is not a checkpoint, and never running code from a file
# ------------------------------------------------------------------------------------------------


class CreatesAFile:
    """A pickle payload: unpickling it calls open(marker, "w"), creating the marker file."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path, writer):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"format": "conserviz-checkpoint", "payload": CreatesAFile(marker)}, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(CreatesAFile(marker), handle)
    assert not marker.exists()
    for load in (load_checkpoint, resume_state):
        with pytest.raises(CheckpointError, match="refused") as caught:
            load(path)
        assert str(path) in str(caught.value)
    assert not marker.exists()


def test_pickled_whole_model_is_refused_and_the_conversion_it_suggests_works(tmp_path):
    import torchvision

    # The walkthrough's model: a torchvision ResNet whose fc became the seed head, pickled whole
    # (resnet18 here instead of its resnet50, to stay small).
    walkthrough = torchvision.models.resnet18(weights=None)
    walkthrough.fc = nn.Sequential(
        nn.Linear(512, 100), nn.ReLU(inplace=True), nn.Dropout(0.1), nn.Linear(100, 8)
    )
    walkthrough.eval()
    path = tmp_path / "walkthrough_model.pth"
    torch.save(walkthrough, path)

    refused = r"whole pickled model \(torchvision\.models\.resnet\.ResNet\)"
    with pytest.raises(CheckpointError, match=refused) as caught:
        load_checkpoint(path)
    assert "torch.save(model)" in str(caught.value) and "run" in str(caught.value)
    fix = caught.value.fix
    assert "only if you trust" in fix and "weights_only=False" in fix

    # Follow the fix, step by step (with resnet18 for resnet50).
    assert "build_model('resnet50', pretrained=False, head='seed')" in fix
    old = torch.load(path, weights_only=False).state_dict()
    model = build_model("resnet18", pretrained=False, head="seed")
    renamed = {("head." + k[3:] if k.startswith("fc.") else "backbone." + k): v for k, v in old.items()}
    model.load_state_dict(renamed)
    converted = save_checkpoint(tmp_path / "converted.pt", model)
    loaded, _ = load_checkpoint(converted)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), walkthrough(images))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (bytes(range(256)) * 4, "not a checkpoint: this is not a torch.save archive"),
        (b"", "not a checkpoint"),
        (b"id,antelope_duiker\nZJ000000,1\n", "not a checkpoint"),
    ],
    ids=["random-bytes", "empty", "a-csv"],
)
def test_files_that_are_not_checkpoints_are_refused(tmp_path, content, expected):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as caught:
        load_checkpoint(path)
    assert caught.value.path == path and caught.value.fix


def test_truncated_checkpoint_is_called_corrupt(tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", TinyNet())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        resume_state(path)


def test_bare_state_dict_and_foreign_dicts_are_explained(tmp_path):
    bare = tmp_path / "weights.pt"
    torch.save(TinyNet().state_dict(), bare)
    with pytest.raises(CheckpointError, match="bare state_dict") as caught:
        load_checkpoint(bare)
    assert "load_state_dict" in caught.value.fix

    foreign = tmp_path / "other_tool.pt"
    torch.save({"model": TinyNet().state_dict(), "epoch": 3}, foreign)
    with pytest.raises(CheckpointError, match="not a conserviz checkpoint"):
        load_checkpoint(foreign)


def test_missing_file_folder_and_newer_format(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file at this path"):
        load_checkpoint(tmp_path / "nowhere.pt")
    with pytest.raises(CheckpointError, match="a folder"):
        load_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path / "model.pt", TinyNet())
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = CHECKPOINT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="newer conserviz"):
        resume_state(path)


def test_custom_model_weights_load_but_cannot_be_rebuilt(tmp_path):
    path = save_checkpoint(tmp_path / "tiny.pt", TinyNet())
    with pytest.raises(CheckpointError, match="custom model .*TinyNet") as caught:
        load_checkpoint(path)
    assert "resume_state(path)['state_dict']" in caught.value.fix
    TinyNet().load_state_dict(resume_state(path)["state_dict"])


def test_edited_weights_are_refused(tmp_path, resnet):
    path = save_checkpoint(tmp_path / "model.pt", resnet)
    payload = torch.load(path, weights_only=True)
    payload["arch"] = "resnet34"  # claims another architecture than its weights
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit a resnet34"):
        load_checkpoint(path)


# ------------------------------------------------------------------------------------------------
# Species
# ------------------------------------------------------------------------------------------------


def test_species_mismatch_is_refused(tmp_path, resnet):
    path = save_checkpoint(tmp_path / "model.pt", resnet)
    reordered = list(reversed(SPECIES))
    with pytest.raises(CheckpointError, match="same species in another order") as caught:
        load_checkpoint(path, species=reordered)
    assert caught.value.column == "species"
    others = [*SPECIES[:-1], "pangolin"]
    expected = r"the data has \['pangolin'\] that it lacks and it has \['rodent'\]"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path, species=others)
    model, _ = load_checkpoint(path, species=list(SPECIES))
    assert model.num_classes == 8

    unnamed = save_checkpoint(tmp_path / "unnamed.pt", resnet, species=None)
    with pytest.raises(CheckpointError, match="does not record which species"):
        load_checkpoint(unnamed, species=SPECIES)
    load_checkpoint(unnamed)  # no species asked for: fine
