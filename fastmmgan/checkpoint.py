"""Atomic file writes, file locks, checkpoints that load with a clear error (never a traceback), the random state
a checkpoint carries and the clean-up of temp files a killed writer left."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .errors import FastMMGANError, first_line

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(fileobj)`` into a temp file beside it, fsync, then rename over ``path``.

    A reader sees the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


@contextlib.contextmanager
def file_lock(path: str | Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on the file ``path`` (created if missing) for the ``with`` block: another process
    asking for it waits, with no deadline. With ``wait=False``, yields whether the lock was free (and holds it
    if so). The lock goes with the process, so a killed holder never leaves it taken."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``checkpoints/step_<8-digit step>.pt`` atomically, point ``last.pt`` at it, keep the newest ``keep``."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    path = atomic_write(ckpt_dir / f"step_{step:08d}.pt", lambda f: torch.save(state, f))
    link_tmp = ckpt_dir / f".{LAST}.{os.getpid()}.tmp"
    link_tmp.unlink(missing_ok=True)
    os.link(path, link_tmp)
    os.replace(link_tmp, ckpt_dir / LAST)
    for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
        old.unlink()
    return path


def newest_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a bare ``--resume`` continues from: ``last.pt``, or, where a run was killed between writing
    a step checkpoint and pointing ``last.pt`` at it (its first one, say), the newest step file (each is written
    whole, by rename). The ``last.pt`` path when there is neither."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    steps = sorted(folder.glob("step_*.pt"))
    return folder / LAST if (folder / LAST).is_file() or not steps else steps[-1]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its ``checkpoints/last.pt``)."""
    path = Path(path)
    if path.is_dir():
        candidate = path / CHECKPOINT_DIR / LAST
        if not candidate.is_file():
            raise FastMMGANError(f"no checkpoint in {path} (expected {candidate})")
        return candidate
    if not path.is_file():
        raise FastMMGANError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a fastmmgan checkpoint (file or run directory) onto the CPU; clear error if truncated or foreign."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - damaged pickles and zips raise many unrelated types (TypeError included)
        raise FastMMGANError(
            f"{path} is not a readable fastmmgan checkpoint (truncated or corrupt?): {first_line(e)}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != "fastmmgan-checkpoint":
        raise FastMMGANError(f"{path} is not a fastmmgan checkpoint")
    return state


def remove_stale_temp_files(run_dir: str | Path) -> None:
    """Temp files left by a process killed mid-write are garbage: the files they were for are intact."""
    for tmp in (Path(run_dir) / CHECKPOINT_DIR).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    keys_t = torch.from_numpy(keys.astype(np.int64))
    return {"name": name, "keys": keys_t, "pos": pos, "has_gauss": has_gauss, "cached": cached}


def _numpy_state_from(d: dict[str, Any]) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def _python_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _python_state_from(d: dict[str, Any]) -> tuple:
    return (d["version"], tuple(d["internal"]), d["gauss"])

def rng_state() -> dict[str, Any]:
    """Every global random stream a run may touch (torch CPU and CUDA, NumPy, Python), as tensors and plain
    values that ``torch.load(weights_only=True)`` reads back."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state(),
        "python": _python_state(),
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA streams only where CUDA is present)."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state(_numpy_state_from(rng["numpy"]))
    random.setstate(_python_state_from(rng["python"]))
