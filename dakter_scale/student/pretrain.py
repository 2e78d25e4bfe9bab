"""Pretrain on generated pairs, then fine-tune on real scenes: the other common recipe for synthetic data.

A student of T = student.max_steps steps trains its first P = round(share * T) steps on generated
pairs alone (student.ratio = inf: KD on their soft labels, the same r * |D| pairs as DAKTer through
student.max_generated), into the folder OUT-pretrain; then T - P steps on the real scenes alone,
with the config's copy-paste, starting from those weights (student.init), into OUT. P + (T - P) = T:
the same total steps as every other arm of a study. Each phase is an ordinary student run, so each
resumes from its own checkpoints (student.checkpoint_every) and a finished phase is not run again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dakter_scale.config import Config
from dakter_scale.student.models import StudentError, read_student_info
from dakter_scale.student.train import train_student

RECORD = "pretrain_finetune.json"  # in OUT: the two phases' steps and folders


def phase_steps(total: int, share: float) -> tuple[int, int]:
    """(pretraining steps, fine-tuning steps) of a student of `total` steps, `share` of them pretraining;
    each at least 1, and they add up to total."""
    if total < 2:
        raise StudentError(f"pretrain_finetune needs student.max_steps >= 2 (a step for each phase), got {total}")
    pre = min(total - 1, max(1, round(share * total)))
    assert pre + (total - pre) == total
    return pre, total - pre


def pretrain_folder(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + "-pretrain")


def pretrain_finetune(
    cfg: Config, out: str | Path, synthetic: str, share: float, progress: bool = True, resume: str | None = "latest"
) -> Path:
    """Train the two phases (module docstring) of the student cfg describes; returns OUT, the fine-tuned
    student. cfg.student.ratio is ignored (the pretraining reads generated pairs only, the fine-tuning
    real ones); its copy-paste applies to the fine-tuning."""
    out, s = Path(out), cfg.student
    pre, fine = phase_steps(s.max_steps, share)
    first = pretrain_folder(out)
    pretrain = cfg.replace(
        **{
            "student.ratio": math.inf,
            "student.max_steps": pre,
            "student.max_minutes": share * s.max_minutes,  # a time budget is split as the steps are
            "student.copy_paste": "",
            "student.instance_bank": "",
            "student.instance_bank_size": 0,
            "student.init": "",
        }
    )
    if not _finished(first, pre, s.max_minutes):
        train_student(pretrain, first, synthetic=synthetic, resume=resume, progress=progress)
    finetune = cfg.replace(
        **{
            "student.ratio": 0.0,
            "student.max_generated": 0,
            "student.max_steps": fine,
            "student.max_minutes": s.max_minutes - share * s.max_minutes,
            "student.init": str(first),
        }
    )
    # Written before the fine-tuning: a run killed after it finished would otherwise be found trained
    # (student.json) and never write the record of its phases.
    record = {"total_steps": s.max_steps, "pretrain_steps": pre, "finetune_steps": fine, "share": share}
    out.mkdir(parents=True, exist_ok=True)
    (out / RECORD).write_text(json.dumps(dict(record, pretrain=str(first)), indent=2) + "\n")
    if not _finished(out, fine, s.max_minutes):
        train_student(finetune, out, resume=resume, progress=progress)
    return out


def _finished(folder: Path, steps: int, minutes: float) -> bool:
    """Whether a phase's student is written (student.json comes last), at its step count unless a time
    budget set the count."""
    try:
        trained = read_student_info(folder).get("steps")
    except StudentError:
        return False
    return trained is not None and (minutes > 0 or trained == steps)
