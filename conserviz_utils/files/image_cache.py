"""An optional on-disk cache of pre-resized images, so each epoch skips JPEG decoding.

Decoding a 640×360 JPEG and resizing it costs a few milliseconds of CPU per image, every epoch.
The cache does it once: each image is decoded by ``images.open_image`` at the target size and
stored as raw RGB pixels (an uncompressed ``.npy`` file), which later reads back in a tenth of a
millisecond with exactly the same pixels. Entries are keyed on the source file's path, size and
modification time and on the target size, so an edited or replaced image is decoded afresh and a
stale entry is never read. The cache is safe to delete at any time; it is rebuilt on demand.

Raw pixels are large on purpose (lossless and no decode): about 150 KB per image at 224×224,
so roughly 3 GB for all 21,000 competition images. Use it when disk is cheaper than CPU time,
e.g. for several epochs of full fine-tuning; the frozen-feature path reads each image only once
and does not need it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from conserviz_utils.errors import ConservizError, ImageLoadError
from conserviz_utils.files.fileio import atomic_writer
from conserviz_utils.files.images import as_size, check_image_file, open_image
from conserviz_utils.runtime.cpu import available_cpus

__all__ = ["DEFAULT_CACHE_DIR", "CacheReport", "ImageCache"]

#: Where the cache lives unless told otherwise (git-ignored; ``make clean`` deletes it).
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[2] / "data" / "cache"

# Part of every key: bump it when open_image's decoding changes, so old entries stop matching.
_FORMAT = "open_image-bilinear-v1"


@dataclass
class CacheReport:
    """What :meth:`ImageCache.build` did.

    Attributes:
        total: Images asked for.
        built: Images decoded and written.
        reused: Images already in the cache.
        failed: Source path → error message, for images that could not be decoded.
        seconds: Wall time.
        workers: Threads used.
    """

    total: int
    built: int
    reused: int
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    workers: int = 1

    @property
    def images_per_second(self) -> float:
        """Images built per second of wall time."""
        return self.built / self.seconds if self.seconds > 0 else float("nan")

    def __str__(self) -> str:
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return (
            f"{self.total:,} images: {self.built:,} built, {self.reused:,} reused{failed} "
            f"in {self.seconds:.1f} s with {self.workers} worker(s)"
        )


class ImageCache:
    """Pre-resized copies of images, stored under ``root/<width>x<height>/``.

    Usually made for you: ``ImagesDataset(..., cache_dir="data/cache")`` builds one at the size
    it decodes at (its transform's first Resize), so the transform's own resize becomes a no-op
    and the pixels are exactly those of the uncached pipeline.

    Args:
        size: Target size, ``(width, height)`` as in ``open_image``, or an int for a square.
        root: The cache folder; default ``data/cache`` in the project.

    Example:
        >>> dataset = ImagesDataset(data.train_features, data.train_labels, cache_dir="data/cache")  # doctest: +SKIP
        >>> dataset.cache.build(dataset.paths)  # decode every image once, with a progress bar  # doctest: +SKIP
    """

    def __init__(self, size: int | tuple[int, int] = 224, root: str | os.PathLike = DEFAULT_CACHE_DIR) -> None:
        self.size: tuple[int, int] = as_size(size)
        self.root = Path(root)

    @property
    def folder(self) -> Path:
        """The folder holding the entries of this target size."""
        width, height = self.size
        return self.root / f"{width}x{height}"

    def __repr__(self) -> str:
        width, height = self.size
        return f"ImageCache(size=({width}, {height}), root={str(self.root)!r})"

    def entry_path(self, source: str | os.PathLike) -> Path:
        """Where the cached copy of ``source`` is (or would be) stored.

        The name hashes the absolute source path, its size and modification time (so editing
        or replacing the file moves it to a new entry) and the target size.

        Raises:
            ImageLoadError: the source file does not exist.
        """
        absolute = os.path.abspath(source)
        try:
            stat = os.stat(absolute)
        except OSError:
            # Worded as open_image words it: missing file, folder, or no permission.
            check_image_file(Path(absolute))
            raise
        width, height = self.size
        text = f"{absolute}\0{stat.st_size}\0{stat.st_mtime_ns}\0{width}x{height}\0{_FORMAT}"
        key = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        return self.folder / key[:2] / f"{key}.npy"

    def load(self, source: str | os.PathLike) -> Image.Image:
        """The image at the target size: read from the cache, or decoded, stored and returned.

        Raises:
            ImageLoadError: the source image cannot be decoded (as from ``open_image``).
        """
        entry = self.entry_path(source)
        pixels = self._read(entry)
        if pixels is None:
            pixels = self._store(source, entry)
        return Image.fromarray(pixels)  # (height, width, 3) uint8 reads as RGB

    def contains(self, source: str | os.PathLike) -> bool:
        """True when ``source`` has a current entry (same path, size, modification time)."""
        return self.entry_path(source).is_file()

    def build(
        self,
        sources: Iterable[str | os.PathLike],
        *,
        workers: int | None = None,
        progress: bool = True,
    ) -> CacheReport:
        """Decode and store every source image that has no current entry yet.

        Pillow releases the GIL while decoding and resizing, so threads run in parallel on
        every core without the start-up cost of processes. Images that cannot be decoded are
        listed in the report rather than stopping the build; loading them later raises the
        usual ``ImageLoadError``.

        Args:
            sources: Image paths (e.g. ``data.train_features["path"]``).
            workers: Threads; None uses one per available CPU core.
            progress: Show a tqdm progress bar.

        Returns:
            A :class:`CacheReport`.
        """
        started = time.perf_counter()
        sources = [str(s) for s in sources]
        failed: dict[str, str] = {}
        todo: list[tuple[str, Path]] = []
        reused = 0
        for source in sources:
            try:
                entry = self.entry_path(source)
            except ConservizError as exc:
                failed[source] = str(exc)
                continue
            if entry.is_file():
                reused += 1
            else:
                todo.append((source, entry))
        n_workers = max(1, min(workers or available_cpus(), len(todo) or 1))

        def build_one(item: tuple[str, Path]) -> tuple[str, str | None]:
            source, entry = item
            try:
                self._store(source, entry)
            except ConservizError as exc:
                return source, str(exc)
            return source, None

        bar = tqdm(total=len(todo), desc="image cache", unit="img", disable=not progress, leave=False)
        with bar, ThreadPoolExecutor(max_workers=n_workers) as pool:
            for source, error in pool.map(build_one, todo):
                if error is not None:
                    failed[source] = error
                bar.update()
        return CacheReport(
            total=len(sources),
            built=len(sources) - reused - len(failed),
            reused=reused,
            failed=failed,
            seconds=time.perf_counter() - started,
            workers=n_workers,
        )

    def clear(self) -> int:
        """Delete every entry of this target size; return how many files were removed."""
        if not self.folder.is_dir():
            return 0
        count = sum(1 for _ in self.folder.rglob("*.npy"))
        shutil.rmtree(self.folder)
        return count

    def _read(self, entry: Path) -> np.ndarray | None:
        """The stored pixels, or None when the entry is missing or damaged (then rebuilt)."""
        try:
            pixels = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        width, height = self.size
        if pixels.shape != (height, width, 3) or pixels.dtype != np.uint8:
            return None
        return pixels

    def _store(self, source: str | os.PathLike, entry: Path) -> np.ndarray:
        """Decode ``source`` at the target size and write it to ``entry`` atomically."""
        pixels = np.asarray(open_image(source, target_size=self.size), dtype=np.uint8)
        # Written atomically: readers (e.g. DataLoader workers building the same entry) never
        # see a half-written file.
        try:
            with atomic_writer(entry, "wb", what="image cache entry", durable=False) as file:
                np.save(file, pixels, allow_pickle=False)
        except ConservizError as exc:
            # An ImageLoadError, so that datasets with on_error="skip" skip it like a bad image.
            raise ImageLoadError(
                f"cannot write the image cache entry ({exc.problem})",
                path=entry,
                fix="make the cache folder writable, or pass another root to ImageCache",
            ) from exc
        return pixels

