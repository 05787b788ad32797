"""What an exact resume needs: per-epoch shuffling from (seed, epoch), skipped batches, random states.

``fit`` owns the shuffling: for a ``torch.utils.data.DataLoader`` whose sampler shuffles (it has a
``generator``), the order of epoch *e* is drawn from a generator seeded with
``SeedSequence([seed, e])``; the sampler gets its own generator back when ``fit`` returns. A
checkpoint written at batch *b* of epoch *e* holds that seed, *b*, and the random states (torch,
numpy, Python, CUDA) at that boundary. Resuming re-draws the same order for epoch *e*, skips its
first *b* batches by index, without loading their images, and restores the random states, so
dropout and augmentation draw what they would have drawn.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset


@dataclass
class Position:
    """Where training stands: ``epoch`` epochs and ``batch`` batches of the next one done.

    ``rng`` holds the random states to restore before the epoch's loader is iterated
    (``rng_point`` "epoch_start") or right after it (``"batch"``).
    """

    epoch: int = 0
    batch: int = 0
    rng_point: str = "epoch_start"
    rng: tuple | None = None


class SkipBatches:
    """A batch sampler that leaves out the first ``skip`` batches of another one."""

    def __init__(self, batch_sampler: Iterable[list[int]], skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        # A generator function, like torch's samplers: the order is drawn on the first next(),
        # at the same moment as in an uninterrupted epoch.
        batches = iter(self.batch_sampler)
        for _ in itertools.islice(batches, self.skip):
            pass
        yield from batches

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)  # type: ignore[arg-type]


def epoch_batches(loader: Iterable, skip: int) -> Iterator:
    """Iterate one epoch of ``loader`` without its first ``skip`` batches.

    For a map-style DataLoader the batches are skipped by index, so their images are never
    loaded; any other iterable is replayed and its first batches thrown away.
    """
    if skip == 0:
        return iter(loader)
    map_style = isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)
    if map_style and loader.batch_sampler is not None:
        names = ("num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context",
                 "generator", "prefetch_factor", "pin_memory_device")
        options = {name: getattr(loader, name) for name in names}
        rest = DataLoader(loader.dataset, batch_sampler=SkipBatches(loader.batch_sampler, skip), **options)
        return iter(rest)
    batches = iter(loader)
    for _ in itertools.islice(batches, skip):
        pass
    return batches


class ShuffleControl:
    """Seeds a DataLoader's shuffling per epoch from (seed, epoch); puts its generator back after."""

    def __init__(self, loader: Iterable) -> None:
        sampler = getattr(loader, "sampler", None) if isinstance(loader, DataLoader) else None
        # A BatchSampler given as the sampler (batch_size=None loaders, like the embeddings
        # loader) shuffles through the sampler it wraps.
        inner = getattr(sampler, "sampler", None)
        shuffler = sampler if hasattr(sampler, "generator") else inner if hasattr(inner, "generator") else None
        self.sampler = shuffler
        self.distributed = sampler if sampler is not None and hasattr(sampler, "set_epoch") else None
        self.original = self.sampler.generator if self.sampler is not None else None

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Make the coming epoch's order a function of (seed, epoch) only."""
        if self.sampler is not None:
            generator = torch.Generator()
            generator.manual_seed(mixed_seed(seed, epoch))
            self.sampler.generator = generator
        if self.distributed is not None:
            self.distributed.set_epoch(epoch)

    def restore(self) -> None:
        """Give the loader its own generator back."""
        if self.sampler is not None:
            self.sampler.generator = self.original


def mixed_seed(first: int, second: int) -> int:
    """A well-mixed 32-bit seed of two numbers: (seed, epoch) for a shuffle, (epoch token, position) for an image."""
    return int(np.random.SeedSequence([first, second]).generate_state(1)[0])


def rng_snapshot(device: torch.device) -> tuple:
    """The global random states, cheaply (converted to plain values only when saved)."""
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    return torch.get_rng_state(), np.random.get_state(), random.getstate(), cuda


def rng_plain(snapshot: tuple) -> dict:
    """A random-state snapshot as checkpoint-safe values."""
    torch_state, numpy_state, python_state, cuda = snapshot
    name, keys, position, has_gauss, cached_gaussian = numpy_state
    version, internal, gauss_next = python_state
    return {
        "torch": torch_state,
        "numpy": {
            "name": name,
            "keys": keys.tolist(),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "cuda": list(cuda) if cuda is not None else None,
    }


def rng_restore(state: Mapping, device: torch.device) -> None:
    """Put back the random states of a checkpoint."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            np.asarray(numpy_state["keys"], dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def draw_seed() -> int:
    """A run seed from torch's global generator (so torch.manual_seed before fit fixes it)."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's random module."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


__all__ = [
    "Position", "ShuffleControl", "SkipBatches", "draw_seed", "epoch_batches", "mixed_seed", "rng_plain",
    "rng_restore", "rng_snapshot", "seed_everything",
]
