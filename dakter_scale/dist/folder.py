"""A folder's files as bytes, to ship a model or student folder to Ray actors on other nodes through
the object store (no shared file system needed), and back into a temporary folder there."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TypeVar

T = TypeVar("T")

# the folder's own subfolders that never travel: resume state, logs, and a distilled model's earlier rounds
SKIPPED = ("checkpoints", "logs", "rounds")


def pack_folder(directory: str | Path) -> dict[str, bytes]:
    """A model folder's files as {relative path: bytes}, without its checkpoints/ and logs/."""
    d = Path(directory)
    files = {}
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d)  # not p.parts: a folder kept under .../logs/ would lose every file
        if p.is_file() and not set(rel.parts) & set(SKIPPED):
            files[rel.as_posix()] = p.read_bytes()
    return files


def unpack_folder(files: dict[str, bytes]) -> Path:
    """pack_folder's files written into a new temporary folder (the caller removes it). A name that is
    absolute or climbs out with .. is refused before anything is written."""
    for rel in files:
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
            raise ValueError(f"packed file name {rel!r} is not a relative path inside the folder")
    d = Path(tempfile.mkdtemp(prefix="dakter-model-"))
    try:
        for rel, data in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)
    except BaseException:  # a full disk: the caller's cleanup starts only once this returns
        shutil.rmtree(d, ignore_errors=True)
        raise
    return d


def load_shipped(folder: str | Path | dict[str, bytes], load: Callable[[str], T]) -> T:
    """load(path) of a folder given by path, or of pack_folder's files unpacked into a temporary folder
    that is removed once loaded (an actor's copy of a model it has in memory would stay for its life)."""
    if not isinstance(folder, dict):
        return load(str(folder))
    unpacked = unpack_folder(folder)
    try:
        return load(str(unpacked))
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
