"""Training on several processes (GPUs or CPU cores) launched by torchrun, PyTorch's own launcher.

``torchrun`` starts the processes and passes each its place in the job through environment
variables (:data:`LAUNCH_VARIABLES`); these helpers read them, set up the process group (NCCL on
CUDA GPUs, gloo on CPUs) and supply what a training loop needs::

    torchrun --nproc-per-node=4 -m conserviz_utils train --data data/competition --out runs/a

    device = setup_distributed()              # cuda:LOCAL_RANK under torchrun on GPUs
    model = wrap_model(model, device)          # DistributedDataParallel
    loader = distributed_loader(dataset, batch_size=32, shuffle=True, seed=0)
    ids, logits, labels = gather_predictions(ids, logits, labels)   # the whole eval set

Without torchrun every helper falls back to one process (rank 0 of 1), so the same code runs in
a notebook and on eight GPUs. ``batch_size`` is per process: on N processes one step sees N times
as many images, so 2 processes at batch 16 take the same steps as one at 32 with the same seed.
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
from conserviz_utils.runtime.device import pick_device

__all__ = [
    "LAUNCH_VARIABLES", "any_rank", "barrier", "distributed_loader", "gather_objects", "gather_predictions",
    "is_distributed", "is_main_process", "launched_by_torchrun", "local_rank", "rank", "setup_distributed",
    "teardown_distributed", "unwrap_model", "world_size", "wrap_model",
]

#: The environment variables torchrun sets in every process it starts (and that
#: ``init_process_group(init_method="env://")`` reads).
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_LAUNCH_FIX = (
    "start every process with torchrun, which sets them, e.g. "
    "`torchrun --nproc-per-node=2 -m conserviz_utils train ...`; or unset RANK and WORLD_SIZE "
    "to run as one process"
)


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """True when this process was started by torchrun (or another launcher that sets ``RANK``)."""
    env = os.environ if environ is None else environ
    return "RANK" in env or "WORLD_SIZE" in env


def is_distributed() -> bool:
    """True when a process group of more than one process is set up."""
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
    """Join the process group torchrun launched this process into; return its device (``cuda:<LOCAL_RANK>`` or cpu).

    Without torchrun nothing is set up and the device is the usual choice, so single-process
    code can call this unconditionally; calling it again returns the same device.

    Args:
        backend: "nccl" (CUDA GPUs) or "gloo" (CPUs); None picks NCCL on CUDA and gloo on CPU.
        timeout_minutes: How long a collective may wait for the other processes: rank 0 alone
            computing embeddings or writing a large checkpoint must fit inside it.

    Raises:
        TrainingError: the launch is inconsistent (half the torchrun variables, more processes
            than GPUs, NCCL without a GPU) or the backend unknown.
    """
    if backend is not None and backend not in ("nccl", "gloo"):
        raise TrainingError(f"unknown distributed backend {backend!r}", fix="use 'nccl' (GPUs) or 'gloo' (CPUs)")
    chosen = _training_device(device, backend)
    if not launched_by_torchrun():
        return pick_device(chosen) if chosen.type == "cuda" else chosen
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


def wrap_model(model: nn.Module, device: str | torch.device, sync_batchnorm: bool = False) -> nn.Module:
    """Put ``model`` on ``device``, channels-last, and when distributed wrap it in DistributedDataParallel.

    Channels-last first (what ``fit`` trains in), so DDP's gradient buckets match the gradients'
    layout. ``sync_batchnorm`` computes BatchNorm statistics over the global batch (CUDA only).
    Save ``unwrap_model(model)``, so checkpoints load into an unwrapped model.
    """
    device = torch.device(device)
    model.to(device=device, memory_format=torch.channels_last)
    if not is_distributed() or isinstance(model, nn.parallel.DistributedDataParallel):
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

    Epoch *e*'s order is a shuffle from ``seed + e`` (``fit`` calls ``sampler.set_epoch``) dealt
    out round-robin, so batch *k* of every rank together is batch *k* of a one-process run with
    *N* times the batch size. A dataset that does not divide evenly has a few items repeated
    (``gather_predictions`` drops them), or its tail dropped with ``drop_last``. ``seed`` must be
    the same on every process; ``num_workers`` None shares the machine's cores among its processes.
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
    """True on every rank when ``flag`` is True on at least one (e.g. "stop: a signal arrived")."""
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
    """Every rank's ``(ids, logits, labels)`` on every rank, in dataset order, each id once (on the CPU).

    The rows are interleaved back in the order an unshuffled :func:`distributed_loader` dealt them
    out, and the items the sampler repeated to even out the ranks are dropped.
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
    first: dict[str, tuple[int, int]] = {}  # each id's first (rank, row), in the order dealt out
    for j in range(max(len(part[0]) for part in parts)):
        for r, part in enumerate(parts):
            if j < len(part[0]):
                first.setdefault(part[0][j], (r, j))
    all_ids, keep = list(first), list(first.values())
    columns = logits.shape[1] if logits.dim() == 2 else 0
    if not keep:
        return all_ids, torch.empty((0, columns), dtype=logits.dtype), None if labels is None else labels[:0].cpu()
    all_logits = torch.stack([parts[r][1][j] for r, j in keep])
    all_labels = None if labels is None else torch.stack([parts[r][2][j] for r, j in keep])
    return all_ids, all_logits, all_labels
