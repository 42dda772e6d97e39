"""The progress lines the CLIs print for a GUI (``--progress-lines``) and their parser in the
Slicer module agree; throttling keeps the last (1.0) line."""

from __future__ import annotations

from lkseg.progress import PROGRESS_PREFIX, progress_lines


def test_disabled_gives_no_callback():
    assert progress_lines(False) is None


def test_every_call_printed_in_order(capsys):
    emit = progress_lines(digits=4)
    emit(0.5, "half way")
    emit(0.25, "a new phase may go back")
    assert capsys.readouterr().out.splitlines() == [
        f"{PROGRESS_PREFIX} 0.5000 half way",
        f"{PROGRESS_PREFIX} 0.2500 a new phase may go back",
    ]


def test_min_step_throttles_but_keeps_the_end(capsys):
    emit = progress_lines(min_step=0.1)
    for i in range(101):
        emit(i / 100, f"step {i}")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{PROGRESS_PREFIX} 0.000 step 0"
    assert lines[-1] == f"{PROGRESS_PREFIX} 1.000 step 100"
    assert len(lines) == 11


def test_lines_parse_in_the_slicer_module(capsys):
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "LiverKidneySeg"))
    from LiverKidneySegLib.process import parseProgressLine

    progress_lines()(0.125, "sliding window 3/7")
    (line,) = capsys.readouterr().out.splitlines()
    assert parseProgressLine(line) == (0.125, "sliding window 3/7")
