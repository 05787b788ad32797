"""The headless runner of ``make course``: each notebook in a fresh nbclient kernel, and it never hangs.

``python -m conserviz_utils.tools.runner`` runs the course notebooks in order, keeps the executed copies
(cleared of stored outputs first) under ``outputs/executed/`` and prints the headline figures.

- **A dead kernel ends the run within seconds** (nbclient's liveness check, with an ``AsyncKernelManager``),
  naming the notebook, the cell and the likely cause (:mod:`conserviz_utils.tools.kernels`). There is no
  per-cell timeout by default: a long fine-tuning epoch is not a failure.
- **Ctrl-C and SIGTERM stop it promptly**: the kernel is interrupted (training saves its state at the
  next batch), killed 30 s later or at a second signal. Every kernel is shut down.
- **It says what it is doing**: notebooks, section headings, throttled progress bars with their ETA
  (:mod:`conserviz_utils.tools.course_progress`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from conserviz_utils.course.embedding_cache import remove_stale_partials
from conserviz_utils.errors import ConservizError
from conserviz_utils.files.fileio import atomic_write_text
from conserviz_utils.tools.course_progress import ProgressReporter, cell_label, first_line, markdown_headings
from conserviz_utils.tools.kernels import (
    KernelWatch, StopRequest, find_kernel_process, shut_down, size_text, stop_kernel, watch_kernel, why_it_died,
)

__all__ = ["CORE_NOTEBOOKS", "CourseStopped", "NotebookRunError", "clear_outputs", "course_notebooks", "main",
           "run_notebooks"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"

#: The course notebooks, in the order they run.
CORE_NOTEBOOKS = ("01_explore", "02_split", "03_model", "04_train", "05_evaluate", "06_submit")
#: Notebooks that run after the core ones when they exist.
OPTIONAL_NOTEBOOKS = ("07_improve",)


def course_notebooks(notebooks_dir: str | os.PathLike = NOTEBOOKS_DIR) -> tuple[str, ...]:
    """The notebooks ``make course`` runs: the six core ones, then the optional ones that exist."""
    folder = Path(notebooks_dir)
    return CORE_NOTEBOOKS + tuple(name for name in OPTIONAL_NOTEBOOKS if (folder / f"{name}.ipynb").is_file())


class NotebookRunError(ConservizError):
    """A notebook of the course failed: a cell raised, its kernel died, or a cell timed out."""

    def __init__(self, problem: str, *, notebook: str, cell_index: int | None = None, **kwargs) -> None:
        super().__init__(problem, **kwargs)
        self.notebook, self.cell_index = notebook, cell_index


class CourseStopped(Exception):
    """The run was stopped by SIGINT (Ctrl-C) or SIGTERM; every kernel has been shut down."""

    def __init__(self, signum: int, notebook: str | None, cell_index: int | None) -> None:
        name = signal.Signals(signum).name
        where = ""
        if notebook:
            where = f" in {notebook}.ipynb" + (f" ({cell_label(cell_index)})" if cell_index is not None else "")
        super().__init__(f"stopped by {name}{where}")
        self.signum, self.notebook, self.cell_index = signum, notebook, cell_index

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + the signal number."""
        return 128 + int(self.signum)


