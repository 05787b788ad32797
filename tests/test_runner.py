"""The headless runner of `make course`: it never hangs, stops on signals, and says what it does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from conserviz_utils.tools.course_progress import ProgressReporter, markdown_headings
from conserviz_utils.tools.kernels import likely_cause, stderr_tail
from conserviz_utils.tools.runner import (
    CORE_NOTEBOOKS,
    NotebookRunError,
    clear_outputs,
    course_notebooks,
    main,
    run_notebooks,
)

psutil = pytest.importorskip("psutil")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def write(folder: Path, name: str, *cells) -> Path:
    path = folder / f"{name}.ipynb"
    nbformat.write(new_notebook(cells=list(cells)), path)
    return path


def kernel_processes(parent: psutil.Process) -> list[psutil.Process]:
    """The ipykernel processes started by ``parent`` (and still alive)."""
    found = []
    for child in parent.children(recursive=True):
        try:
            if "ipykernel" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:
            pass
    return found


def runner_command(notebooks: Path, outputs: Path, *names: str) -> list[str]:
    return [sys.executable, "-m", "conserviz_utils.tools.runner", "--notebooks", str(notebooks),
            "--outputs", str(outputs), "--progress-interval", "0.5", *names]


def runner_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(PROJECT_ROOT))
    for name in list(env):
        if name.startswith("CONSERVIZ_"):
            del env[name]
    return env


# --- without kernels -----------------------------------------------------------------------------


def test_the_course_includes_notebook_07_once_it_exists(tmp_path):
    assert course_notebooks(tmp_path) == CORE_NOTEBOOKS
    write(tmp_path, "07_improve", new_code_cell("1"))
    assert course_notebooks(tmp_path) == (*CORE_NOTEBOOKS, "07_improve")


def test_the_likely_cause_follows_the_exit_status_memory_and_disk(tmp_path):
    cause, fix = likely_cause(-9, peak_memory=14e9, total_memory=16e9, disk_free=50e9, output_dir=tmp_path)
    assert "SIGKILL" in cause and "out of memory?" in cause and "14.0 GB" in cause and "BATCH_SIZE" in fix
    cause, fix = likely_cause(-9, peak_memory=1e9, total_memory=16e9, disk_free=10e6, output_dir=tmp_path)
    assert "disk full?" in cause and "10 MB free" in cause and str(tmp_path) in fix
    cause, _ = likely_cause(-7, disk_free=50e9, output_dir=tmp_path)
    assert "SIGBUS" in cause and "disk full?" in cause
    cause, _ = likely_cause(-11)
    assert "SIGSEGV" in cause
    cause, _ = likely_cause(3)
    assert "status 3" in cause


def test_the_cause_is_matched_to_the_exit_status_not_always_memory(tmp_path):
    # Status 1: an error of the kernel process itself, quoted from its stderr; memory is not blamed.
    cause, fix = likely_cause(1, peak_memory=1e9, total_memory=16e9, disk_free=50e9,
                              stderr="ImportError: no module named zmq")
    assert "status 1" in cause and "an error in the kernel process" in cause
    assert '"ImportError: no module named zmq"' in cause and "stderr" in fix
    assert "memory" not in cause + fix and "BATCH_SIZE" not in fix
    # SIGKILL from Python (-9) or from a shell (137): out of memory, most likely.
    for status in (-9, 137):
        cause, fix = likely_cause(status, stderr="")
        assert "SIGKILL" in cause and "out of memory?" in cause and "BATCH_SIZE" in fix
    # Other signals are named, with what the system calls them; other statuses are just said.
    cause, fix = likely_cause(-11, stderr="Fatal Python error: Segmentation fault")
    assert "SIGSEGV (Segmentation fault)" in cause and "Fatal Python error" in cause
    assert "memory" not in cause + fix
    assert "SIGABRT" in likely_cause(128 + signal.SIGABRT)[0]
    cause, fix = likely_cause(3)
    assert "status 3" in cause and "an error in the kernel" not in cause and "BATCH_SIZE" not in fix


def test_the_stderr_tail_keeps_the_last_lines(tmp_path):
    path = tmp_path / "kernel.stderr"
    path.write_text("Traceback (most recent call last):\n\n  File x\nValueError: boom\n")
    assert stderr_tail(path, lines=2) == "File x / ValueError: boom"
    assert stderr_tail(path, lines=2, width=10) == "…ror: boom"
    assert stderr_tail(tmp_path / "missing") == ""


def test_progress_bars_are_throttled_and_only_shown_for_long_cells():
    now = [0.0]
    lines = []
    reporter = ProgressReporter(lines.append, interval=5, heartbeat=60, clock=lambda: now[0])
    reporter.notebook_started("04_train", 4, 6, "Train")
    reporter.markdown("# Train\n```\n# not a heading\n```\n## Stage 1: embed")
    reporter.cell_started(5, "# comment\nembeddings = embed_images(model)")
    bar = "\rembeddings:  10%|#         | 10/100 [00:03<00:27,  3.00batch/s]"
    reporter.progress_text(bar)  # the cell has run for 0 s: a short cell shows no bar
    now[0] = 6
    # The kernel's stderr chunks cut lines anywhere: only whole lines are read.
    reporter.progress_text(bar + "\rembeddings:  20%|##        | 20/100 [00:06<00:24,  3.00batch/s]\rembedd")
    now[0] = 7
    reporter.progress_text(bar)  # 1 s after the last bar line: throttled
    now[0] = 80
    reporter.tick()
    assert lines == [
        "[course] running 04_train.ipynb (4/6): Train …",
        "[course]   § Stage 1: embed",
        "[course]     embeddings:  20%|##        | 20/100 [00:06<00:24,  3.00batch/s]",
        "[course]     … still running cell 6 (1 min): embeddings = embed_images(model)",
    ]
    assert markdown_headings("text\n### Deep ###\n#nospace") == [(3, "Deep")]


def test_clear_outputs_removes_what_an_earlier_run_stored():
    notebook = new_notebook(cells=[new_markdown_cell("# x"), new_code_cell("1", execution_count=4)])
    notebook.cells[1].outputs = [new_output("stream", name="stdout", text="old")]
    notebook.cells[1].metadata["execution"] = {"iopub.status.busy": "then"}
    notebook.metadata["widgets"] = {"state": {}}
    clear_outputs(notebook)
    cell = notebook.cells[1]
    assert cell.outputs == [] and cell.execution_count is None and "execution" not in cell.metadata
    assert "widgets" not in notebook.metadata


def test_there_is_no_cell_timeout_unless_asked(tmp_path):
    import inspect

    assert inspect.signature(run_notebooks).parameters["cell_timeout"].default is None
    write(tmp_path, "slow", new_code_cell("import time\ntime.sleep(4)"))
    with pytest.raises(NotebookRunError, match="cell timeout of 1 s"):
        run_notebooks(tmp_path, tmp_path / "executed", ["slow"], cell_timeout=1, write=lambda line: None)


# --- with real kernels ---------------------------------------------------------------------------


def test_a_run_streams_progress_and_leaves_no_kernel_behind(tmp_path):
    write(tmp_path, "a",
          new_markdown_cell("# A title\n## Counting with text bars"),
          new_code_cell("import sys, time\nfrom tqdm import tqdm\n"
                        "for _ in tqdm(range(30), file=sys.stderr, mininterval=0):\n    time.sleep(0.05)\n"
                        "open('ran-a', 'w').write('yes')"))
    write(tmp_path, "b",
          new_markdown_cell("## Counting with the notebook widget"),
          new_code_cell("import time\nfrom tqdm.auto import tqdm\n"
                        "for _ in tqdm(range(30), desc='widget bar', mininterval=0):\n    time.sleep(0.05)"))
    lines = []
    timings = run_notebooks(tmp_path, tmp_path / "out" / "executed", ["a", "b"], progress_interval=0.4,
                            write=lines.append)
    assert [name for name, _ in timings] == ["a", "b"]
    assert (tmp_path / "ran-a").read_text() == "yes"  # the kernel runs in the notebooks' folder
    text = "\n".join(lines)
    assert "running a.ipynb (1/2): A title" in text and "running b.ipynb (2/2)" in text
    assert "§ Counting with text bars" in text and "§ Counting with the notebook widget" in text
    bars = [line for line in lines if "%|" in line]
    assert any("/30 [" in line and "<" in line for line in bars if "widget bar" not in line), lines  # ETA shown
    assert any("widget bar" in line and "/30 [" in line for line in bars), lines
    assert not kernel_processes(psutil.Process())  # shut down after each notebook


def test_a_failed_copy_shows_only_this_runs_outputs(tmp_path):
    path = write(tmp_path, "f", new_code_cell("print('fresh')"), new_code_cell("1 / 0"),
                 new_code_cell("print('never runs')"))
    stored = nbformat.read(path, as_version=4)
    for cell in stored.cells:  # outputs committed from an earlier run
        cell.outputs = [new_output("stream", name="stdout", text="stale\n")]
        cell.execution_count = 7
    nbformat.write(stored, path)
    with pytest.raises(NotebookRunError, match="cell 2 failed.*ZeroDivisionError") as excinfo:
        run_notebooks(tmp_path, tmp_path / "executed", ["f"], write=lambda line: None)
    assert excinfo.value.notebook == "f" and excinfo.value.cell_index == 1
    executed = nbformat.read(tmp_path / "executed" / "f.ipynb", as_version=4)
    assert [o.get("text") for o in executed.cells[0].outputs] == ["fresh\n"]
    assert executed.cells[1].outputs[-1]["ename"] == "ZeroDivisionError"
    assert executed.cells[2].outputs == [] and executed.cells[2].execution_count is None


def test_a_killed_kernel_ends_the_run_within_seconds_naming_notebook_cell_and_cause(tmp_path):
    notebooks, outputs = tmp_path / "notebooks", tmp_path / "outputs"
    notebooks.mkdir()
    write(notebooks, "dies", new_markdown_cell("## The end"),
          new_code_cell("import os\nos.kill(os.getpid(), 9)"), new_code_cell("print('after')"))
    started = time.monotonic()
    result = subprocess.run(runner_command(notebooks, outputs, "dies"), capture_output=True, text=True,
                            timeout=120, env=runner_env())
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert "dies.ipynb" in result.stderr and "cell 2" in result.stderr and "The end" in result.stderr
    assert "the kernel died" in result.stderr and "SIGKILL" in result.stderr and "out of memory?" in result.stderr
    assert "Traceback" not in result.stderr and "Parent appears to have exited" not in result.stderr
    executed = nbformat.read(outputs / "executed" / "dies.ipynb", as_version=4)
    assert executed.cells[1].outputs[-1]["ename"] == "DeadKernelError"


def test_a_kernel_that_exits_with_status_1_is_named_with_its_stderr_not_memory(tmp_path):
    write(tmp_path, "exits", new_code_cell("print('fine')"), new_code_cell(
        "import os, sys\nsys.__stderr__.write('RuntimeError: the kernel broke by itself\\n')\n"
        "sys.__stderr__.flush()\nos._exit(1)"))
    started = time.monotonic()
    with pytest.raises(NotebookRunError) as excinfo:
        run_notebooks(tmp_path, tmp_path / "out" / "executed", ["exits"], write=lambda line: None)
    assert time.monotonic() - started < 60
    message = str(excinfo.value)
    assert "the kernel died while running cell 2" in message and "status 1" in message
    assert "an error in the kernel process" in message and "the kernel broke by itself" in message
    assert "memory" not in message and excinfo.value.cell_index == 1
    executed = nbformat.read(tmp_path / "out" / "executed" / "exits.ipynb", as_version=4)
    assert executed.cells[1].outputs[-1]["ename"] == "DeadKernelError"
    assert not kernel_processes(psutil.Process())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_promptly_and_shuts_every_kernel_down(tmp_path, signum):
    notebooks, outputs = tmp_path / "notebooks", tmp_path / "outputs"
    notebooks.mkdir()
    # Like fit, the cell stops cleanly on the interrupt; the runner must still not go on.
    write(notebooks, "sleeps",
          new_code_cell("import time\nopen('started', 'w').close()\ntry:\n    time.sleep(60)\n"
                        "except KeyboardInterrupt:\n    open('interrupted', 'w').close()"),
          new_code_cell("open('never-ran', 'w').close()"))
    write(notebooks, "never", new_code_cell("open('never-ran', 'w').close()"))
    runner = subprocess.Popen(runner_command(notebooks, outputs, "sleeps", "never"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=runner_env())
    try:
        deadline = time.monotonic() + 60
        while not (notebooks / "started").exists():
            assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
            time.sleep(0.1)
        kernels = kernel_processes(psutil.Process(runner.pid))
        assert len(kernels) == 1
        sent = time.monotonic()
        runner.send_signal(signum)
        stdout, stderr = runner.communicate(timeout=30)
        assert time.monotonic() - sent < 10
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert runner.returncode == 128 + signum
    assert f"stopped by {signal.Signals(signum).name} in sleeps.ipynb" in stderr
    assert "Nothing to resume" in stderr  # no fine-tuning state in this output folder
    assert (notebooks / "interrupted").exists()  # the kernel was interrupted first (training saves)
    assert not (notebooks / "never-ran").exists()
    for kernel in kernels:
        assert not kernel.is_running() or kernel.status() == psutil.STATUS_ZOMBIE


def test_main_prints_the_summary_and_the_kernels_are_gone_before_it(tmp_path, capsys, monkeypatch):
    notebooks, outputs = tmp_path / "notebooks", tmp_path / "outputs"
    notebooks.mkdir()
    metrics = {"data": "test data", "accuracy": 0.5, "majority_accuracy": 0.25, "log_loss": 1.5,
               "uniform_log_loss": 2.079}
    write(notebooks, "m", new_code_cell(
        f"import json, os\nopen(os.path.join(os.environ['CONSERVIZ_OUTPUTS'], 'metrics.json'), 'w')"
        f".write(json.dumps({metrics!r}))"))
    outputs.mkdir()
    (outputs / "features").mkdir()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    leftover = outputs / "features" / f"resnet50-abc.npy.{dead}.partial"  # a killed run's
    leftover.write_bytes(b"\0" * 2_000_000)
    for name in [n for n in os.environ if n.startswith("CONSERVIZ_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONSERVIZ_OUTPUTS", str(outputs))  # main sets it too; undone after the test
    assert main(["--notebooks", str(notebooks), "--outputs", str(outputs), "m"]) == 0
    out = capsys.readouterr().out
    assert "eval log loss : 1.500 (uniform baseline 2.079)" in out and "on test data" in out
    assert "removed 1 leftover(s) of killed runs" in out and "(2 MB)" in out and not leftover.exists()
    assert not kernel_processes(psutil.Process())
    assert json.loads((outputs / "metrics.json").read_text()) == metrics


def test_after_a_stop_the_runner_says_how_to_resume_only_when_fine_tuning_saved_this_run(tmp_path):
    from conserviz_utils.tools.runner import resume_hint

    state = tmp_path / "fine_tune_resume.pt"
    assert resume_hint(state).startswith("Nothing to resume")
    state.write_bytes(b"state")
    written = state.stat().st_mtime
    hint = resume_hint(state, since=written - 1)
    assert str(state) in hint and "04_train" in hint
    # What notebook 04's fine-tuning cell calls, and the argument that makes it carry on.
    assert "`fine_tune(..., resume_path=artifacts.resume)`" in hint and "`resume=True`" in hint
    assert "resume_from" not in hint and "`fit` call" not in hint
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "04_train.ipynb", as_version=4)
    assert any("fine_tune(" in cell.source and "resume_path=artifacts.resume" in cell.source
               for cell in notebook.cells if cell.cell_type == "code"), "the hint names a call 04 no longer makes"
    assert resume_hint(state, since=written + 60).startswith("Nothing to resume")  # an older run's state
