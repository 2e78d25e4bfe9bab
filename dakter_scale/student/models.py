"""Student segmentation models from segmentation-models-pytorch, and their folder.

A student folder holds model.safetensors, student.json (architecture, encoder, classes,
resolution, how it was trained) and config.yaml. Loading never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_model, save_model

from dakter_scale.config import ARCHS
from dakter_scale.errors import UserError

# Small encoders that train on a CPU; any smp encoder name can be given instead.
DEFAULT_ENCODERS = {"segformer": "mit_b0", "dpt": "tu-vit_tiny_patch16_224"}
DEFAULT_ENCODER = "resnet18"
STUDENT_FILE = "student.json"
STUDENT_WEIGHTS = "model.safetensors"


class StudentError(UserError, ValueError):
    """A student that cannot be built or loaded; the message names the architecture or file."""


def resolve_encoder(arch: str, encoder: str) -> str:
    return DEFAULT_ENCODERS.get(arch, DEFAULT_ENCODER) if encoder == "auto" else encoder


def build_student(
    arch: str, encoder: str = "auto", num_classes: int = 5, encoder_weights: str | None = None, encoder_depth: int = 5
) -> torch.nn.Module:
    """An smp model over 1-channel SAR input in [-1, 1] producing K logits per pixel."""
    if arch not in ARCHS:
        raise StudentError(f"unknown student architecture {arch!r}; expected one of {', '.join(sorted(ARCHS))}")
    encoder = resolve_encoder(arch, encoder)
    kwargs = dict(encoder_name=encoder, encoder_weights=encoder_weights, in_channels=1, classes=num_classes)
    if arch not in ("segformer", "dpt", "upernet") and encoder_depth != 5:
        kwargs["encoder_depth"] = encoder_depth
        if arch in ("unet", "unetplusplus", "manet"):
            kwargs["decoder_channels"] = (256, 128, 64, 32, 16)[5 - encoder_depth :]
    try:
        return getattr(smp, ARCHS[arch])(**kwargs)
    except (KeyError, ValueError, RuntimeError) as e:
        raise StudentError(f"cannot build {arch} with encoder {encoder!r}: {e}") from None


def check_students(student, archs: Iterable[str]) -> None:
    """Build each architecture a run will train once, with the student section's (config.StudentConfig)
    encoder and depth, before any work starts: an unknown encoder stops a demo or an experiment at
    once, not after its diffusion model has trained."""
    for arch in dict.fromkeys(archs):
        try:
            build_student(arch, student.encoder, 2, None, student.encoder_depth)
        except StudentError as err:
            raise StudentError(f"student.arch/encoder: {str(err)[:300]}") from None


def save_student(directory: str | Path, model: torch.nn.Module, info: dict) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_model(model, str(d / STUDENT_WEIGHTS))
    (d / STUDENT_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return d


def read_student_info(directory: str | Path, required: Iterable[str] = ("arch", "encoder", "classes")) -> dict:
    """A student folder's student.json, once the folder is known to hold its weights too, with the
    `required` fields (a StudentError naming the file otherwise)."""
    d = Path(directory)
    for part in (STUDENT_FILE, STUDENT_WEIGHTS):
        if not (d / part).is_file():
            raise StudentError(f"student folder {d} has no {part}; train one with jobs/train_student.py")
    try:
        info = json.loads((d / STUDENT_FILE).read_text())
    except json.JSONDecodeError as e:
        raise StudentError(f"{d / STUDENT_FILE} is not valid JSON: {e}") from None
    missing = [k for k in required if not isinstance(info, dict) or k not in info]
    if missing:
        raise StudentError(
            f"{d / STUDENT_FILE} lacks the field(s) {', '.join(missing)}; train one with jobs/train_student.py"
        )
    return info


def load_student(
    directory: str | Path, device: str | torch.device = "cpu", required: Iterable[str] = ("arch", "encoder", "classes")
) -> tuple[torch.nn.Module, dict]:
    """A student folder's model (eval mode, on device) and its student.json, which must hold `required`."""
    d = Path(directory)
    info = read_student_info(d, required)
    model = build_student(info["arch"], info["encoder"], len(info["classes"]), None, info.get("encoder_depth", 5))
    # read on the CPU, then moved: safetensors refuses "cpu:0", the device of a multi-process CPU run
    load_model(model, str(d / STUDENT_WEIGHTS), device="cpu")
    return model.to(device).eval(), info
