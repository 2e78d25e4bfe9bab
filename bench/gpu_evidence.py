"""The GPU evidence run: the paper's comparison at 64 px, timed by wall-clock budgets, with a
throughput record, into a results folder of at most 8 files.

    bash bench/gpu_evidence.sh OUT              # on a GPU machine (installs offline from wheels/ if needed)
    python bench/gpu_evidence.py OUT --tiny     # the same run at a tiny setting, a few minutes on a CPU

It runs jobs/experiment.py's runner with configs/gpu_evidence.yaml (students none / hard / DAKTer
for the unet and segformer, 3 seeds, full test split) in a work folder (resumable: rerun the same
command), then measures what the run achieved against the device's own peak:
  * the matrix-multiply peak of this device, measured here (bf16 on a GPU, fp32 on a CPU);
  * FLOPs of one diffusion training step and of one sampled pair, counted with
    torch.utils.flop_counter on the run's own model;
  * achieved FLOP/s = FLOPs x the steps/s and pairs/s the run recorded, and their fraction of the peak.
OUT receives: results.md, results.json, samples_b_cfg.png, per_class_iou.png, throughput.json,
config.yaml (6 files). The device name is printed first and recorded in throughput.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dakter_scale.config import load_config  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from measure import count_flops, device_name, matmul_peak  # noqa: E402

CONFIG = ROOT / "configs" / "gpu_evidence.yaml"
# The tiny setting: the same stages and files in a few minutes on a 2-core CPU (a slow test runs it).
TINY = [
    "data.spec=synthetic:24?size=32&test=24",
    "data.resolution=32",
    "diffusion.unet.block_out_channels=[32,64]",
    "diffusion.unet.layers_per_block=1",
    "diffusion.unet.attention=false",
    "diffusion.unet.norm_num_groups=8",
    "diffusion.batch_size=16",
    "diffusion.max_minutes=0.25",
    "diffusion.warmup_steps=10",
    "diffusion.num_workers=0",
    "diffusion.log_every=20",
    "sampling.steps=10",
    "synthesis.samples_per_shard=24",
    "synthesis.batch_size=24",
    "student.max_minutes=0.04",
    "student.batch_size=8",
    "student.log_every=20",
    "eval.batch_size=8",
    "experiment.seeds=[0]",
    "experiment.quality_pairs=24",
    "experiment.figure_samples=3",
]
RESULT_FILES = ("results.md", "results.json", "per_class_iou.png", "samples_b_cfg.png", "config.yaml")


def diffusion_flops(model_dir: Path, batch_size: int, device: torch.device) -> dict:
    """FLOPs of one training step (forward + backward at the training batch size) and of one
    sampler forward pass per sample, counted on the trained model."""
    from dakter_scale.diffusion.model import load_model_folder

    model = load_model_folder(model_dir, device=device)
    unet, r, c = model.unet, int(model.info["resolution"]), int(model.info["channels"])
    unet.train()
    x = torch.randn(batch_size, c, r, r, device=device)
    t = torch.randint(0, 1000, (batch_size,), device=device)
    train = count_flops(lambda: unet(x, t).sample.float().square().mean().backward())
    unet.eval()
    with torch.no_grad():
        forward = count_flops(lambda: unet(x[:4], t[:4]))
    return {
        "train_step": train,
        "forward_per_sample": forward // 4,
        "parameters": sum(p.numel() for p in unet.parameters()),
    }


def throughput(work: Path, cfg, peak: dict, device: torch.device) -> dict:
    model_dir = work / "models" / "b_cfg"
    train = json.loads((model_dir / "logs" / "train.json").read_text())
    synth = json.loads((work / "generated" / "b_cfg" / "throughput.json").read_text())
    flops = diffusion_flops(model_dir, cfg.diffusion.batch_size, device)
    per_pair = flops["forward_per_sample"] * cfg.sampling.steps
    achieved_train = flops["train_step"] * train["steps_per_second"]
    achieved_sampling = per_pair * synth["pairs_per_second"]
    students: dict[str, list[float]] = {}
    for record in sorted((work / "students").glob("*/logs/train.json")):
        arch = record.parent.parent.name.split("-")[1]
        students.setdefault(arch, []).append(json.loads(record.read_text())["steps_per_second"])
    return {
        "device": device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "matmul_peak": peak,
        "diffusion": {
            "parameters": flops["parameters"],
            "steps": train["steps"],
            "seconds": train["seconds"],
            "steps_per_second": train["steps_per_second"],
            "batch_size": cfg.diffusion.batch_size,
            "mixed_precision": train["mixed_precision"],
            "flops_per_step": flops["train_step"],
            "achieved_flops_per_second": achieved_train,
            "fraction_of_peak": achieved_train / peak["flops_per_second"],
        },
        "sampling": {
            "sampler": f"{cfg.sampling.sampler}-{cfg.sampling.steps}",
            "pairs": synth["pairs"],
            "seconds": synth["seconds"],
            "pairs_per_second": synth["pairs_per_second"],
            "flops_per_pair": per_pair,
            "achieved_flops_per_second": achieved_sampling,
            "fraction_of_peak": achieved_sampling / peak["flops_per_second"],
        },
        "students_steps_per_second_median": {arch: statistics.median(v) for arch, v in students.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="results folder (at most 8 files)")
    p.add_argument(
        "--work", help="work folder with the models, shards and students (resumable; default OUT/../NAME-work)"
    )
    p.add_argument("--config", default=str(CONFIG), help="experiment config (default configs/gpu_evidence.yaml)")
    p.add_argument("--tiny", action="store_true", help="a tiny setting that runs in a few minutes on a CPU")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = p.parse_intermixed_args()  # OUT, flags and key=value in any order

    from dakter_scale.cli import run

    def body() -> int:
        from dakter_scale.experiment import run_experiment
        from dakter_scale.training import setup_logging

        setup_logging()
        t0 = time.time()
        out = Path(args.out)
        work = Path(args.work) if args.work else out.parent / f"{out.name}-work"
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        print(f"device: {device_name()}", flush=True)
        cfg = load_config(args.config, (TINY if args.tiny else []) + list(args.overrides))
        if not torch.cuda.is_available() and not args.tiny:
            logging.getLogger("dakter_scale").warning(
                "no CUDA device: the full setting is sized for one GPU (use --tiny on a CPU)"
            )
        run_experiment(cfg, work, progress=False)
        record = throughput(work, cfg, matmul_peak(device), device)
        record["wall_clock_seconds"] = round(time.time() - t0, 1)
        out.mkdir(parents=True, exist_ok=True)
        for name in RESULT_FILES:
            shutil.copyfile(work / name, out / name)
        (out / "throughput.json").write_text(json.dumps(record, indent=2) + "\n")
        d, s = record["diffusion"], record["sampling"]
        print(
            f"{record['device']}: diffusion {d['steps']} steps at {d['steps_per_second']:.1f} steps/s "
            f"({100 * d['fraction_of_peak']:.1f} % of the measured {peak_text(record['matmul_peak'])}); "
            f"sampling {s['pairs_per_second']:.1f} pairs/s ({100 * s['fraction_of_peak']:.1f} %); "
            f"{record['wall_clock_seconds']:.0f} s in all; results in {out}",
            flush=True,
        )
        return 0

    run(body)
    return 0


def peak_text(peak: dict) -> str:
    return f"{peak['dtype']} matmul peak {peak['flops_per_second'] / 1e12:.1f} TFLOP/s"


if __name__ == "__main__":
    main()
