"""The runner's kernels: memory watched once a second, interrupted then killed, and why one died.

The likely cause of a death comes from the exit status, the peak memory, the free disk and the
last lines the kernel wrote to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from conserviz_utils.tools.course_progress import ProgressReporter

__all__ = [
    "KernelWatch", "StopRequest", "find_kernel_process", "kill_process_group", "likely_cause", "shut_down",
    "size_text", "stderr_tail", "stop_kernel", "watch_kernel", "why_it_died",
]

# A disk with less free space than this when a kernel dies is the likely culprit.
LOW_DISK_BYTES = 512 * 1024**2
# A kernel that used more than this share of the machine's memory when it was killed ran out of it.
HIGH_MEMORY_SHARE = 0.75


def likely_cause(exit_code: int | None, *, peak_memory: int | None = None, total_memory: int | None = None,
                 disk_free: int | None = None, output_dir: Path | None = None, stderr: str = "") -> tuple[str, str]:
    """(cause, fix) of a kernel's death, matched to its exit status (negative: the signal that ended it).

    SIGKILL (-9, or 137 from a shell) is most often the system running out of memory (or a full
    disk, when the kernel used little memory and the disk is nearly full); SIGBUS a full disk under
    a memory-mapped file; status 1 an error of the kernel process, which ``stderr`` (`stderr_tail`)
    shows; any other signal or status is named as it is, never blamed on memory. Sizes are in bytes.
    """
    memory = ""
    if peak_memory and total_memory:
        memory = f" (at its peak it used {size_text(peak_memory)} of the machine's {size_text(total_memory)})"
    low_disk = disk_free is not None and disk_free < LOW_DISK_BYTES
    disk = f"the disk of {output_dir} has only {disk_free / 1e6:.0f} MB free" if low_disk else ""
    memory_fix = "lower CONSERVIZ_BATCH_SIZE (e.g. 16), close other programs, or use a machine with more memory"
    disk_fix = f"free some disk space on the drive of {output_dir} (`make clean` removes the caches)"
    jupyter_fix = "run the notebook in Jupyter to see where it stops"
    said = f'; its stderr ended with "{stderr}"' if stderr else ""
    signum = signal_of(exit_code)

    if signum == signal.SIGKILL:
        high = peak_memory and total_memory and peak_memory > HIGH_MEMORY_SHARE * total_memory
        if low_disk and not high:
            return f"it was killed (SIGKILL); {disk}: disk full?", disk_fix
        cause = f"it was killed (SIGKILL), most often by the system running out of memory{memory}: out of memory?"
        return cause, memory_fix
    if signum is not None and signum == getattr(signal, "SIGBUS", None):
        cause = "it crashed with SIGBUS, which usually means a full disk under a memory-mapped file"
        return cause + (f"; {disk}" if disk else "") + ": disk full?", disk_fix
    if low_disk:
        return f"it ended with status {exit_code}; {disk}: disk full?", disk_fix
    if signum is not None:
        try:
            name = f"{signal.Signals(signum).name} ({signal.strsignal(signum)})"
        except ValueError:
            name = str(signum)
        return f"it was ended by signal {name}{said}", jupyter_fix
    if exit_code is None:
        return f"its exit status could not be read{said}", jupyter_fix
    if exit_code == 1:
        return (
            f"it exited with status 1: an error in the kernel process itself{said}",
            ("its stderr, quoted here, says what failed; " if stderr else "") + jupyter_fix,
        )
    return f"it exited with status {exit_code}{said}", jupyter_fix


def signal_of(exit_code: int | None) -> int | None:
    """The signal that ended a process: -N from Python's subprocess, 128 + N from a shell."""
    if exit_code is None:
        return None
    if exit_code < 0:
        return -exit_code
    return exit_code - 128 if 128 < exit_code < 128 + signal.NSIG else None


def stderr_tail(path: Path, lines: int = 3, width: int = 300) -> str:
    """The last non-empty lines of a kernel's stderr file, joined by " / " (at most ``width`` characters)."""
    try:
        with open(path, "rb") as file:
            file.seek(max(file.seek(0, os.SEEK_END) - 16_384, 0))
            text = file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    tail = " / ".join([line.strip() for line in text.splitlines() if line.strip()][-lines:])
    return tail if len(tail) <= width else "…" + tail[1 - width :]


