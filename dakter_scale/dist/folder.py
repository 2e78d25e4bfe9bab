"""A folder's files as bytes, to ship a model or student folder to Ray actors on other nodes through
the object store (no shared file system needed), and back into a temporary folder there."""

from __future__ import annotations

import tempfile
from pathlib import Path


def pack_folder(directory: str | Path) -> dict[str, bytes]:
    """A model folder's files as {relative path: bytes}, without its checkpoints/ and logs/."""
    d = Path(directory)
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and "checkpoints" not in p.parts and "logs" not in p.parts}


def unpack_folder(files: dict[str, bytes]) -> Path:
    """pack_folder's files written into a new temporary folder (the caller removes it)."""
    d = Path(tempfile.mkdtemp(prefix="dakter-model-"))
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    return d