def clear_outputs(notebook) -> None:
    """Remove every stored output, execution count and widget state from a notebook, in place."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
    notebook.metadata.pop("widgets", None)


def course_client_class():
    """The nbclient ``NotebookClient`` subclass the runner uses (nbclient is imported lazily)."""
    from nbclient import NotebookClient

    class CourseClient(NotebookClient):
        """nbclient's client, reporting progress; the runner owns the kernel's signals and shutdown."""

        def __init__(self, nb, km, *, reporter: ProgressReporter, stop: StopRequest, **kwargs) -> None:
            super().__init__(nb, km=km, **kwargs)
            self.reporter = reporter
            self.stop = stop
            self.current_cell: int | None = None
            self.bar_of_widget: dict[str, str] = {}  # widget id → id of the tqdm box holding it

        @asynccontextmanager
        async def async_setup_kernel(self, **kwargs):
            """Start the kernel and its client; unlike nbclient's, install no signal handlers."""
            if not self.km.has_kernel:
                await self.async_start_new_kernel(**kwargs)
            if self.kc is None:
                await self.async_start_new_kernel_client()
            yield

        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            if self.stop.signum is not None:
                raise CourseStopped(self.stop.signum, self.reporter.notebook, self.current_cell)
            if cell.cell_type == "markdown":
                self.reporter.markdown(cell.source)
            elif cell.cell_type == "code" and cell.source.strip():
                self.current_cell = cell_index
                self.reporter.cell_started(cell_index, cell.source)
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)

        def output(self, outs, msg, display_id, cell_index):
            if msg["msg_type"] == "stream" and msg["content"].get("name") == "stderr":
                self.reporter.progress_text(msg["content"].get("text", ""))
            return super().output(outs, msg, display_id, cell_index)

        def handle_comm_msg(self, outs, msg, cell_index):
            super().handle_comm_msg(outs, msg, cell_index)
            data = msg["content"].get("data") or {}
            state = data.get("state") or {}
            comm_id = msg["content"].get("comm_id")
            # tqdm's notebook bar is a box of [description, bar, counts and ETA] widgets.
            for child in state.get("children") or []:
                if isinstance(child, str):
                    self.bar_of_widget[child.removeprefix("IPY_MODEL_")] = comm_id
            # tqdm updates the counts and ETA last: the box's text is whole once they change.
            box = self.bar_of_widget.get(comm_id)
            children = self.widget_state.get(box, {}).get("children") or [] if box else []
            if isinstance(state.get("value"), str) and children and str(children[-1]).endswith(comm_id):
                self.reporter.bar(self.widget_bar_text(children))

        def widget_bar_text(self, children: list) -> str:
            """The text of a tqdm notebook bar: its description and its counts with the ETA."""
            parts = []
            for child in children:
                value = self.widget_state.get(str(child).removeprefix("IPY_MODEL_"), {}).get("value")
                if isinstance(value, str) and value.strip():
                    # tqdm pads with figure spaces (U+2007) so the widget's digits line up.
                    parts.append(html.unescape(value).replace("\u2007", " ").replace("\xa0", " ").strip())
            return "| ".join(parts)

    return CourseClient


async def run_one(name: str, position: int, total: int, notebooks_dir: Path, executed_dir: Path, output_dir: Path,
                  sockets: Path, reporter: ProgressReporter, stop: StopRequest, watch: KernelWatch,
                  cell_timeout: float | None) -> float:
    """Execute one notebook in a fresh kernel and save its executed copy; returns the seconds."""
    import nbformat
    from jupyter_client.manager import AsyncKernelManager
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    source = notebooks_dir / f"{name}.ipynb"
    executed = executed_dir / f"{name}.ipynb"
    try:
        notebook = nbformat.read(source, as_version=4)
    except (OSError, ValueError) as err:
        raise NotebookRunError(
            f"cannot read this notebook ({err})", notebook=name, path=source, fix="restore it from git"
        ) from None
    clear_outputs(notebook)
    # Atomic, and written now: a run killed from outside leaves a copy with no stale outputs.
    atomic_write_text(executed, nbformat.writes(notebook), what="executed notebook")
    title = next((text for cell in notebook.cells if cell.cell_type == "markdown"
                  for level, text in markdown_headings(cell.source) if level == 1), None)
    reporter.notebook_started(name, position, total, title)

    # Local sockets, not TCP: nothing listens on the network, and the kernel does not warn.
    manager = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(sockets / name))
    client = course_client_class()(notebook, manager, reporter=reporter, stop=stop, timeout=cell_timeout,
                                   resources={"metadata": {"path": str(notebooks_dir)}})
    watch.manager, watch.pid, watch.pgid, watch.peak_memory, watch.done = manager, None, None, None, False
    monitor = asyncio.ensure_future(watch_kernel(watch, reporter))
    started = time.perf_counter()
    failed = True
    stderr_file = sockets / f"{name}.stderr"  # the kernel process's own, read when it dies
    try:
        with open(stderr_file, "wb") as kernel_stderr:
            await client.async_execute(stderr=kernel_stderr)
        failed = False
    except CourseStopped:
        raise
    except Exception as error:
        if stop.signum is not None:  # the interrupt or the kill we sent surfaced as a cell error
            raise CourseStopped(stop.signum, name, client.current_cell) from None
        cell = client.current_cell
        where = cell_label(cell) if cell is not None else "its start"
        if cell is not None and reporter.section:
            where += f" (section {reporter.section!r})"
        line = first_line(notebook.cells[cell].source) if cell is not None else ""
        died = None  # a kernel that exited died, whatever nbclient raised (it may never have started)
        if not isinstance(error, CellExecutionError | CellTimeoutError):
            dead = isinstance(error, DeadKernelError)
            died = await why_it_died(watch, output_dir, stderr_file, dead=dead)
        if died is not None:
            cause, fix = died
            if cell is not None:
                notebook.cells[cell].outputs.append(nbformat.v4.new_output(
                    "error", ename="DeadKernelError", evalue=f"the kernel died: {cause}", traceback=[]
                ))
            problem = f"the kernel died while running {where}: `{line}`; {cause}"
        elif isinstance(error, CellTimeoutError):
            problem = f"{where} ran longer than the cell timeout of {cell_timeout:.0f} s: `{line}`"
            fix = "run without --cell-timeout (there is none by default)"
        elif isinstance(error, CellExecutionError):
            problem = f"{where} failed: `{line}`: {error.ename}: {error.evalue}"
            fix = "the executed copy shows the full traceback"
        else:
            problem = f"the kernel could not run {where}: {type(error).__name__}: {error}"
            fix = "run `make course` again; if it repeats, run the notebook in Jupyter"
        raise NotebookRunError(f"{problem}{' ' if problem.endswith('?') else '. '}The executed copy is {executed}",
                               notebook=name, cell_index=cell, path=source, fix=fix) from None
    finally:
        find_kernel_process(watch)
        watch.done = True
        stop.event.set()
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        await shut_down(client, manager, watch, now=failed)
        watch.manager = None
        stop.event = asyncio.Event()
        with contextlib.suppress(ConservizError):
            atomic_write_text(executed, nbformat.writes(notebook), what="executed notebook")
    seconds = time.perf_counter() - started
    reporter.notebook_done(name, seconds)
    return seconds


