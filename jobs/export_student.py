"""Export a student for deployment: TorchScript or ONNX, checked to reproduce the eager model's logits
within 1e-4 on test images before the file is written (dakter_scale/scene/export.py).

    python jobs/export_student.py --student runs/student --format torchscript --out runs/student.pt
    python jobs/export_student.py --student runs/student --format onnx --out runs/student.onnx

A sidecar FILE.json holds the classes, the input convention ([-1, 1] from 8-bit codes), the
radiometric convention, the pixel spacing and the measured largest logit difference.
"""

from __future__ import annotations

from dakter_scale.cli import parser, run, script


def main() -> None:
    p = parser(__doc__, config=False)
    p.add_argument("--student", required=True, help="student folder written by jobs/train_student.py")
    p.add_argument(
        "--format",
        required=True,
        choices=["torchscript", "onnx"],
        help="torchscript (torch.jit.trace) or onnx (opset 17, dynamic batch/height/width; needs onnx, checked with onnxruntime)",
    )
    p.add_argument("--out", required=True, help="file to write (a .json sidecar is written next to it)")
    args = p.parse_args()

    def body() -> int:
        import json
        from pathlib import Path

        from dakter_scale.scene.export import export_student

        out = export_student(args.student, args.format, args.out)
        sidecar = json.loads(Path(str(out) + ".json").read_text())
        print(
            f"{out}: {args.format}, classes {', '.join(sidecar['classes'])}; largest logit difference from the eager model {sidecar['max_abs_logit_difference']:.2e} (tolerance {sidecar['tolerance']:g})"
        )
        return 0

    run(body)


if __name__ == "__main__":
    script(main)
