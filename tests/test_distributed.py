"""Multi-process training on torchrun: 2 CPU processes (gloo) against 1, checkpoints, resume.

The multi-process tests launch this very file under torchrun (``python -m torch.distributed.run``,
which is what the ``torchrun`` command runs) on a free 127.0.0.1 port; ``worker()`` at the bottom
is what each process runs. The one-process reference runs the same function in the test process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from conserviz_utils import SPECIES, TrainingError
from conserviz_utils.runtime import distributed
from conserviz_utils.callbacks import Callback

N_CLASSES = len(SPECIES)
N_TRAIN = 24  # 3 global batches of 8: divisible by 2 processes x 4 images, so no padding in training
N_EVAL = 7  # odd on purpose: the sampler repeats an image on rank 1 and the gather must drop it
GLOBAL_BATCH = 8
EPOCHS = 2
SEED = 3
#: Two processes average their gradients where one process averages its batch; the sums are
#: taken in another order, so the weights agree to float32 rounding, not bit for bit.
WEIGHT_TOLERANCE = 1e-5


# ------------------------------------------------------------------------------------------------
# A tiny model and dataset in conserviz's batch layout
# ------------------------------------------------------------------------------------------------


class TinyConvNet(nn.Module):
    """Conv, pool, linear: no BatchNorm or dropout, so 2 processes can match 1 exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.classifier = nn.Linear(16, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class RandomImages(Dataset):
    """Items like ImagesDataset's ({"image_id", "image", "label"}), drawn once from a seed."""

    def __init__(self, n: int, seed: int, prefix: str) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 6, 6, generator=generator)
        classes = torch.randint(0, N_CLASSES, (n,), generator=generator)
        self.labels = nn.functional.one_hot(classes, N_CLASSES).float()
        self.ids = [f"{prefix}{i:03d}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        return {"image_id": self.ids[index], "image": self.images[index], "label": self.labels[index]}


# ------------------------------------------------------------------------------------------------
# What each process runs
# ------------------------------------------------------------------------------------------------


def _eval_log_loss(model: nn.Module, loader) -> tuple[list[str], float]:
    """Eval ids and log loss over the whole eval set, gathered from every rank."""
    # scikit-learn's log loss: independent of conserviz's metrics, and of their argument order.
    from sklearn.metrics import log_loss

    model.eval()
    ids, logits, labels = [], [], []
    with torch.inference_mode():
        for batch in loader:
            ids.extend(batch["image_id"])
            logits.append(model(batch["image"]).double())
            labels.append(batch["label"])
    model.train()
    ids, all_logits, all_labels = distributed.gather_predictions(ids, torch.cat(logits), torch.cat(labels))
    probs = torch.softmax(all_logits, dim=1).numpy()
    return ids, float(log_loss(all_labels.argmax(dim=1).numpy(), probs, labels=list(range(N_CLASSES))))


class SignalAtStep(Callback):
    """Send this process SIGTERM right after optimizer step ``step`` (what `kill` or a cluster does)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, trainer) -> None:
        if trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def worker(out: Path, stop_at_step: int | None = None, resume: bool = False) -> dict:
    """Train TinyConvNet with ``train.fit`` on this process's share; report the weights and scores.

    Args:
        out: Folder of the checkpoint (rank 0 writes it) and of the per-rank reports.
        stop_at_step: Send SIGTERM to the last rank (only) after this optimizer step.
        resume: Continue from the checkpoint in ``out``.
    """
    from conserviz_utils.train import fit

    device = distributed.setup_distributed(device="cpu", timeout_minutes=1.0)
    processes = distributed.world_size()
    torch.manual_seed(SEED)
    model = distributed.wrap_model(TinyConvNet(), device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    train_loader = distributed.distributed_loader(
        RandomImages(N_TRAIN, seed=1, prefix="t"), GLOBAL_BATCH // processes, shuffle=True, seed=SEED, num_workers=0
    )
    eval_loader = distributed.distributed_loader(RandomImages(N_EVAL, seed=2, prefix="e"), 2, num_workers=0)
    checkpoint = out / "checkpoint.pt"
    gets_signal = stop_at_step is not None and distributed.rank() == processes - 1
    history = fit(
        model, train_loader, eval_loader, epochs=EPOCHS, optimizer=optimizer, device=device, precision="fp32",
        checkpoint_path=checkpoint, resume_from=checkpoint if resume else None, seed=SEED, progress=False,
        callbacks=[SignalAtStep(stop_at_step)] if gets_signal else [],
    )
    evals = history.dropna(subset=["eval_log_loss"])
    eval_ids, eval_loss = _eval_log_loss(model, eval_loader)
    weights = torch.cat([p.detach().flatten() for p in distributed.unwrap_model(model).state_dict().values()])
    report = {
        "rank": distributed.rank(),
        "world_size": processes,
        "interrupted": bool(history.attrs["interrupted"]),
        "steps": int(history["step"].max()),
        "fit_eval_log_loss": float(evals["eval_log_loss"].iloc[-1]) if len(evals) else None,
        "eval_ids": eval_ids,
        "eval_log_loss": eval_loss,
        "weights": weights.tolist(),
    }
    distributed.barrier()
    distributed.teardown_distributed()
    return report


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--stop-at-step", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    report = worker(args.out, stop_at_step=args.stop_at_step, resume=args.resume)
    (args.out / f"rank{report['rank']}.json").write_text(json.dumps(report))


# ------------------------------------------------------------------------------------------------
# Launching under torchrun
# ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(out: Path, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """Run this file's worker on ``processes`` CPU processes under torchrun; results in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key not in distributed.LAUNCH_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes=1", f"--nproc-per-node={processes}",
        "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
        __file__, str(out), *args,
    ]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
    return done