async def run_all(notebooks_dir: Path, executed_dir: Path, names: Sequence[str], output_dir: Path,
                  reporter: ProgressReporter, cell_timeout: float | None, stop_grace: float) -> list[tuple[str, float]]:
    """Run the notebooks one after the other, with SIGINT and SIGTERM stopping the whole run."""
    stop, watch = StopRequest(), KernelWatch()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.signum is None:
            stop.signum = signum
            reporter.line(
                f"{signal.Signals(signum).name}: stopping — the kernel gets {stop_grace:.0f} s to stop at a safe "
                "point (training saves its state); press Ctrl-C again to stop at once"
            )
        else:
            stop.immediate = True
            reporter.line("stopping at once")
        asyncio.ensure_future(stop_kernel(watch, stop, stop_grace))

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread, or Windows
            pass
    sockets = tempfile.TemporaryDirectory(prefix="conserviz-kernels-")
    timings = []
    try:
        for position, name in enumerate(names, start=1):
            if stop.signum is not None:
                raise CourseStopped(stop.signum, None, None)
            seconds = await run_one(
                name, position, len(names), notebooks_dir, executed_dir, output_dir, Path(sockets.name),
                reporter, stop, watch, cell_timeout,
            )
            timings.append((name, seconds))
        if stop.signum is not None:
            raise CourseStopped(stop.signum, None, None)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        sockets.cleanup()
    return timings


def run_notebooks(
    notebooks_dir: str | os.PathLike,
    executed_dir: str | os.PathLike,
    names: Sequence[str] | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    cell_timeout: float | None = None,
    progress_interval: float = 5.0,
    heartbeat: float = 60.0,
    stop_grace: float = 30.0,
    write: Callable[[str], None] | None = None,
) -> list[tuple[str, float]]:
    """Execute each notebook in a fresh kernel (run in ``notebooks_dir``), in order; returns (name, seconds) each.

    Args:
        names: Notebook names without ``.ipynb``; default: :func:`course_notebooks`.
        output_dir: Checked for free space when a kernel dies; default: the parent of ``executed_dir``.
        cell_timeout: Seconds a cell may run; None (the default) for no limit.
        heartbeat: Seconds of silence before a "still running" line.
        stop_grace: Seconds an interrupted kernel gets before it is killed.
        write: Receives each progress line (default: printed).

    Raises:
        NotebookRunError: a cell failed, the kernel died (with the likely cause) or a cell timed out.
        CourseStopped: SIGINT or SIGTERM stopped the run.
    """
    notebooks_dir, executed_dir = Path(notebooks_dir).resolve(), Path(executed_dir)
    names = tuple(names) if names is not None else course_notebooks(notebooks_dir)
    output_dir = Path(output_dir) if output_dir is not None else executed_dir.parent
    reporter = ProgressReporter(write, interval=progress_interval, heartbeat=heartbeat)
    return asyncio.run(run_all(notebooks_dir, executed_dir, names, output_dir, reporter, cell_timeout, stop_grace))


def resume_hint(resume_path: Path, since: float = 0.0) -> str:
    """How to carry on after a stop, depending on whether fine-tuning saved its state since ``since``."""
    saved = False
    with contextlib.suppress(OSError):
        saved = resume_path.is_file() and resume_path.stat().st_mtime >= since
    if saved:
        return (
            f"Fine-tuning saved its state in {resume_path}. To carry on from there, open "
            "notebooks/04_train.ipynb, add `resume=True` to the "
            "`fine_tune(..., resume_path=artifacts.resume)` call of its fine-tuning cell and run "
            "the notebook from the top (the cached embeddings are reused). "
            "`make course` starts the notebooks again instead."
        )
    return "Nothing to resume: `make course` starts again (the cached embeddings are reused)."


