"""The separate-process analysis the Slicer module uses: progress, completion, cancel, errors."""

from __future__ import annotations

import json
import time

from LLNAssistLib import runner


def test_progress_lines_map_to_one_rising_bar():
    lines = ["[llnassist]   0.0% load: reading image", "[llnassist]   0.0% inference: model x on cpu",
             "[llnassist]  50.0% radiomics: node 1/2", "[llnassist] 100.0% radiomics: node 2/2",
             "[llnassist] 100.0% done: /x"]
    ev = [runner.parse_progress(x) for x in lines]
    assert [e.stage for e in ev] == ["load", "inference", "radiomics", "radiomics", "done"]
    fr = [e.fraction for e in ev]
    assert fr == sorted(fr) and fr[-1] == 1.0 and ev[2].detail == "node 1/2"
    assert runner.parse_progress("patient LLN status: positive") is None


def test_analysis_in_a_separate_process_reports_stages_and_finishes(small_case, tmp_path):
    out = tmp_path / "out"
    cmd = runner.analyze_command(str(small_case / "image.nii.gz"), str(out), device="cpu", radiomics_engine="native")
    proc = runner.AnalysisProcess(cmd).start()
    events = []
    while proc.running:
        events += proc.poll()
        time.sleep(0.05)
    assert proc.returncode == 0, proc.log
    stages = [e.stage for e in events]
    assert stages[0] == "load" and stages[-1] == "done" and "inference" in stages and "radiomics" in stages
    assert [e.fraction for e in events] == sorted(e.fraction for e in events)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_nodes"] >= 1


def test_cancel_stops_the_process_and_publishes_nothing(small_case, tmp_path):
    out = tmp_path / "out"
    proc = runner.AnalysisProcess(runner.analyze_command(str(small_case / "image.nii.gz"), str(out),
                                                         device="cpu")).start()
    t0 = time.time()
    while proc.running and not any(e.stage == "inference" for e in proc.poll()) and time.time() - t0 < 120:
        time.sleep(0.05)
    proc.cancel()
    assert proc.cancelled and proc.returncode != 0 and not proc.error
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial folder left beside it


def test_bad_input_gives_the_clis_one_line_error(tmp_path):
    proc = runner.AnalysisProcess(runner.analyze_command(str(tmp_path / "missing.nii.gz"), str(tmp_path / "o"),
                                                         device="cpu")).start()
    assert proc.wait(timeout=120) == 2
    assert proc.error.startswith("error:") and "does not exist" in proc.error


# A stand-in for Windows' PythonSlicer.exe: a launcher that starts the real interpreter as a child
# sharing its output, then waits. The child leaves the launcher's process group (as on Windows,
# where there is none to signal) and ignores SIGTERM, so only a tree kill ends it.
_LAUNCHER = r"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print("[llnassist]   0.0% load: child", child.pid, flush=True)
child.wait()
"""
_REAL_INTERPRETER = r"""
import os, signal, time
os.setsid()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("[llnassist]  10.0% inference: working", flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cancel_ends_the_whole_process_tree_without_blocking():
    import sys

    proc = runner.AnalysisProcess([sys.executable, "-c", _LAUNCHER, _REAL_INTERPRETER]).start()
    t0 = time.time()
    while not any(e.stage == "inference" for e in proc.poll()) and time.time() - t0 < 60:
        time.sleep(0.02)
    child = int(next(x for x in proc.log if "load: child" in x).split()[-1])
    assert _alive(child)
    proc.cancel(grace_s=2.0)
    # cancel() returned while the interpreter still ignores SIGTERM: nothing waited on the caller's thread
    assert proc.running and _alive(child)
    t0 = time.time()
    while proc.running and time.time() - t0 < 60:
        proc.poll()
        time.sleep(0.05)
    assert not proc.running and proc.cancelled and not proc.error
    assert not _alive(child), "the real interpreter outlived Cancel"


def test_windows_runs_the_analysis_without_a_console_window():
    flags = runner.popen_platform_kwargs("nt")["creationflags"]
    assert flags & 0x08000000  # CREATE_NO_WINDOW (winbase.h)
    assert runner.popen_platform_kwargs("posix") == {"start_new_session": True}


def test_stale_work_folders_are_removed_and_fresh_ones_kept(tmp_path):
    import os

    old, fresh, other = tmp_path / "llnassist-old", tmp_path / "llnassist-fresh", tmp_path / "keep-me"
    for d in (old, fresh, other):
        (d / "results").mkdir(parents=True)
        (d / "results" / "x.nii.gz").write_bytes(b"x")
    two_days_ago = time.time() - 2 * 24 * 3600
    for d in (old, other):
        os.utime(d, (two_days_ago, two_days_ago))
    assert runner.remove_stale_work_dirs(root=str(tmp_path)) == 1
    assert not old.exists() and fresh.exists() and other.exists()
