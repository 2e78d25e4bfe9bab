"""The layout of a study folder, in one place (the runner, the records and the reports read it here):

  config.yaml             the study's config (config.save_config)
  models/TAG/             a joint DDPM: a model folder (diffusion/model.py owns what is inside)
  generated/NAME/         a generated shard set (data/shardset/ owns what is inside)
  students/NAME/          a student folder (student/models.py owns student.json and the weights),
                          plus metrics.json (its score on the test split) and metrics_TAG.json (others)
  students/steps_ARCH.json  the steps a wall-clock budget allowed ARCH's first student
  timings.json            seconds per finished unit, kept over reruns (and merged between runners)
  claims/KEY.lock         the lock of the runner building unit KEY (study/claims.py): several runners
                          can share one folder, each unit built by one of them (study/units.py)
  results.json            the analysis; results.md (report.md for the demo) and figures beside it

What is inside a model or student folder is its owner's: finished means the owner's file exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from dakter_scale.data import storage
from dakter_scale.diffusion.model import INFO_FILE
from dakter_scale.student.models import STUDENT_FILE, STUDENT_WEIGHTS
from dakter_scale.study.claims import held

TIMINGS = "timings.json"
RESULTS = "results.json"


class StudyFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- models --------------------------------------------------------------------------------

    def model(self, tag: str) -> Path:
        return self.root / "models" / tag

    def model_done(self, tag: str) -> bool:
        return (self.model(tag) / INFO_FILE).is_file()

    def model_info(self, tag: str) -> dict:
        """The model folder's dakter.json."""
        return json.loads((self.model(tag) / INFO_FILE).read_text())

    # -- generated sets ------------------------------------------------------------------------

    def generated(self, name: str) -> str:
        return str(self.root / "generated" / name)

    # -- students ------------------------------------------------------------------------------

    def students(self) -> Path:
        return self.root / "students"

    def student(self, name: str) -> Path:
        return self.students() / name

    def student_trained(self, name: str) -> bool:
        """Whether the student's record exists (it is written with its weights, last)."""
        return (self.student(name) / STUDENT_FILE).is_file()

    def student_weights(self, name: str) -> bool:
        """Whether the student's weights are here (a student restored from --records has none)."""
        return (self.student(name) / STUDENT_WEIGHTS).is_file()

    def student_info(self, name: str) -> dict | None:
        """The student's student.json, None before it is trained."""
        path = self.student(name) / STUDENT_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def metrics(self, name: str, tag: str | None = None) -> Path:
        """metrics.json (the test split), or metrics_TAG.json (another split)."""
        return self.student(name) / (f"metrics_{tag}.json" if tag else "metrics.json")

    def budget(self, arch: str) -> Path:
        return self.students() / f"steps_{arch}.json"

    # -- the study's own files -----------------------------------------------------------------

    def read_timings(self) -> dict[str, float]:
        path = self.root / TIMINGS
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_timings(self, timings: dict[str, float]) -> None:
        """Merged over what is there: another runner of the folder may have written its units' since."""
        with held(self.claim("timings")):
            self.write_text(self.root / TIMINGS, json.dumps(self.read_timings() | timings, indent=2) + "\n")

    def claim(self, key: str) -> Path:
        return self.root / "claims" / f"{key}.lock"

    @staticmethod
    def write_text(path: Path, text: str) -> None:
        """Whole or not at all (a temporary renamed over it): runners sharing the folder write the same
        files, and a reader never sees half of one."""
        StudyFolder.write_bytes(path, text.encode())

    @staticmethod
    def write_bytes(path: Path, data: bytes) -> None:
        """As write_text."""
        fs, _ = storage.url_to_fs(str(path))
        storage.write_bytes(fs, str(path), data)

    def results(self) -> Path:
        return self.root / RESULTS