def report_leftovers(output_dir: Path) -> None:
    """Remove what killed runs left in the output folder (partial caches, temp files) and say so."""
    sizes = {}
    for path in Path(output_dir).rglob("*") if Path(output_dir).is_dir() else []:
        if path.name.endswith((".partial", ".tmp")):
            with contextlib.suppress(OSError):
                sizes[path] = path.stat().st_size
    if not sizes:
        return
    removed = remove_stale_partials(output_dir, recursive=True)
    if removed:
        freed = sum(sizes.get(path, 0) for path in removed)
        print(f"[course] removed {len(removed)} leftover(s) of killed runs from {output_dir} ({size_text(freed)})",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the whole course headless and print eval accuracy, log loss and the submission path."""
    parser = argparse.ArgumentParser(
        prog="python -m conserviz_utils.tools.runner",
        description="Run the course notebooks headless (what `make course` does).",
    )
    parser.add_argument("--quick", action="store_true", help="small sample, one short epoch")
    parser.add_argument("--data", type=Path, help="competition data folder (else the sample)")
    parser.add_argument("--outputs", type=Path, help="output folder (default: outputs/)")
    parser.add_argument("--cell-timeout", type=float, default=None,
                        help="seconds a cell may run (default: no limit; a dead kernel is noticed anyway)")
    parser.add_argument("--progress-interval", type=float, default=5.0,
                        help="seconds between two progress-bar lines (default: 5)")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS_DIR,
                        help="folder of the notebooks (default: the course's)")
    parser.add_argument("names", nargs="*", metavar="NOTEBOOK",
                        help="notebooks to run, e.g. 04_train (default: the whole course, in order)")
    args = parser.parse_args(argv)

    # The kernels inherit this process's environment: that is how the notebooks see the choices.
    if args.quick:
        os.environ["CONSERVIZ_QUICK"] = "1"
    if args.data:
        os.environ["CONSERVIZ_DATA"] = str(args.data.resolve())
    if args.outputs:
        os.environ["CONSERVIZ_OUTPUTS"] = str(args.outputs.resolve())
    from conserviz_utils.course.settings import CourseSettings

    try:
        settings = CourseSettings.from_env()
    except (ValueError, ConservizError) as err:
        print(f"[course] {err}", file=sys.stderr)
        return 2
    artifacts = settings.artifacts
    report_leftovers(settings.output_dir)

    started, started_at = time.perf_counter(), time.time()
    try:
        run_notebooks(args.notebooks, artifacts.executed, [name.removesuffix(".ipynb") for name in args.names] or None,
                      output_dir=settings.output_dir, cell_timeout=args.cell_timeout,
                      progress_interval=args.progress_interval)
    except NotebookRunError as err:
        print(f"[course] FAILED: {err}", file=sys.stderr, flush=True)
        return 1
    except CourseStopped as stopped:
        print(f"[course] {stopped}; every kernel is shut down.", file=sys.stderr)
        print(f"[course] {resume_hint(artifacts.resume, since=started_at)}", file=sys.stderr, flush=True)
        return stopped.exit_code
    minutes = (time.perf_counter() - started) / 60
    metrics = None  # the headline figures notebook 05 saved, unless missing or unreadable
    with contextlib.suppress(OSError, ValueError):
        metrics = json.loads(artifacts.metrics.read_text())
    metrics = metrics if isinstance(metrics, dict) else None
    print()
    if args.names and metrics is None:  # a partial run need not have reached notebook 05
        print(f"conserviz: {len(args.names)} notebook(s) run in {minutes:.1f} min; "
              f"executed copies in {artifacts.executed}/")
        return 0
    if metrics is None:
        print(f"conserviz course finished in {minutes:.1f} min; {artifacts.metrics} is missing or unreadable")
        return 1
    print(f"conserviz course finished in {minutes:.1f} min on {metrics.get('data', 'the data')}")
    with contextlib.suppress(KeyError, TypeError, ValueError):
        print(f"  eval accuracy : {metrics['accuracy']:.3f} (majority baseline {metrics['majority_accuracy']:.3f})")
        print(f"  eval log loss : {metrics['log_loss']:.3f} (uniform baseline {metrics['uniform_log_loss']:.3f})")
    print(f"  submission    : {artifacts.submission}")
    print(f"  notebooks     : {artifacts.executed}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
