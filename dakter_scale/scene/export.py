"""A student for deployment without this toolkit: TorchScript (torch.jit.trace) or ONNX (opset 17,
dynamic batch, height and width), checked against the eager model on test images before it is
written for good: the exported logits must equal the eager ones within EXPORT_ATOL, or the file is
removed.

Input: (B, 1, H, W) float32 in [-1, 1] (8-bit codes u -> u / 127.5 - 1, data.real.normalise), H and W
multiples of 32; output: (B, K, H, W) logits in the order of student.json's classes. A JSON sidecar
(``FILE.json``) carries the classes, the radiometric convention and the pixel spacing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from dakter_scale.errors import UserError

FORMATS = ("torchscript", "onnx")
EXPORT_ATOL = 1e-4  # float32 logits: runtimes sum convolutions in different orders
CHECK_SHAPES = ((1, 1, 64, 64), (2, 1, 96, 128))


class ExportError(UserError, ValueError):
    """An export that cannot be made or does not reproduce the eager model; the message says which."""


def export_student(student: str | Path, fmt: str, out: str | Path) -> Path:
    from dakter_scale.scene.radiometry import default_convention
    from dakter_scale.student.models import load_student

    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401 - the exporter needs it
        except ImportError:
            raise ExportError("--format onnx needs the onnx package: pip install 'dakter-scale[geo]'") from None
    model, info = load_student(student)
    model = model.float().eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside OUT under another name, checked, then renamed with its sidecar: an earlier good
    # export stays until this one passes, and no sidecar describes a file that is not there.
    partial = out.with_name(f".{out.name}.partial")
    sidecar_partial = partial.with_name(partial.name + ".json")
    try:
        example = torch.zeros(1, 1, 64, 64)
        with torch.no_grad():
            if fmt == "torchscript":
                traced = torch.jit.trace(model, example, check_trace=False)
                traced.save(str(partial))
            else:
                torch.onnx.export(
                    model,
                    (example,),
                    str(partial),
                    input_names=["image"],
                    output_names=["logits"],
                    opset_version=17,
                    dynamo=False,
                    dynamic_axes={
                        "image": {0: "batch", 2: "height", 3: "width"},
                        "logits": {0: "batch", 2: "height", 3: "width"},
                    },
                )
        worst = check_export(model, partial, fmt, shown=out)
        sidecar = {
            "format": fmt,
            "classes": info["classes"],
            "input": "(B, 1, H, W) float32 in [-1, 1], H and W multiples of 32",
            "output": "(B, K, H, W) logits",
            "radiometry": default_convention(info),
            "pixel_spacing_m": info.get("pixel_spacing_m"),
            "resolution": info.get("resolution"),
            "crop": info.get("crop"),
            "max_abs_logit_difference": worst,
            "tolerance": EXPORT_ATOL,
        }
        sidecar_partial.write_text(json.dumps(sidecar, indent=2) + "\n")
        os.replace(partial, out)
        os.replace(sidecar_partial, Path(str(out) + ".json"))
    except BaseException:
        # a failed trace, export or check, or a full disk, leaves neither temporary beside OUT
        partial.unlink(missing_ok=True)
        sidecar_partial.unlink(missing_ok=True)
        raise
    return out


def run_exported(path: str | Path, x: np.ndarray, fmt: str | None = None) -> np.ndarray:
    """Logits of an exported file on x (B, 1, H, W) float32; fmt (onnx | torchscript) None: from the
    file's suffix (.onnx, else TorchScript)."""
    path = Path(path)
    if (fmt or ("onnx" if path.suffix == ".onnx" else "torchscript")) == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": x.astype(np.float32)})[0]
    model = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def check_export(model: torch.nn.Module, path: Path, fmt: str | None = None, shown: Path | None = None) -> float:
    """The largest |exported - eager| logit over seeded test images of two sizes; refuses above EXPORT_ATOL,
    removing the file. fmt: as run_exported; shown: the name errors give (the file's own by default)."""
    shown = shown or path
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in CHECK_SHAPES:
        x = torch.rand(shape, generator=g) * 2 - 1
        with torch.no_grad():
            eager = model(x).numpy()
        try:
            got = run_exported(path, x.numpy(), fmt)
        except Exception:
            path.unlink(missing_ok=True)  # an export its runtime cannot run is not left to be used
            raise
        if got.shape != eager.shape:
            path.unlink(missing_ok=True)  # a file that fails its check is not left to be used
            raise ExportError(
                f"{shown}: exported model gives {got.shape} for input {tuple(shape)}, the eager one {eager.shape}; not written"
            )
        worst = max(worst, float(np.abs(got - eager).max()))
    if worst > EXPORT_ATOL:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"{shown}: exported logits differ from the eager model's by {worst:.2e} > {EXPORT_ATOL:g}; not written"
        )
    return worst
