"""A study's small records, kept apart from its folder, so that a study outlives the machine it ran on.

A long study (the evidence table: tens of CPU-hours) runs over several machines or sessions whose
study folders (models, generated sets, student weights) are not kept. Its records are: each finished
student's scores and record (students/NAME/metrics*.json, student.json), and what identifies the
generator and the generated sets those students were trained on (sha256 of the model's weights, of
each set's tars). `jobs/experiment.py --records DIR` keeps them in DIR (a folder committed beside the
results) as units finish, and restores them into a fresh study folder before it runs: a restored
student is not trained again. Training is deterministic from the config and seeds, so on the same
machine the model and sets are rebuilt bit for bit; `check` refuses (one line) a rebuilt model or set
whose hash differs from the kept one, since the kept students would then describe another generator.
On another machine they may differ: a CPU with other vector instructions sums in another order (the
|D| = 20 generator of the scarcity study did, 2026-12-07), so identity.json names the machine that made
each, and `supersede` (jobs/experiment.py --retrain-rebuilt) keeps the new bytes and drops the kept
students that read the old ones, to be trained again; the real-only students stay.
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
KINDS = ("models", "generated")  # what identity.json names: a model's weights, a generated set's tars
LOCK = ".records.lock"  # held by every runner sharing the records while it reads and changes identity.json
RESULT_FILES = ("results.json", "results.md", "*.png")  # a finished study's answer and its figures


def file_sha256(paths: list[Path]) -> str:
    """One sha256 over the bytes of the files, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class Rebuilt(Exception):
    """A model or set was rebuilt to other bytes than the kept students read, and those students were
    dropped (Records.supersede): the runner plans again from what the records still hold."""


