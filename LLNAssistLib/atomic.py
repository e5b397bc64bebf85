"""Atomic, durable file and directory writes: a reader never sees a half-written result."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `target`; on success it is fsynced and renamed onto it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix chain (.nii.gz, .seg.nrrd) so writers that choose a format by name still work.
    suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def _process_alive(pid: int) -> bool:
    try:
        import psutil
    except ImportError:  # without psutil, only age decides (os.kill(pid, 0) terminates on Windows)
        return True
    return psutil.pid_exists(pid)


def remove_stale_stages(out_dir: Path, max_age_s: float = 24 * 3600) -> list:
    """Removes staging folders that killed runs left beside out_dir: their process is gone, or
    they are older than a day. Returns the removed paths."""
    import time

    removed = []
    for p in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        tail = p.name[len(f".{out_dir.name}.partial-"):]
        pid = int(tail.split("-")[0]) if tail.split("-")[0].isdigit() else None
        try:
            old = time.time() - p.stat().st_mtime > max_age_s
        except OSError:
            continue
        if p.is_dir() and pid != os.getpid() and (old or (pid is not None and not _process_alive(pid))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def check_output_folder(out_dir: str | os.PathLike, own_files: tuple, inputs: tuple = (),
                        marker: str = "summary.json") -> None:
    """Refuses an output folder that holds anything this program did not write there (a case
    folder with the image, a hand-made label map, notes), or that holds the input: publishing
    would overwrite or mix with the user's files. A previous result (its marker names this
    program) may be replaced."""
    import json

    from .errors import InputError

    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(f"output path {out_dir} exists and is not a directory; choose another --out")
    root = out_dir.resolve()
    for inp in inputs:
        try:
            inside = Path(inp).resolve().is_relative_to(root)
        except AttributeError:  # Python 3.8
            inside = str(Path(inp).resolve()).startswith(str(root) + os.sep)
        if inside:
            raise InputError(f"the input {inp} is inside the output folder {out_dir}; write the results to a new "
                             f"folder, e.g. --out {out_dir / 'llnassist'}")
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    try:
        ours = "llnassist" in json.loads((out_dir / marker).read_text(encoding="utf-8")).get("versions", {})
    except (OSError, ValueError, AttributeError):
        ours = False
    foreign = [e for e in entries if not ours or e not in own_files]
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise InputError(f"output folder {out_dir} holds files LLNAssist did not write ({shown}); nothing was "
                         f"changed - give a new or empty folder, e.g. --out {out_dir / 'llnassist'}")


@contextlib.contextmanager
def staged_directory(out_dir: str | os.PathLike, marker: str) -> Iterator[Path]:
    """Builds an output directory in a hidden staging folder and publishes it only on success.

    `marker` is the file whose presence says "complete" (e.g. summary.json); it is moved last, so a
    crash at any point leaves either the previous complete output or no marker at all.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        from .errors import InputError

        raise InputError(f"output path {out_dir} exists and is not a directory; choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_stages(out_dir)
    # The pid in the name lets the next run tell a killed run's leftovers from a running one's.
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{os.getpid()}-", dir=out_dir.parent))
    try:
        yield stage
        mask = _umask()
        os.chmod(stage, 0o777 & ~mask)
        for f in stage.rglob("*"):
            if f.is_dir():
                os.chmod(f, 0o777 & ~mask)
                continue
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(f, 0o666 & ~mask)
        if not out_dir.exists():
            os.replace(stage, out_dir)
        else:
            # Re-running into an existing folder: drop the old marker first so it never vouches
            # for a mixture of old and new files, then move the new files in, marker last.
            old_marker = out_dir / marker
            if old_marker.exists():
                old_marker.unlink()
            names = sorted(p.name for p in stage.iterdir() if p.name != marker)
            for name in names + [marker]:
                src = stage / name
                if src.exists():
                    if src.is_dir() and (out_dir / name).is_dir():  # a folder of an earlier result
                        shutil.rmtree(out_dir / name)
                    os.replace(src, out_dir / name)
        _fsync_dir(out_dir)
        _fsync_dir(out_dir.parent)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