def _reports(out: Path, processes: int = 2) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """The reference: one process, global batch 8, same seed, in the test process (no torchrun)."""
    out = tmp_path_factory.mktemp("one")
    return distributed_worker_without_launcher(out)


def distributed_worker_without_launcher(out: Path) -> dict:
    previous = {key: os.environ.pop(key) for key in distributed.LAUNCH_VARIABLES if key in os.environ}
    try:
        return worker(out)
    finally:
        os.environ.update(previous)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, list[dict]]:
    """An uninterrupted 2-process gloo run on the CPU."""
    out = tmp_path_factory.mktemp("two")
    _torchrun(out)
    return out, _reports(out)


def _max_difference(a: list[float], b: list[float]) -> float:
    return float((torch.tensor(a) - torch.tensor(b)).abs().max())


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


def test_two_processes_end_with_the_weights_of_one_process_with_the_same_global_batch(two_processes, one_process):
    _, (rank0, rank1) = two_processes
    assert (rank0["world_size"], rank1["world_size"], one_process["world_size"]) == (2, 2, 1)
    assert rank0["steps"] == rank1["steps"] == one_process["steps"] == EPOCHS * N_TRAIN // GLOBAL_BATCH
    # DDP keeps the ranks in step: identical weights.
    assert rank0["weights"] == rank1["weights"]
    torch.manual_seed(SEED)
    untrained = torch.cat([p.flatten() for p in TinyConvNet().state_dict().values()]).tolist()
    assert _max_difference(one_process["weights"], untrained) > 100 * WEIGHT_TOLERANCE  # it did train
    difference = _max_difference(rank0["weights"], one_process["weights"])
    print(f"2-process gloo against 1 process, same global batch and seed: largest weight difference {difference:.2e}")
    assert difference < WEIGHT_TOLERANCE


def test_eval_log_loss_is_that_of_the_whole_eval_set(two_processes, one_process):
    _, (rank0, rank1) = two_processes
    expected_ids = [f"e{i:03d}" for i in range(N_EVAL)]
    # Each rank scored 4 of the 7 images (one repeated to even out); the gather gives all 7, once
    # each, in the dataset's order.
    assert rank0["eval_ids"] == rank1["eval_ids"] == one_process["eval_ids"] == expected_ids
    assert rank0["eval_log_loss"] == pytest.approx(one_process["eval_log_loss"], abs=1e-5)
    # fit's own evaluation after the last epoch covers the whole eval set too.
    for report in (rank0, rank1):
        assert report["fit_eval_log_loss"] == pytest.approx(one_process["fit_eval_log_loss"], abs=1e-5)
    assert one_process["fit_eval_log_loss"] == pytest.approx(one_process["eval_log_loss"], abs=1e-6)


def test_rank_zero_alone_writes_one_checkpoint(two_processes):
    from conserviz_utils.runtime.checkpoint import resume_state

    out, (rank0, _) = two_processes
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "rank0.json", "rank1.json"]
    state = resume_state(out / "checkpoint.pt")
    assert (state["epoch"], state["batch"]) == (EPOCHS, 0)
    # Saved unwrapped ("classifier.weight", not "module.classifier.weight"): it loads into the model.
    assert all(not key.startswith("module.") for key in state["state_dict"])
    saved = torch.cat([v.flatten() for v in state["state_dict"].values()]).tolist()
    assert saved == rank0["weights"]
    assert state["metrics"]["eval_log_loss"] == pytest.approx(rank0["eval_log_loss"], abs=1e-6)


