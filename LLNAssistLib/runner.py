"""Run `llnassist analyze` in a separate process, as the Slicer module does (the UI stays
responsive): progress parsed from the CLI's stage lines, the log kept, Cancel that stops the
whole process tree without blocking the caller and leaves no output (the CLI writes its output
folder atomically).

On Windows `PythonSlicer.exe` is a launcher that starts the real interpreter as its child, so
stopping the started process alone would leave the analysis running: Cancel ends every
descendant (psutil, as SlicerMONAIAuto3DSeg does; `taskkill /T` or the POSIX process group where
psutil is missing)."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

# Overall progress spanned by each stage of `analyze`, so one bar moves steadily.
STAGE_SPAN = {"load": (0.0, 0.05), "inference": (0.05, 0.6), "measurement": (0.6, 0.7),
              "radiomics": (0.7, 0.9), "write": (0.9, 0.99), "done": (1.0, 1.0)}
STAGE_LABEL = {"load": "Reading image", "inference": "Segmenting (U-Net)", "measurement": "Measuring nodes",
               "radiomics": "Radiomics score", "write": "Writing results", "done": "Done"}
_LINE = re.compile(r"^\[llnassist\]\s+(?:(?P<pct>[\d.]+)%\s+)?(?P<stage>[a-z]+)(?::\s*(?P<detail>.*))?$")


@dataclass
class Progress:
    stage: str
    label: str
    fraction: float  # overall, 0-1
    detail: str = ""


def parse_progress(line: str) -> Optional[Progress]:
    m = _LINE.match(line.strip())
    if not m or m.group("stage") not in STAGE_SPAN:
        return None
    stage = m.group("stage")
    lo, hi = STAGE_SPAN[stage]
    within = float(m.group("pct")) / 100 if m.group("pct") else 0.0
    return Progress(stage, STAGE_LABEL[stage], lo + (hi - lo) * within, m.group("detail") or "")


def python_executable() -> str:
    """PythonSlicer inside Slicer (same packages, no GUI), else this interpreter."""
    here = os.path.dirname(sys.executable)
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        cand = os.path.join(here, name)
        if os.path.isfile(cand):
            return cand
    return shutil.which("PythonSlicer") or sys.executable


def analyze_command(image: str, out_dir: str, model: Optional[str] = None, device: str = "auto",
                    post_treatment: bool = False, radiomics_engine: str = "auto", python: Optional[str] = None,
                    force: bool = False) -> list:
    cmd = [python or python_executable(), "-m", "LLNAssistLib.cli", "analyze", str(image), "--out", str(out_dir),
           "--device", device, "--radiomics-engine", radiomics_engine]
    if model:
        cmd += ["--model", str(model)]
    if post_treatment:
        cmd.append("--post-treatment")
    if force:
        cmd.append("--force")
    return cmd


def refused_by_domain_gate(error: str) -> bool:
    """Whether a CLI error line is the domain gate's refusal (which --force can override)."""
    return error.startswith("error:") and "--force" in error


WORK_PREFIX = "llnassist-"


def new_work_dir() -> str:
    """A private temporary folder for one analysis (input export and results); the caller removes
    it when the results are loaded."""
    return tempfile.mkdtemp(prefix=WORK_PREFIX)


def remove_stale_work_dirs(max_age_s: float = 24 * 3600, root: Optional[str] = None) -> int:
    """Removes `llnassist-*` temporary folders older than max_age_s that earlier sessions left
    (Slicer closed or killed mid-analysis). Younger ones may belong to a running Slicer."""
    root = root or tempfile.gettempdir()
    now, removed = time.time(), 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for entry in entries:
        try:
            if (entry.name.startswith(WORK_PREFIX) and entry.is_dir(follow_symlinks=False)
                    and now - entry.stat(follow_symlinks=False).st_mtime > max_age_s):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += not os.path.exists(entry.path)
        except OSError:
            continue
    return removed


# Windows process-creation flags (subprocess defines the names only on Windows).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


def popen_platform_kwargs(os_name: str = os.name) -> dict:
    """Popen arguments that detach the analysis: on Windows no console window opens for it
    (PythonSlicer.exe is a console program) and it gets its own process group; elsewhere its own
    session, so its process group can be signalled as a whole."""
    if os_name == "nt":
        return {"creationflags": CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _descendants(pid: int) -> list:
    """psutil processes of pid and all its descendants (empty without psutil or when gone)."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


def _signal_tree(procs: list, kill: bool) -> None:
    import psutil

    for p in procs:
        try:
            p.kill() if kill else p.terminate()
        except psutil.Error:
            pass


def stop_process_tree(pid: int, grace_s: float = 5.0, os_name: str = os.name) -> None:
    """Ends pid and every descendant: terminate, then kill what is left after grace_s. Blocks up
    to grace_s; AnalysisProcess.cancel runs it on a worker thread."""
    procs = _descendants(pid)  # snapshot first: a launcher's children are re-parented once it dies
    posix_group = os_name != "nt" and hasattr(os, "killpg")
    if posix_group:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    if procs:
        import psutil

        _signal_tree(procs, kill=False)
        _gone, alive = psutil.wait_procs(procs, timeout=grace_s)
        # descendants started during the grace period are ended too
        alive = alive + [c for p in alive for c in _descendants(p.pid)[1:]]
        _signal_tree(alive, kill=True)
        psutil.wait_procs(alive, timeout=grace_s)
    elif os_name == "nt":  # no psutil: Windows' own tree kill, without a console window
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True,
                       creationflags=CREATE_NO_WINDOW, check=False)
    elif posix_group:
        time.sleep(grace_s)
    if posix_group:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class AnalysisProcess:
    """Start with `start()`; call `poll()` from a timer: it returns new Progress events."""

    command: list
    cwd: Optional[str] = None
    log: list = field(default_factory=list)
    returncode: Optional[int] = None
    error: str = ""
    _proc: Optional[subprocess.Popen] = None
    _lines: queue.Queue = field(default_factory=queue.Queue)
    _cancelled: bool = False

    def start(self) -> AnalysisProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(self.command, cwd=self.cwd or repo, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
                                      bufsize=1, **popen_platform_kwargs())
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    @property
    def running(self) -> bool:
        return self._proc is not None and self.returncode is None

    def poll(self) -> list:
        events = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self.returncode = self._proc.wait()
                if self.returncode != 0 and not self._cancelled:
                    errs = [x for x in self.log if x.startswith(("error:", "internal error:"))]
                    self.error = errs[-1] if errs else f"analysis failed (exit status {self.returncode})"
                break
            self.log.append(line)
            p = parse_progress(line)
            if p:
                events.append(p)
        return events

    def wait(self, timeout: Optional[float] = None) -> int:
        """Blocks until the process ends (for `waitForCompletion` and scripts)."""
        assert self._proc is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        self._proc.wait(timeout=timeout)
        while self.returncode is None:  # a descendant may hold the output pipe a little longer
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.command, timeout)
            if not self.poll():
                time.sleep(0.02)
        return self.returncode

    def cancel(self, grace_s: float = 5.0) -> None:
        """Asks the analysis and all its descendants to stop and returns at once (it never blocks
        Slicer's GUI thread): terminate now, kill what is left after grace_s, on a worker thread.
        `poll()` reports the end as usual; `running` turns False when the last descendant that
        held the output is gone."""
        if not self.running or self._cancelled:
            return
        self._cancelled = True
        threading.Thread(target=stop_process_tree, args=(self._proc.pid, grace_s), daemon=True).start()

    @property
    def cancelled(self) -> bool:
        return self._cancelled