def size_text(n_bytes: float) -> str:
    """A size in MB below a gigabyte, in GB above."""
    return f"{n_bytes / 1e6:.0f} MB" if n_bytes < 1e9 else f"{n_bytes / 1e9:.1f} GB"


def kernel_memory(pid: int | None) -> int | None:
    """The resident memory of a kernel and its child processes (DataLoader workers), in bytes."""
    if pid is None:
        return None
    try:
        import psutil
    except ImportError:  # psutil comes with ipykernel; without it the message just says less
        return None
    try:
        process = psutil.Process(pid)
        processes = [process, *process.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for member in processes:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def total_memory() -> int | None:
    """The machine's memory in bytes, where it can be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def kill_process_group(pgid: int | None) -> None:
    """SIGKILL a kernel's process group (the kernel and its workers); gone already is fine."""
    if pgid is None or not hasattr(os, "killpg"):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class StopRequest:
    """What the signal handler asked for: which signal, and whether to stop at once."""

    signum: int | None = None
    immediate: bool = False
    event: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class KernelWatch:
    """What the runner knows of the running kernel: its process, its peak memory."""

    manager: object | None = None
    pid: int | None = None
    pgid: int | None = None
    peak_memory: int | None = None
    done: bool = False


def find_kernel_process(watch: KernelWatch) -> None:
    """Fill in the kernel's pid and process group once its manager has started it."""
    if watch.pid is None and watch.manager is not None:
        provisioner = getattr(watch.manager, "provisioner", None)
        watch.pid = getattr(provisioner, "pid", None)
        watch.pgid = getattr(provisioner, "pgid", None)


async def watch_kernel(watch: KernelWatch, reporter: ProgressReporter, period: float = 1.0) -> None:
    """Sample the kernel's memory and let the reporter say "still running", about once a second."""
    while not watch.done:
        find_kernel_process(watch)
        memory = await asyncio.to_thread(kernel_memory, watch.pid)
        if memory is not None:
            watch.peak_memory = max(watch.peak_memory or 0, memory)
        reporter.tick()
        await asyncio.sleep(period)


async def stop_kernel(watch: KernelWatch, stop: StopRequest, grace: float) -> None:
    """Interrupt the kernel (training saves its state at the next batch), then kill it after ``grace`` s."""
    manager = watch.manager
    if manager is not None and not stop.immediate:
        with contextlib.suppress(Exception):  # a kernel that is starting or gone cannot be interrupted
            await manager.interrupt_kernel()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.event.wait(), timeout=grace)
    if not watch.done:
        find_kernel_process(watch)
        kill_process_group(watch.pgid)


async def shut_down(client, manager, watch: KernelWatch, now: bool) -> None:
    """Stop the kernel client's channels and the kernel itself (with its process group)."""
    with contextlib.suppress(Exception):
        if client.kc is not None:
            client.kc.stop_channels()
    try:
        if manager.has_kernel:
            await asyncio.wait_for(manager.shutdown_kernel(now=now), timeout=15)
    except Exception:  # a kernel that will not stop is killed, whatever state it is in
        kill_process_group(watch.pgid)
        with contextlib.suppress(Exception):
            await manager.shutdown_kernel(now=True)
    kill_process_group(watch.pgid)  # DataLoader workers a killed kernel may have left behind


async def why_it_died(watch: KernelWatch, output_dir: Path, stderr_file: Path, *, dead: bool = False):
    """`likely_cause` of a kernel that exited (or is known ``dead``), from the machine; else None."""
    exit_code = None
    find_kernel_process(watch)
    if watch.pid is not None:  # without a process the provisioner answers 0
        with contextlib.suppress(Exception):
            exit_code = await watch.manager.provisioner.poll()
    if exit_code is None and not dead:
        return None
    disk_free = None
    with contextlib.suppress(OSError):
        disk_free = shutil.disk_usage(output_dir if output_dir.exists() else stderr_file.parent).free
    return likely_cause(exit_code, peak_memory=watch.peak_memory, total_memory=total_memory(), disk_free=disk_free,
                        output_dir=output_dir, stderr=stderr_tail(stderr_file))