def test_an_interrupted_two_process_run_resumes_to_the_same_weights(tmp_path, two_processes):
    from conserviz_utils.runtime.checkpoint import resume_state

    _, (uninterrupted, _) = two_processes
    # SIGTERM to the last rank only, after step 4 (epoch 2, batch 1): the harder case of `kill` of
    # one worker, or of a signal reaching the ranks at different moments. The ranks must agree on
    # where to stop, or the others would wait forever in the next gradient all-reduce.
    _torchrun(tmp_path, "--stop-at-step", "4")
    stopped = _reports(tmp_path)
    assert [r["interrupted"] for r in stopped] == [True, True]
    assert [r["steps"] for r in stopped] == [4, 4]
    state = resume_state(tmp_path / "checkpoint.pt")
    assert (state["epoch"], state["batch"]) == (1, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "rank0.json", "rank1.json"]

    _torchrun(tmp_path, "--resume")
    resumed = _reports(tmp_path)
    assert [r["interrupted"] for r in resumed] == [False, False]
    assert [r["steps"] for r in resumed] == [6, 6]
    assert resumed[0]["weights"] == resumed[1]["weights"]
    assert _max_difference(resumed[0]["weights"], uninterrupted["weights"]) < WEIGHT_TOLERANCE
    assert resumed[0]["fit_eval_log_loss"] == pytest.approx(uninterrupted["fit_eval_log_loss"], abs=1e-5)


# ------------------------------------------------------------------------------------------------
# One process, and inconsistent launches (no process group is started)
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def no_launch(monkeypatch):
    for name in distributed.LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_without_torchrun_everything_is_one_process(no_launch):
    model = TinyConvNet()
    assert distributed.setup_distributed(device="cpu") == torch.device("cpu")
    assert not distributed.is_distributed() and not distributed.launched_by_torchrun()
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (0, 1, 0)
    assert distributed.is_main_process()
    assert distributed.wrap_model(model, "cpu") is model
    assert distributed.unwrap_model(model) is model
    ids, logits, labels = distributed.gather_predictions(["a", "b"], torch.zeros(2, 3), torch.ones(2, 3))
    assert ids == ["a", "b"] and logits.shape == (2, 3) and labels.shape == (2, 3)
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    distributed.barrier()
    distributed.teardown_distributed()


def test_one_process_loader_shuffles_by_seed_and_epoch(no_launch):
    dataset = RandomImages(10, seed=0, prefix="x")

    def order(seed: int, epoch: int) -> list[str]:
        loader = distributed.distributed_loader(dataset, 4, shuffle=True, seed=seed, num_workers=0)
        loader.sampler.set_epoch(epoch)
        return [i for batch in loader for i in batch["image_id"]]

    assert sorted(order(0, 0)) == dataset.ids
    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    plain = distributed.distributed_loader(dataset, 4, num_workers=0)
    assert [i for batch in plain for i in batch["image_id"]] == dataset.ids


def test_rank_without_master_address_is_refused_with_the_fix(no_launch):
    no_launch.setenv("RANK", "0")
    no_launch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainingError, match="MASTER_ADDR") as caught:
        distributed.setup_distributed(device="cpu")
    assert "torchrun --nproc-per-node" in caught.value.fix
    assert "LOCAL_RANK" in str(caught.value) and "MASTER_PORT" in str(caught.value)


def _launch_env(monkeypatch, rank: int, local_rank: int, world: int, local_world: int) -> None:
    for name, value in {"RANK": rank, "LOCAL_RANK": local_rank, "WORLD_SIZE": world,
                        "LOCAL_WORLD_SIZE": local_world, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 1}.items():
        monkeypatch.setenv(name, str(value))


def test_rank_beyond_world_size_is_refused(no_launch):
    _launch_env(no_launch, rank=2, local_rank=0, world=2, local_world=1)
    with pytest.raises(TrainingError, match="RANK=2 is not below WORLD_SIZE=2"):
        distributed.setup_distributed(device="cpu")


def test_more_processes_than_gpus_is_refused(no_launch):
    _launch_env(no_launch, rank=1, local_rank=1, world=4, local_world=4)
    no_launch.setattr(torch.cuda, "is_available", lambda: True)
    no_launch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(TrainingError, match="4 processes on this machine but it has 2 GPU") as caught:
        distributed.setup_distributed()
    assert "--nproc-per-node=2" in caught.value.fix


def test_nccl_without_a_gpu_and_unknown_backends_are_refused(no_launch):
    _launch_env(no_launch, rank=0, local_rank=0, world=2, local_world=2)
    with pytest.raises(TrainingError, match="NCCL backend needs CUDA"):
        distributed.setup_distributed(backend="nccl", device="cpu")
    with pytest.raises(TrainingError, match="unknown distributed backend"):
        distributed.setup_distributed(backend="mpi-ish")


def test_sync_batchnorm_on_cpu_is_refused_when_distributed(no_launch):
    no_launch.setattr(distributed, "is_distributed", lambda: True)
    with pytest.raises(TrainingError, match="SyncBatchNorm runs on CUDA"):
        distributed.wrap_model(nn.Sequential(nn.BatchNorm1d(3)), "cpu", sync_batchnorm=True)


if __name__ == "__main__":
    _main()
