"""A study's small records, kept apart from its folder, so that a study outlives the machine it ran on.

A long study (the evidence table: tens of CPU-hours) runs over several machines or sessions whose
study folders (models, generated sets, student weights) are not kept. Its records are: each finished
student's scores and record (students/NAME/metrics*.json, student.json), and what identifies the
generator and the generated sets those students were trained on (sha256 of the model's weights, of
each set's tars). `jobs/experiment.py --records DIR` keeps them in DIR (a folder committed beside the
results) as units finish, and restores them into a fresh study folder before it runs: a restored
student is not trained again. Training is deterministic from the config and seeds, so the model and
sets are rebuilt bit for bit; `check` refuses (one line) a rebuilt model or set whose hash differs
from the kept one, since the kept students would then describe another generator.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from dakter_scale.config import ConfigError
from dakter_scale.diffusion.model import WEIGHTS
from dakter_scale.study.claims import held
from dakter_scale.study.folder import StudyFolder

STUDENT_FILES = ("student.json", "metrics.json", "metrics_*.json")
RESULT_FILES = ("results.json", "results.md", "*.png")  # a finished study's answer and its figures


def file_sha256(paths: list[Path]) -> str:
    """One sha256 over the bytes of the files, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class Records:
    """The records folder of one study (DIR/students/NAME/..., DIR/identity.json)."""

    def __init__(self, folder: str | Path, study: str | Path):
        self.folder, self.study = Path(folder), Path(study)
        self.identity_file = self.folder / "identity.json"

    def identity(self) -> dict:
        return json.loads(self.identity_file.read_text()) if self.identity_file.is_file() else {}

    def restore(self) -> list[str]:
        """Copy the kept students' scores and records into the study folder where it lacks them;
        returns the names restored."""
        restored = []
        for kept in sorted((self.folder / "students").glob("*")):
            target = StudyFolder(self.study).student(kept.name)
            copied = False
            for pattern in STUDENT_FILES:
                for f in kept.glob(pattern):
                    if not (target / f.name).is_file():
                        target.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(f, target / f.name)
                        copied = True
            if copied:
                restored.append(kept.name)
        return restored

    def keep_student(self, name: str) -> None:
        """Copy a finished student's scores and record into the records folder."""
        source = StudyFolder(self.study).student(name)
        target = self.folder / "students" / name
        for pattern in STUDENT_FILES:
            for f in source.glob(pattern):
                target.mkdir(parents=True, exist_ok=True)
                if not (target / f.name).is_file() or (target / f.name).read_bytes() != f.read_bytes():
                    StudyFolder.write_text(target / f.name, f.read_text())  # whole: another runner may restore it now

    def keep_results(self) -> list[str]:
        """Copy the finished study's results.json, results.md and figures into the records folder, to be
        committed beside its students; a partial.md there (the tables of an unfinished study) is
        removed, since it is no longer the answer. Returns the names copied."""
        kept = []
        for pattern in RESULT_FILES:
            for f in sorted(self.study.glob(pattern)):
                self.folder.mkdir(parents=True, exist_ok=True)
                StudyFolder.write_bytes(self.folder / f.name, f.read_bytes())
                kept.append(f.name)
        (self.folder / "partial.md").unlink(missing_ok=True)
        return kept

    def check(self, kind: str, name: str, digest: str) -> None:
        """Record the hash of a model (kind "model": its weights) or generated set ("generated": its
        tars) the first time; refuse a different one later (ConfigError, one line)."""
        with held(StudyFolder(self.study).claim("records-identity")):  # runners of one folder add to it at once
            identity = self.identity()
            kept = identity.get(kind, {}).get(name)
            if kept is None:
                identity.setdefault(kind, {})[name] = digest
                self.folder.mkdir(parents=True, exist_ok=True)
                StudyFolder.write_text(self.identity_file, json.dumps(identity, indent=2, sort_keys=True) + "\n")
        if kept is not None and kept != digest:
            raise ConfigError(
                f"{self.study / kind / name}: rebuilt with sha256 {digest[:12]}..., but the students kept in {self.folder} were trained on {kept[:12]}... "
                "(another config, code or machine): use another --records folder"
            )


def model_digest(folder: str | Path) -> str:
    """sha256 of a model folder's weights alone (dakter.json holds timings that differ between runs)."""
    return file_sha256([Path(folder) / WEIGHTS])


def set_digest(folder: str | Path) -> str:
    """sha256 over a local generated set's tars, in name order."""
    return file_sha256(sorted(Path(folder).glob("shard-*.tar")))
