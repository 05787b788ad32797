"""What the headless course runner prints: notebooks, section headings and throttled progress bars."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

__all__ = ["ProgressReporter", "cell_label", "first_line", "markdown_headings"]

# tqdm's text bar ("embeddings:  45%|####5     | 45/100 [00:10<00:12, 4.50batch/s]"): its
# percentage and bar, or its counts ("45/100 [", also what the notebook widget shows beside its
# bar), or a bar without a total ("45batch [00:10").
_PROGRESS_BAR = re.compile(
    r"\d+%\|"
    r"|\d+(?:\.\d+)?[kMG]?/\d+(?:\.\d+)?[kMG]?\s*\["
    r"|\d+(?:\.\d+)?[kMG]?\w*\s*\[\d+:\d+"
)
_HEADING = re.compile(r"^(#{1,3})\s+(.+?)\s*#*\s*$")


def markdown_headings(source: str) -> list[tuple[int, str]]:
    """The (level, text) of the level-1 to 3 headings of a markdown cell, code fences skipped."""
    headings, fenced = [], False
    for line in source.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            headings.append((len(match.group(1)), match.group(2)))
    return headings


def cell_label(index: int) -> str:
    """How the messages name a cell: counted from 1, as a reader counts them."""
    return f"cell {index + 1}"


def first_line(source: str, width: int = 70) -> str:
    """The first non-empty, non-comment line of a cell, shortened to ``width`` characters."""
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    code = [line for line in lines if not line.startswith("#")] or lines or [""]
    text = code[0]
    return text if len(text) <= width else text[: width - 1] + "…"


class ProgressReporter:
    """Turns the runner's cells, stderr and progress widgets into ``[course]`` lines.

    Args:
        write: Called with each line (default: print to stdout, flushed).
        interval: Seconds between two progress-bar lines; a cell shorter than this shows none.
        heartbeat: Seconds of silence in a running cell before a "still running" line.
    """

    def __init__(self, write: Callable[[str], None] | None = None, interval: float = 5.0, heartbeat: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write = write or (lambda line: print(line, flush=True))
        self.interval, self.heartbeat, self.clock = interval, heartbeat, clock
        self.notebook: str | None = None
        self.section: str | None = None
        self.cell_index: int | None = None
        self.cell_source = self.unfinished_line = ""
        self.cell_start_time = self.last_line = clock()
        self.last_bar = float("-inf")

    def line(self, text: str) -> None:
        self.last_line = self.clock()
        self.write(f"[course] {text}")

    def notebook_started(self, name: str, position: int, total: int, title: str | None) -> None:
        self.notebook, self.section, self.cell_index = name, None, None
        self.line(f"running {name}.ipynb ({position}/{total})" + (f": {title}" if title else "") + " …")

    def notebook_done(self, name: str, seconds: float) -> None:
        self.line(f"{name}.ipynb done in {seconds:.0f} s")

    def markdown(self, source: str) -> None:
        """Report the section headings of a markdown cell (the notebook's title is skipped)."""
        for level, text in markdown_headings(source):
            self.section = text
            if level > 1:
                self.line(f"  § {text}")

    def cell_started(self, index: int, source: str) -> None:
        self.cell_index, self.cell_source = index, source
        self.cell_start_time = self.clock()
        self.unfinished_line = ""

    def progress_text(self, text: str) -> None:
        """Forward the latest progress bar in ``text`` (a chunk of stderr), throttled.

        Chunks may cut a line anywhere: only lines ended by tqdm's carriage return or a newline are read.
        """
        pieces = re.split(r"[\r\n]", self.unfinished_line + text)
        self.unfinished_line = pieces.pop()[-2000:]
        bars = [piece.strip() for piece in pieces if _PROGRESS_BAR.search(piece)]
        if bars:
            self.bar(bars[-1])

    def bar(self, text: str) -> None:
        """Show a progress bar's state, once the cell has run a while and none was shown lately."""
        now = self.clock()
        recent = now - self.cell_start_time < self.interval or now - self.last_bar < self.interval
        if recent or not _PROGRESS_BAR.search(text):
            return
        self.last_bar = now
        self.line(f"    {text}")

    def tick(self) -> None:
        """Say that a long, silent cell is still running (called about once a second)."""
        now = self.clock()
        if self.cell_index is None or now - self.last_line < self.heartbeat:
            return
        minutes = (now - self.cell_start_time) / 60
        what = first_line(self.cell_source)
        self.line(f"    … still running {cell_label(self.cell_index)} ({minutes:.0f} min): {what}")
