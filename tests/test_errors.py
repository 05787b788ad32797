"""ConservizError: the message format, and how a notebook shows one (IPython's traceback hook)."""

from __future__ import annotations

import subprocess
import sys

from conserviz_utils.errors import ConservizError, ImageLoadError


def test_the_message_names_the_file_the_rows_and_the_fix():
    error = ConservizError("labels that are not numbers", path="train_labels.csv", column="label",
                           rows=[f"ZJ{i:06d}" for i in range(7)], fix="use the file from competition.zip")
    assert str(error) == ("train_labels.csv: labels that are not numbers; column 'label'; 7 row(s): ZJ000000, "
                          "ZJ000001, ZJ000002, ZJ000003, ZJ000004 … and 2 more. Fix: use the file from competition.zip")


def test_a_notebook_shows_the_message_the_callers_line_and_where_it_was_raised(tmp_path):
    from conserviz_utils.files.images import open_image

    broken = tmp_path / "ZJ000305.jpg"
    broken.write_bytes(b"not a jpeg")
    try:
        open_image(broken)
    except ImageLoadError as caught:
        shown = caught._render_traceback_()
    assert f"ImageLoadError\x1b[0m: {broken}: not an image Pillow can read" in shown[0]
    assert "Fix: " in shown[0]
    assert shown[1].startswith("  your code, line ") and shown[1].endswith(": open_image(broken)")
    assert shown[2].startswith("  raised in images.py, line ") and shown[2].endswith("in open_image()")
    assert "sys.last_value" in shown[-1] and len(shown) == 4


def test_ipython_uses_the_hook_and_keeps_the_full_stack():
    script = (
        "from IPython.testing.globalipapp import start_ipython\n"
        "ip = start_ipython()\n"
        "ip.run_cell('from conserviz_utils.course.settings import CourseSettings\\n"
        "settings = CourseSettings.from_env({}, batch_size=0)')\n"
        "import sys, traceback\n"
        "print('FULL', ''.join(traceback.format_exception(sys.last_value)).count('File '))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert "SettingsError\x1b[0m: notebook parameter batch_size=0 must be at least 1" in out
    assert "your code, line 2: settings = CourseSettings.from_env({}, batch_size=0)" in out
    assert "raised in settings.py" in out and "in read_whole_number()" in out
    assert "Traceback (most recent call last)" not in out  # not IPython's own stack
    full = int(out.split("FULL ")[1].split()[0])
    assert full >= 3  # the cell's frame and the library's are still there for whoever wants them