class Records:
    """The records folder of one study (DIR/students/NAME/..., DIR/identity.json)."""

    def __init__(self, folder: str | Path, study: str | Path):
        self.folder, self.study = Path(folder), Path(study)
        self.identity_file = self.folder / "identity.json"

    def identity(self) -> dict:
        return json.loads(self.identity_file.read_text()) if self.identity_file.is_file() else {}

    def restore(self) -> list[str]:
        """Copy the kept students' scores and records into the study folder where it lacks them, after
        removing there the scores of students dropped since (supersede: a study folder of its own holds
        them yet); returns the names restored."""
        with held(self.lock):
            for name, record in self.identity().get("dropped", {}).items():
                here = StudyFolder(self.study).student(name)
                if (here / "student.json").is_file() and file_sha256([here / "student.json"]) == record:
                    for f in student_files(here):  # not the folder: a runner may be training it again there
                        f.unlink()
        restored = []
        for kept in sorted((self.folder / "students").glob("*")):
            target = StudyFolder(self.study).student(kept.name)
            copied = False
            for f in student_files(kept):
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
        for f in student_files(source):
            target.mkdir(parents=True, exist_ok=True)
            if not (target / f.name).is_file() or (target / f.name).read_bytes() != f.read_bytes():
                StudyFolder.write_text(target / f.name, f.read_text())  # whole: another runner may restore it now

    def keep_results(self) -> list[str]:
        """Copy the finished study's results.json, results.md and figures into the records folder, to be
        committed beside its students; a partial.md there (the tables of an unfinished study) is
        removed, since it is no longer the answer. Returns the names copied."""
        kept = []
        with held(self.lock):  # one runner's results whole: another keeps its own before or after
            for pattern in RESULT_FILES:
                for f in sorted(self.study.glob(pattern)):
                    StudyFolder.write_bytes(self.folder / f.name, f.read_bytes())
                    kept.append(f.name)
            (self.folder / "partial.md").unlink(missing_ok=True)
        return kept

    def check(self, kind: str, name: str, digest: str, seen: str | None = None, drawn: set[str] | None = None) -> None:
        """Record the hash of a model (kind "models": its weights) or generated set ("generated": its
        tars) the first time, with the machine that made it; refuse a different one later (ConfigError,
        one line). seen: the hash the runner planned from; where another runner has since replaced it
        (supersede), Rebuilt. drawn (--retrain-rebuilt): the names of the sets and banks whose bytes come
        from this one, itself among them; a different hash then replaces the kept one (supersede), and
        Rebuilt says which students were dropped."""
        with held(self.lock):  # every runner sharing these records, whatever its study folder
            identity = self.identity()
            kept = identity.get(kind, {}).get(name)
            if kept is None:
                identity.setdefault(kind, {})[name] = digest
                identity.setdefault("machines", {})[f"{kind}/{name}"] = machine()
                self._write(identity)
                return
            if kept == digest:
                if seen is not None and seen != digest:
                    raise Rebuilt(
                        f"{kind}/{name} was rebuilt by another runner, which dropped the students that read it"
                    )
                return
            made = identity.get("machines", {}).get(f"{kind}/{name}")
            if drawn is None:
                raise ConfigError(
                    f"{self.study / kind / name}: rebuilt with sha256 {digest[:12]}... on {machine()}, but the students kept in "
                    f"{self.folder} were trained on {kept[:12]}...{f' made on {made}' if made else ''} (another config, code or "
                    "machine): use another --records folder, or give --retrain-rebuilt to train the students that read it again"
                )
            dropped = self._supersede(identity, kind, name, digest, drawn)
        raise Rebuilt(
            f"{kind}/{name} rebuilt on {machine()} to other bytes than the kept ones (made on {made or 'an unnamed machine'}): "
            f"{len(dropped)} kept students that read it are dropped and trained again (--retrain-rebuilt)"
        )

    def _supersede(self, identity: dict, kind: str, name: str, digest: str, drawn: set[str]) -> list[str]:
        """Keep digest as kind/name's identity, forget the identities of the sets drawn from it and drop
        the kept students that read any of `drawn` (their run's generated set or instance bank) from the
        records and the study folder: they describe the old bytes. Returns those dropped."""
        for k in KINDS:
            for n in drawn & set(identity.get(k, {})):
                del identity[k][n]
                identity.get("machines", {}).pop(f"{k}/{n}", None)
        identity.setdefault(kind, {})[name] = digest
        identity.setdefault("machines", {})[f"{kind}/{name}"] = machine()
        dropped = []
        for kept in sorted((self.folder / "students").glob("*")):
            if not drawn & reads(kept):
                continue
            # a study folder of another runner may hold its scores yet: restore removes them by this
            identity.setdefault("dropped", {})[kept.name] = file_sha256([kept / "student.json"])
            dropped.append(kept.name)
            shutil.rmtree(kept)
            shutil.rmtree(StudyFolder(self.study).student(kept.name), ignore_errors=True)
        self._write(identity)
        return dropped

    @property
    def lock(self) -> Path:
        return self.folder / LOCK

    def _write(self, identity: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        StudyFolder.write_text(self.identity_file, json.dumps(identity, indent=2, sort_keys=True) + "\n")


def student_files(folder: Path) -> list[Path]:
    """A student's scores and record in folder (STUDENT_FILES), the files the records keep of it."""
    return [f for pattern in STUDENT_FILES for f in sorted(folder.glob(pattern))]


def reads(kept: Path) -> set[str]:
    """The generated set and instance bank a kept student read, from its metrics' run."""
    out: set[str] = set()
    for f in kept.glob("metrics*.json"):
        run = json.loads(f.read_text()).get("run") or {}
        out |= {run.get("generated"), dict(run.get("overrides") or ()).get("student.instance_bank")} - {None}
    return out


# The kernel libraries' own instruction caps: each changes a model's bytes (measured, docs/journal/scarcity-run.md)
KERNEL_CAPS = ("ONEDNN_MAX_CPU_ISA", "MKL_CBWR")


def machine() -> str:
    """What a model's bytes depend on beyond the code and config: the torch build, the CPU vector
    instructions its kernels use (ATEN_CPU_CAPABILITY sets them) and the kernel libraries' caps where
    set. Measured with one thread: 30 steps of the scarcity generator hash the same run to run, and
    otherwise with ATen at AVX2 than at AVX512, and otherwise again with oneDNN and MKL capped too."""
    import os
    import platform

    import torch

    caps = "".join(f", {k}={os.environ[k]}" for k in KERNEL_CAPS if os.environ.get(k))
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"torch {torch.__version__}, {platform.machine()} {torch.backends.cpu.get_cpu_capability()}{caps}{gpu}"


def model_digest(folder: str | Path) -> str:
    """sha256 of a model folder's weights alone (dakter.json holds timings that differ between runs)."""
    return file_sha256([Path(folder) / WEIGHTS])


def set_digest(folder: str | Path) -> str:
    """sha256 over a local generated set's tars, in name order."""
    return file_sha256(sorted(Path(folder).glob("shard-*.tar")))
