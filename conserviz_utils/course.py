"""Glue for the six notebooks: settings, shared artifacts, and the headless runner of ``make course``.

Every notebook starts with ``settings = CourseSettings.from_env()`` (its parameters cell) and finds
what earlier notebooks wrote through ``CourseArtifacts``. When an artifact is missing — a learner
opened notebook 05 first — the ``ensure_*`` helpers rebuild it quietly, so each notebook runs alone.

``python -m conserviz_utils.course`` (``make course``) executes the six notebooks in order in fresh
kernels, keeps the executed copies under ``outputs/executed/`` and prints the headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_explore", "02_split", "03_model", "04_train", "05_evaluate", "06_submit")
DEFAULT_OUTPUT_DIR = PROJECT_ROOT / "outputs"


def _flag(value: str | None) -> bool:
    """Read an environment flag: 1/true/yes/on mean yes, anything else no."""
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class CourseSettings:
    """The knobs of a course run, with defaults meant for a real run on a laptop CPU.

    Each field has an environment variable (``CONSERVIZ_<NAME>``) so that ``make course``, CI and
    workshops can change a run without editing notebooks.
    """

    data_dir: Path | None = None  # CONSERVIZ_DATA: None → resolve_data_dir() picks
    quick: bool = False  # CONSERVIZ_QUICK: small sample, one short epoch (CI)
    output_dir: Path = DEFAULT_OUTPUT_DIR  # CONSERVIZ_OUTPUTS
    arch: str = "efficientnet_lite0"  # CONSERVIZ_ARCH: offline-pretrained, fast on a CPU
    epochs: int = 2  # CONSERVIZ_EPOCHS: full fine-tuning epochs after the head is trained
    head_epochs: int = 30  # CONSERVIZ_HEAD_EPOCHS: epochs of the head on cached embeddings
    batch_size: int = 32  # CONSERVIZ_BATCH_SIZE
    seed: int = 0  # CONSERVIZ_SEED
    max_train_images: int | None = None  # CONSERVIZ_MAX_TRAIN_IMAGES: cap for quick looks
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CourseSettings:
        """Build settings from ``CONSERVIZ_*`` environment variables; quick mode shrinks the run."""
        env = os.environ if environ is None else environ
        quick = _flag(env.get("CONSERVIZ_QUICK"))

        def number(name: str, default: int | None) -> int | None:
            raw = env.get(f"CONSERVIZ_{name}")
            if raw is None or raw.strip() == "":
                return default
            try:
                return int(raw)
            except ValueError:
                raise ValueError(
                    f"environment variable CONSERVIZ_{name}={raw!r} is not a whole number. "
                    f"Fix: set it to e.g. {default if default is not None else 1000}, or unset it."
                ) from None

        data = env.get("CONSERVIZ_DATA")
        return cls(
            data_dir=Path(data).expanduser() if data else None,
            quick=quick,
            output_dir=Path(env.get("CONSERVIZ_OUTPUTS") or DEFAULT_OUTPUT_DIR).expanduser(),
            arch=env.get("CONSERVIZ_ARCH") or cls.arch,
            epochs=number("EPOCHS", 1 if quick else cls.epochs),
            head_epochs=number("HEAD_EPOCHS", 10 if quick else cls.head_epochs),
            batch_size=number("BATCH_SIZE", cls.batch_size),
            seed=number("SEED", cls.seed),
            max_train_images=number("MAX_TRAIN_IMAGES", 240 if quick else None),
        )

    @property
    def artifacts(self) -> CourseArtifacts:
        """Where this run's notebooks read and write their shared files."""
        return CourseArtifacts(self.output_dir)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{f.name}</code></td><td>{getattr(self, f.name)}</td></tr>"
            for f in fields(self)
            if f.repr
        )
        return f"<table><tr><th>setting</th><th>value</th></tr>{rows}</table>"


@dataclass(frozen=True)
class CourseArtifacts:
    """The files the notebooks pass along, all under one output folder."""

    output_dir: Path

    @property
    def splits(self) -> Path:
        return self.output_dir / "splits.csv"

    @property
    def checkpoint(self) -> Path:
        return self.output_dir / "model.pt"

    @property
    def metrics(self) -> Path:
        return self.output_dir / "metrics.json"

    @property
    def submission(self) -> Path:
        return self.output_dir / "submission.csv"

    @property
    def features(self) -> Path:
        return self.output_dir / "features"

    @property
    def executed(self) -> Path:
        return self.output_dir / "executed"


def run_notebooks(
    notebooks_dir: Path,
    executed_dir: Path,
    names: tuple[str, ...] = NOTEBOOKS,
    timeout: int = 1800,
) -> list[tuple[str, float]]:
    """Execute each notebook in a fresh kernel, in order, and save the executed copy.

    Returns:
        (notebook name, seconds) for each notebook run.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    executed_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    for name in names:
        source = notebooks_dir / f"{name}.ipynb"
        notebook = nbformat.read(source, as_version=4)
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(notebooks_dir)}},
        )
        started = time.perf_counter()
        print(f"[course] running {source.name} …", flush=True)
        try:
            client.execute()
        except CellExecutionError as error:
            nbformat.write(notebook, executed_dir / f"{name}.ipynb")
            raise SystemExit(
                f"[course] {source.name} failed; the executed copy with the error is in "
                f"{executed_dir / (name + '.ipynb')}.\n{error}"
            ) from None
        seconds = time.perf_counter() - started
        nbformat.write(notebook, executed_dir / f"{name}.ipynb")
        print(f"[course] {source.name} done in {seconds:.0f} s", flush=True)
        timings.append((name, seconds))
    return timings


def main(argv: list[str] | None = None) -> int:
    """Run the whole course headless and print eval accuracy, log loss and the submission path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sample, one short epoch")
    parser.add_argument("--data", type=Path, help="competition data folder (else the sample)")
    parser.add_argument("--outputs", type=Path, help="output folder (default: outputs/)")
    args = parser.parse_args(argv)

    # The kernels inherit this process's environment: that is how the notebooks see the choices.
    if args.quick:
        os.environ["CONSERVIZ_QUICK"] = "1"
    if args.data:
        os.environ["CONSERVIZ_DATA"] = str(args.data.resolve())
    if args.outputs:
        os.environ["CONSERVIZ_OUTPUTS"] = str(args.outputs.resolve())
    settings = CourseSettings.from_env()
    artifacts = settings.artifacts

    started = time.perf_counter()
    run_notebooks(PROJECT_ROOT / "notebooks", artifacts.executed)
    minutes = (time.perf_counter() - started) / 60

    metrics = json.loads(artifacts.metrics.read_text())
    print()
    print(f"conserviz course finished in {minutes:.1f} min on {metrics['data']}")
    print(f"  eval accuracy : {metrics['accuracy']:.3f} (majority baseline {metrics['majority_accuracy']:.3f})")
    print(f"  eval log loss : {metrics['log_loss']:.3f} (uniform baseline {metrics['uniform_log_loss']:.3f})")
    print(f"  submission    : {artifacts.submission}")
    print(f"  notebooks     : {artifacts.executed}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
