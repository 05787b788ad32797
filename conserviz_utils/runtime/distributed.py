"""Training on several processes (GPUs or CPU cores) launched by torchrun, PyTorch's own launcher.

Nothing here starts processes or picks ports: ``torchrun`` does, and passes each process its place
in the job through environment variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). These helpers read them, set up the
process group (NCCL on CUDA GPUs, gloo on CPUs) and supply the pieces a training loop needs::

    torchrun --nproc-per-node=4 -m conserviz_utils train --data data/competition --out runs/a

    device = setup_distributed()              # cuda:LOCAL_RANK under torchrun on GPUs
    model = wrap_model(model, device)          # DistributedDataParallel
    loader = distributed_loader(dataset, batch_size=32, shuffle=True, seed=0)
    ...                                        # each process trains on its share of each epoch
    ids, logits, labels = gather_predictions(ids, logits, labels)   # the whole eval set
    if is_main_process():
        save_checkpoint(path, unwrap_model(model))
    teardown_distributed()

Without torchrun every helper falls back to one process: ``rank()`` is 0, ``world_size()`` 1,
``wrap_model`` returns the model, ``gather_predictions`` returns its arguments. So the same code
runs in a notebook, in a plain ``python`` process and on eight GPUs.

Batch size. ``batch_size`` is per process, as in PyTorch: on N processes one optimizer step sees
``N * batch_size`` images (the global batch), and DistributedDataParallel averages the gradients
over them. A run on 2 processes with batch 16 therefore takes the same steps as a run on one
process with batch 32 and the same seed (``distributed_loader`` deals the same shuffled order out
to the processes, whatever their number).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from conserviz_utils.errors import TrainingError

__all__ = [
    "LAUNCH_VARIABLES",
    "any_rank",
    "barrier",
    "distributed_loader",
    "gather_objects",
    "gather_predictions",
    "is_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "local_rank",
    "rank",
    "setup_distributed",
    "teardown_distributed",
    "unwrap_model",
    "world_size",
    "wrap_model",
]

#: The environment variables torchrun sets in every process it starts (and that
#: ``init_process_group(init_method="env://")`` reads).
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_LAUNCH_FIX = (
    "start every process with torchrun, which sets them, e.g. "
    "`torchrun --nproc-per-node=2 -m conserviz_utils train ...`; or unset RANK and WORLD_SIZE "
    "to run as one process"
)


# --------------------------------------------------------------------------------------------
# Where this process stands
# --------------------------------------------------------------------------------------------


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """True when this process was started by torchrun (or another launcher that sets ``RANK``)."""
    env = os.environ if environ is None else environ
    return "RANK" in env or "WORLD_SIZE" in env


def is_distributed() -> bool:
    """True when a process group is set up (by :func:`setup_distributed`) with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise TrainingError(
            f"environment variable {name}={raw!r} is not a whole number", fix=_LAUNCH_FIX
        ) from None


