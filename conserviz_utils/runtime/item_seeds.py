"""Augmentation that draws from (epoch, place in the epoch) alone, so a resumed run redraws it exactly.

Loader workers seed themselves once, from a number drawn when the loader starts, so after a resume,
in fresh workers, the crops and flips (and so the weights) would differ. :func:`seeded_loader`
transforms every training image under a random state seeded from its epoch's shuffle and its place
in that epoch, forked so the process's own is untouched: the same with 0 workers or 8, in one
process or interrupted and resumed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from conserviz_utils.runtime.resume import mixed_seed

__all__ = ["SeededItems", "SeededSampler", "seeded_loader"]


class SeededSampler(Sampler):
    """Wraps a shuffling sampler: yields ``(item seed, index)``; ``generator`` is the wrapped one's (fit seeds it)."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    @property
    def generator(self) -> torch.Generator | None:
        """The wrapped sampler's generator."""
        return self.sampler.generator

    @generator.setter
    def generator(self, generator: torch.Generator | None) -> None:
        self.sampler.generator = generator

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = self.sampler.generator
        # One draw before the shuffle's: the epoch's token, so each epoch augments anew.
        token = int(torch.randint(0, 2**31 - 1, (), generator=generator)) if generator is not None else 0
        for position, index in enumerate(self.sampler):
            yield mixed_seed(token, position), index

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


class SeededItems(Dataset):
    """A dataset read by ``(seed, index)`` keys: each item is made under its own random state."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str):
        # The wrapped dataset's attributes (species, paths, ...), but never its batch protocol.
        if name.startswith("__") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: tuple[int, int]):
        seed, index = key
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone, which the transforms draw from: torch.manual_seed would
            # also reseed any initialised GPU generators, which fork_rng(devices=[]) does not
            # put back, and it costs 100 times as much per image.
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


def seeded_loader(loader: DataLoader) -> DataLoader:
    """The same training loader, its augmentation seeded per image; a loader without a shuffle generator as it is."""
    sampler = loader.sampler
    if loader.batch_size is None or not hasattr(sampler, "generator"):
        return loader
    names = ("batch_size", "num_workers", "collate_fn", "pin_memory", "drop_last", "timeout", "worker_init_fn",
             "generator", "persistent_workers")
    options = {name: getattr(loader, name) for name in names}
    return DataLoader(SeededItems(loader.dataset), sampler=SeededSampler(sampler), **options)
