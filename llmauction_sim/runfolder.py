"""Run folders that say what they are and have one writer at a time.

Every command's output folder holds ``run.json``: the kind of folder (simulate, evaluate, irpo,
data, sweep, bid-sweep, equilibrium), the commands that wrote it, a hash of its config, its state
(starting, running, finished) and a content hash of each input (a data build's parquet files).
`open_run_folder` checks all of that before any work:

- a folder of another kind, or the command's own input folder, is refused (a folder whose start
  failed, state "starting", may be taken over);
- ``.lock`` is locked with `fcntl.flock` for the run's life; the OS drops the lock when the process
  dies, so a crash never leaves a stale lock, and a second writer fails at once;
- temp files carry their writer's pid (`temp_path`); on opening, those of this process and of
  processes that no longer exist are removed, never a live writer's;
- on resume, an input whose content changed since the run started is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
DATA_FILES = ("profiles.parquet", "queries.parquet")
# `temp_path` names: .NAME.PID.tmp, optionally with an extension (matplotlib wants one).
_TEMP = re.compile(r"^\..+\.(\d+)\.tmp(\.[A-Za-z0-9]+)?$")


class RunFolderError(ValueError):
    """The output folder conflicts with the request (another kind of folder, in use, an input,
    a changed input, an existing run)."""


def temp_path(path: str | Path, ext: str = "") -> Path:
    """Where to write `path` before an atomic `os.replace`: hidden, with this process's pid."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{ext}")


def atomic_parquet(frame, path: str | Path) -> None:
    path = Path(path)
    tmp = temp_path(path)
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def atomic_json(path: str | Path, data: Any) -> None:
    from llmauction_sim.manifest import write_json

    write_json(path, data)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(folder: str | Path, names=DATA_FILES) -> dict[str, str]:
    """sha256 of each of `names` present in `folder`."""
    folder = Path(folder)
    return {name: file_sha256(folder / name) for name in names if (folder / name).is_file()}


def config_hash(config: Any) -> str:
    data = config.to_dict() if hasattr(config, "to_dict") else config
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def command_line() -> str:
    argv = list(sys.argv) or ["python"]
    if argv[0].endswith(("llmauction", "cli.py")):
        argv[0] = "llmauction"
    return shlex.join(argv)


def infer_kind(folder: Path) -> str | None:
    """The kind of a folder written before run.json existed, from the files only it writes."""
    def has(*names: str) -> bool:
        return all((folder / n).exists() for n in names)

    if has("sweep.json"):
        return "sweep"
    if has("state.json"):
        return "irpo"
    if has("curve.parquet") or has("samples.parquet"):
        return "bid-sweep"
    if has("rounds.parquet"):
        return "equilibrium"
    if has("comparison.md"):
        return "evaluate"
    if has(".state") or has("config.json", "metrics.parquet"):
        return "simulate"
    if has("config.json", "summary.json", "queries.parquet"):
        return "evaluate"
    if has(*DATA_FILES) or has(".parts"):
        return "data"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temps(folder: Path) -> int:
    """Remove temp files and folders of this process and of dead processes under `folder` (not
    inside nested run folders, which clean themselves); return how many."""
    removed = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match:
            pid = int(match[1])
            if pid == os.getpid() or not _alive(pid):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
        elif entry.is_dir() and not entry.is_symlink() and not (entry / RUN_FILE).exists():
            removed += clean_temps(entry)
    return removed