def rank() -> int:
    """This process's number in the whole job, from 0 (0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def world_size() -> int:
    """How many processes take part in the job (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    """This process's number on its own machine, from 0: the GPU it uses."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """True on rank 0, the process that writes checkpoints, logs and submissions."""
    return rank() == 0


# --------------------------------------------------------------------------------------------
# Setting up and tearing down
# --------------------------------------------------------------------------------------------


def _check_launch_environment() -> tuple[int, int, int, int]:
    """Refuse a half-set or contradictory torchrun environment: (rank, local rank, world, local world)."""
    missing = [name for name in LAUNCH_VARIABLES if not os.environ.get(name)]
    if missing:
        present = [name for name in LAUNCH_VARIABLES if os.environ.get(name)]
        raise TrainingError(
            f"a distributed launch needs the environment variables {', '.join(LAUNCH_VARIABLES)}; "
            f"{', '.join(present)} {'is' if len(present) == 1 else 'are'} set but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing",
            fix=_LAUNCH_FIX,
        )
    global_rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    world, local_world = _env_int("WORLD_SIZE", 1), _env_int("LOCAL_WORLD_SIZE", 1)
    if world < 1 or not 0 <= global_rank < world:
        raise TrainingError(f"RANK={global_rank} is not below WORLD_SIZE={world}", fix=_LAUNCH_FIX)
    if local_world < 1 or local_world > world or not 0 <= local < local_world:
        raise TrainingError(
            f"LOCAL_RANK={local}, LOCAL_WORLD_SIZE={local_world} and WORLD_SIZE={world} do not fit "
            "together (0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE)",
            fix=_LAUNCH_FIX,
        )
    return global_rank, local, world, local_world


def _training_device(device: str | torch.device, backend: str | None) -> torch.device:
    """The device type of the job: CUDA when asked for (or "auto" with a GPU), else the CPU."""
    if isinstance(device, str) and device == "auto":
        # NCCL asked for explicitly means GPUs; gloo asked for explicitly means CPUs.
        if backend == "gloo":
            return torch.device("cpu")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type not in ("cuda", "cpu"):
        raise TrainingError(
            f"distributed training runs on CUDA GPUs or CPUs, not on {chosen.type!r}",
            fix="use --device cuda or --device cpu (Apple's MPS has no multi-process backend)",
        )
    return chosen


def setup_distributed(
    backend: str | None = None,
    device: str | torch.device = "auto",
    timeout_minutes: float = 30.0,
) -> torch.device:
    """Join the process group torchrun launched this process into; return the device to train on.

    Without torchrun (no ``RANK``/``WORLD_SIZE`` in the environment) nothing is set up and the
    device is the usual choice (a CUDA GPU if there is one, else the CPU), so single-process
    code can call this unconditionally. Calling it again returns the same device.

    Args:
        backend: "nccl" (CUDA GPUs) or "gloo" (CPUs); None picks NCCL on CUDA and gloo on CPU.
        device: "auto" (CUDA when available), "cuda" or "cpu". On CUDA each process takes the
            GPU of its ``LOCAL_RANK``.
        timeout_minutes: How long a collective (gather, barrier, gradient all-reduce) may wait
            for the other processes before failing. Rank 0 alone computing embeddings or
            writing a large checkpoint must fit inside it.

    Returns:
        ``cuda:<LOCAL_RANK>`` on GPUs, ``cpu`` on CPUs.

    Raises:
        TrainingError: the launch is inconsistent: RANK set without MASTER_ADDR (and the other
            torchrun variables), more processes on this machine than GPUs, NCCL without a GPU,
            or an unknown backend.
    """
    if backend is not None and backend not in ("nccl", "gloo"):
        raise TrainingError(f"unknown distributed backend {backend!r}", fix="use 'nccl' (GPUs) or 'gloo' (CPUs)")
    chosen = _training_device(device, backend)
    if not launched_by_torchrun():
        if chosen.type == "cuda":
            from conserviz_utils.runtime.device import pick_device

            return pick_device(chosen)
        return chosen
    global_rank, local, world, local_world = _check_launch_environment()

    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(
                "CUDA training was asked for but this machine has no usable CUDA GPU",
                fix="launch on a GPU machine, or train on CPUs with --device cpu (gloo)",
            )
        gpus = torch.cuda.device_count()
        if local_world > gpus:
            raise TrainingError(
                f"torchrun started {local_world} processes on this machine but it has {gpus} "
                f"GPU(s): each process needs a GPU of its own",
                fix=f"launch with --nproc-per-node={gpus} (or fewer), or free GPUs "
                "(CUDA_VISIBLE_DEVICES)",
            )
        chosen = torch.device("cuda", local)
        torch.cuda.set_device(chosen)
    backend = backend or ("nccl" if chosen.type == "cuda" else "gloo")
    if backend == "nccl" and chosen.type != "cuda":
        raise TrainingError(
            "the NCCL backend needs CUDA GPUs, but training is on the CPU", fix="use backend='gloo' on CPUs"
        )

    if dist.is_initialized():
        return chosen
    if not dist.is_available():
        raise TrainingError(
            "this PyTorch build has no torch.distributed", fix="install a PyTorch build with distributed support"
        )
    options: dict[str, Any] = {"timeout": dt.timedelta(minutes=timeout_minutes)}
    if chosen.type == "cuda":
        # Binding the group to this process's GPU lets NCCL set up eagerly and barriers find it.
        options["device_id"] = chosen
    dist.init_process_group(backend=backend, init_method="env://", rank=global_rank, world_size=world, **options)
    return chosen


def teardown_distributed() -> None:
    """Leave the process group (at the end of training, on every rank); nothing when there is none."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (e.g. for rank 0 to finish writing a file)."""
    if is_distributed():
        dist.barrier()


# --------------------------------------------------------------------------------------------
# Model and data
# --------------------------------------------------------------------------------------------


def wrap_model(model: nn.Module, device: str | torch.device, sync_batchnorm: bool = False) -> nn.Module:
    """Put ``model`` on ``device`` and, when distributed, wrap it in DistributedDataParallel.

    The model is moved to the channels-last layout first (what ``fit`` trains in), so the
    gradient buckets DDP builds match the gradients' layout.

    Args:
        model: The model to train; every process must build it the same way.
        device: This process's device, as :func:`setup_distributed` returned it.
        sync_batchnorm: Replace BatchNorm layers by SyncBatchNorm, which computes batch
            statistics over the global batch (CUDA only). Helps when each process's batch is small.

    Returns:
        The DDP-wrapped model (or ``model`` itself when not distributed). Save
        ``unwrap_model(model)``, so checkpoints load into an unwrapped model.
    """
    device = torch.device(device)
    model.to(device=device, memory_format=torch.channels_last)
    if not is_distributed():
        return model
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model
    if sync_batchnorm:
        if device.type != "cuda":
            raise TrainingError(
                "SyncBatchNorm runs on CUDA GPUs only, but training is on the CPU",
                fix="drop --sync-batchnorm (or sync_batchnorm=True) when training on CPUs",
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index if device.index is not None else local_rank()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (what to save and to predict with)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def distributed_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A loader over this process's share of ``dataset`` (a DistributedSampler), batched by `collate_images`.

    The order of epoch *e* is a shuffle drawn from ``seed + e`` (the training loop calls
    ``loader.sampler.set_epoch(e)``; ``fit`` does) and dealt out round-robin: rank *r* of *N*
    gets positions r, r+N, r+2N, ... So batch *k* of every rank together is batch *k* of a
    one-process run with *N* times the batch size. When the dataset does not divide evenly, the
    sampler repeats a few items so every rank has as many batches (``gather_predictions`` drops
    the repeats from evaluation). Without torchrun it is the same sampler over one process.

    Args:
        dataset: Usually an `ImagesDataset` (items with "image_id", "image", "label").
        batch_size: Images per batch on this process (global batch = this x ``world_size()``).
        shuffle: Reshuffle every epoch (training); False keeps the dataset order (evaluation).
        seed: Seed of the shuffle; every process must pass the same.
        num_workers: Decoding processes per training process; None: the machine's cores shared
            out among the processes on it (at most 4 each).
        device: Where batches go; CUDA pins memory for faster copies.
        drop_last: Drop the tail of the dataset that does not divide evenly among the processes,
            instead of repeating items.
    """
    from conserviz_utils.data import default_num_workers, make_loader

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    processes = world_size()
    sampler = DistributedSampler(
        dataset, num_replicas=processes, rank=rank(), shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    if num_workers is None:
        # The processes on one machine share its cores.
        local_processes = max(_env_int("LOCAL_WORLD_SIZE", 1), 1)
        num_workers = default_num_workers() // local_processes if local_processes > 1 else default_num_workers()
    return make_loader(dataset, batch_size, num_workers=num_workers, device=device, seed=seed, sampler=sampler)


# --------------------------------------------------------------------------------------------
# Gathering results
# --------------------------------------------------------------------------------------------


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _collective_device() -> torch.device:
    """Where a tensor must live for the process group's collectives (NCCL: this process's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one (e.g. "stop: a signal arrived").

    A training loop checks a stop request through this at every batch boundary: a signal reaches
    the processes at slightly different moments, and a rank that stopped alone would leave the
    others waiting forever in the next gradient all-reduce.
    """
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_predictions(
    ids: Sequence[str],
    logits: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> tuple[list[str], torch.Tensor, torch.Tensor | None]:
    """Collect every rank's predictions, so the scores are those of the whole eval (or test) set.

    The ranks' rows are interleaved back in the order a :func:`distributed_loader` without
    shuffling dealt them out (the dataset's order), and the items the sampler repeated to even
    out the ranks are dropped: each id appears once.

    Args:
        ids: This rank's image ids, one per row of ``logits``.
        logits: (n, classes) tensor of this rank's outputs (any device; returned on the CPU).
        labels: This rank's labels (n rows), or None.

    Returns:
        ``(ids, logits, labels)`` of the whole set, on every rank (as given when not distributed).
    """
    ids = [str(i) for i in ids]
    if len(ids) != len(logits) or (labels is not None and len(labels) != len(ids)):
        raise TrainingError(
            f"{len(ids)} ids, {len(logits)} rows of logits and "
            f"{'no' if labels is None else len(labels)} labels cannot be gathered: they must match"
        )
    if not is_distributed():
        return ids, logits, labels
    local = (ids, logits.detach().cpu(), None if labels is None else labels.detach().cpu())
    parts = gather_objects(local)
    longest = max(len(part[0]) for part in parts)
    order = [(r, j) for j in range(longest) for r in range(len(parts)) if j < len(parts[r][0])]
    seen: set[str] = set()
    keep: list[tuple[int, int]] = []
    for r, j in order:
        image_id = parts[r][0][j]
        if image_id not in seen:
            seen.add(image_id)
            keep.append((r, j))
    all_ids = [parts[r][0][j] for r, j in keep]
    columns = logits.shape[1] if logits.dim() == 2 else 0
    if not keep:
        return all_ids, torch.empty((0, columns), dtype=logits.dtype), None if labels is None else labels[:0].cpu()
    all_logits = torch.stack([parts[r][1][j] for r, j in keep])
    all_labels = None if labels is None else torch.stack([parts[r][2][j] for r, j in keep])
    return all_ids, all_logits, all_labels
