"""Run `llnassist analyze` in a separate process, as the Slicer module does (the UI stays
responsive): progress parsed from the CLI's stage lines, the log kept, Cancel that stops the
process and leaves no output (the CLI writes its output folder atomically)."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
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
                    post_treatment: bool = False, radiomics_engine: str = "auto", python: Optional[str] = None) -> list:
    cmd = [python or python_executable(), "-m", "LLNAssistLib.cli", "analyze", str(image), "--out", str(out_dir),
           "--device", device, "--radiomics-engine", radiomics_engine]
    if model:
        cmd += ["--model", str(model)]
    if post_treatment:
        cmd.append("--post-treatment")
    return cmd


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
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(self.command, cwd=self.cwd or repo, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
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
        self._proc.wait(timeout=timeout)
        while self.returncode is None:
            self.poll()
        return self.returncode

    def cancel(self, grace_s: float = 5.0) -> None:
        """Stops the analysis: SIGTERM to its process group, SIGKILL after a grace period."""
        if not self.running:
            return
        self._cancelled = True
        posix = hasattr(os, "killpg")
        try:
            if posix:  # the whole group: the CLI may have started workers
                os.killpg(self._proc.pid, signal.SIGTERM)
            else:
                self._proc.terminate()
            self._proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            if posix:
                os.killpg(self._proc.pid, signal.SIGKILL)
            else:
                self._proc.kill()
        except ProcessLookupError:
            pass
        self.wait()

    @property
    def cancelled(self) -> bool:
        return self._cancelled