class RunFolder:
    """An open run folder: its record (run.json) and the held lock. See the module doc."""

    def __init__(self, path: Path, kind: str, record: dict, lock_fd: int, resume: bool):
        self.path, self.kind, self.record, self.resume = path, kind, record, resume
        self._fd: int | None = lock_fd

    def _save(self) -> None:
        self.record["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_json(self.path / RUN_FILE, self.record)

    def input(self, name: str, folder: str | Path, files=DATA_FILES) -> None:
        """Record input `name` (a folder) by content hash; on resume of a started run, refuse
        one whose files changed since the run started."""
        folder = Path(folder)
        current = {"path": str(folder.resolve()), "files": fingerprint(folder, files)}
        old = self.record.get("inputs", {}).get(name)
        if self.resume and self.record.get("state") != "starting" and old \
                and old.get("files") != current["files"]:
            changed = sorted(n for n in set(old["files"]) | set(current["files"])
                             if old["files"].get(n) != current["files"].get(n))
            raise RunFolderError(
                f"the {name} in {folder} changed since the run in {self.path} started "
                f"({', '.join(changed)} differ); restore that folder, or start a new run with "
                "another --out")
        self.record.setdefault("inputs", {})[name] = current
        self._save()

    def started(self, config: Any = None) -> None:
        """The run has begun (its config is written): from now on it is this kind's folder."""
        self.record["state"] = "running"
        if config is not None:
            self.record["config_hash"] = config_hash(config)
        self.record.setdefault("commands", []).append(command_line())
        self._save()

    def finished(self) -> None:
        self.record["state"] = "finished"
        self._save()

    @property
    def is_finished(self) -> bool:
        return self.record.get("state") == "finished"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def _kind_of(path: Path) -> tuple[str | None, str, dict | None]:
    """(kind, where it was read from, record) of an existing folder."""
    try:
        record = json.loads((path / RUN_FILE).read_text())
    except FileNotFoundError:
        return infer_kind(path), "its files", None
    except (OSError, ValueError):
        return None, RUN_FILE, None  # unreadable: rewritten below
    if not isinstance(record, dict):
        return None, RUN_FILE, None
    return record.get("kind"), RUN_FILE, record


def acquire(path: str | Path, kind: str, *, inputs: Mapping[str, Any] | None = None,
            resume: bool = False) -> RunFolder:
    """Check and lock `path` for a `kind` run; the caller closes it (see `open_run_folder`)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path} is a file, not a folder; give a folder as --out")
    for name, given in (inputs or {}).items():
        if given is not None and Path(given).resolve() == path.resolve():
            raise RunFolderError(
                f"{path} is both the output folder and this {kind}'s {name} folder; writing "
                f"there would overwrite the {name}: give another --out")
    record = None
    if path.is_dir():
        existing, where, record = _kind_of(path)
        starting = record is not None and record.get("state") == "starting"
        if existing is not None and existing != kind and not starting:
            raise RunFolderError(
                f"{path} holds a {existing} run (see {where}), not a {kind} run; give another "
                "--out")
        if record is not None and existing != kind:
            record = None  # a failed start of another kind: taken over
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunFolderError(f"cannot write to {path} ({exc.strerror}); give a writable "
                             "--out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunFolderError(f"{path} is in use by another process (pid {holder}); wait for it "
                             "to finish, or give another --out") from None
    folder = None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        clean_temps(path)
        if record is None:
            record = {"kind": kind, "state": "starting", "inputs": {}, "commands": []}
        folder = RunFolder(path, kind, record, fd, resume)
        folder._save()  # also proves the folder is writable before any work
    except OSError as exc:
        os.close(fd)
        raise RunFolderError(f"cannot write to {path} ({exc.strerror}); give a writable "
                             "--out") from None
    return folder


@contextlib.contextmanager
def open_run_folder(path: str | Path, kind: str, *, inputs: Mapping[str, Any] | None = None,
                    resume: bool = False) -> Iterator[RunFolder]:
    """Check, lock and record the run folder `path` of a `kind` run for the `with` block."""
    folder = acquire(path, kind, inputs=inputs, resume=resume)
    try:
        yield folder
    finally:
        folder.close()


def total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: float, what: str, fix: str) -> None:
    """Refuse work that needs more memory than the machine has, with the numbers."""
    total = total_memory()
    if total and needed > total:
        raise RunFolderError(f"{what} needs about {_size(needed)} of memory but this machine has "
                             f"{_size(total)}; {fix}")


def _size(n: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB", "PB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n, k = n / 1024, k + 1
    return f"{n:.3g} {units[k]}"


def classic_equilibrium_bytes(advertisers: int, auctions: int, grid_points: int) -> float:
    """Peak memory of one round of the classic equilibrium: the counterfactual outcomes compare
    every candidate bid with every other bidder ([auctions, n, grid, n] booleans) besides a few
    [auctions, n, grid] float arrays (measured within ~20% for n = 100..400)."""
    return float(auctions) * advertisers * grid_points * (advertisers + 48)
