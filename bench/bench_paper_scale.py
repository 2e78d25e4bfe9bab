"""The paper scale, measured for a few steps and projected: seconds per training step and per sampled
pair of the joint DDPM in configs/osd.yaml (256 px, ~110 M parameters), FLOPs per step and per pair,
and the GPU-hours that training and a million pairs would take.

    python bench/bench_paper_scale.py --out bench/results/paper_scale_cpu.json --train-batch 2 --sample-batch 2
    python bench/bench_paper_scale.py --out bench/results/paper_scale_gpu.json     # on a GPU: the config's batches

What is timed is the model's own work, with random tensors of the right shapes (no data loading):
one training step = forward (bf16 autocast on a GPU) + backward of the denoising MSE + AdamW step;
one sampler evaluation = a forward pass without gradients. Medians after warm-up. FLOPs are counted
with torch.utils.flop_counter; the matrix-multiply peak is measured in the same run.

Projections (stated assumptions, not measurements): training runs diffusion.max_steps steps on
`--gpus` data-parallel GPUs with the per-GPU batch of the config and perfect scaling; a pair costs
sampling.steps evaluations at the sample batch; a million pairs split evenly over the GPUs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dakter_scale.config import load_config  # noqa: E402
from dakter_scale.data.osd import CLASSES as OSD_CLASSES  # noqa: E402
from dakter_scale.diffusion.model import build_unet  # noqa: E402

from measure import count_flops, device_name, matmul_peak, timed  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "osd.yaml"))
    p.add_argument("--out", required=True, help="JSON record to write")
    p.add_argument("--train-batch", type=int, help="batch of a timed training step (default: diffusion.batch_size)")
    p.add_argument(
        "--sample-batch", type=int, help="batch of a timed sampler evaluation (default: synthesis.batch_size)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions of each (median)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the projection")
    p.add_argument("--channels-last", action="store_true", help="also time the channels_last memory format")
    args = p.parse_args()

    cfg = load_config(args.config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    r, c = cfg.data.resolution, 1 + len(OSD_CLASSES)
    train_batch = args.train_batch or cfg.diffusion.batch_size
    sample_batch = args.sample_batch or cfg.synthesis.batch_size
    print(
        f"device: {device_name()}; {r} px, {c} channels, train batch {train_batch}, sample batch {sample_batch}",
        flush=True,
    )

    torch.manual_seed(0)
    unet = build_unet(cfg.diffusion.unet, r, c).to(device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.diffusion.lr)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)

    def inputs(batch: int, memory_format=torch.contiguous_format):
        z = torch.randn(batch, c, r, r, device=device).to(memory_format=memory_format)
        return z, torch.randint(0, cfg.diffusion.num_train_timesteps, (batch,), device=device)

    def train_step(z, t):
        with autocast:
            out = unet(z, t).sample
        loss = (out.float() - z).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(z, t):
        with autocast:
            unet(z, t)

    record = {
        "device": device_name(),
        "torch": torch.__version__,
        "config": Path(args.config).name,
        "parameters": sum(p.numel() for p in unet.parameters()),
        "resolution": r,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "matmul_peak": matmul_peak(device),
    }
    formats = [("contiguous", torch.contiguous_format)] + (
        [("channels_last", torch.channels_last)] if args.channels_last else []
    )
    variants = {}
    for name, fmt in formats:
        unet.to(memory_format=fmt)
        zt, tt = inputs(train_batch, fmt)
        zs, ts = inputs(sample_batch, fmt)
        variants[name] = {
            "train_step_seconds": timed(lambda: train_step(zt, tt), device, args.repeats),
            "evaluation_seconds": timed(lambda: evaluate(zs, ts), device, args.repeats),
        }
        print(
            f"{name}: train step {variants[name]['train_step_seconds']:.4f} s, evaluation {variants[name]['evaluation_seconds']:.4f} s",
            flush=True,
        )
    best = min(
        variants,
        key=lambda k: variants[k]["train_step_seconds"] + cfg.sampling.steps * variants[k]["evaluation_seconds"],
    )
    unet.to(memory_format=torch.contiguous_format)
    zt, tt = inputs(train_batch)
    zs, ts = inputs(sample_batch)
    flops_step = count_flops(lambda: train_step(zt, tt))
    flops_eval = count_flops(lambda: evaluate(zs, ts))
    step_s, eval_s = variants[best]["train_step_seconds"], variants[best]["evaluation_seconds"]
    pair_s = cfg.sampling.steps * eval_s / sample_batch
    peak = record["matmul_peak"]["flops_per_second"]
    steps, gpus = cfg.diffusion.max_steps, args.gpus
    record.update(
        {
            "variants": variants,
            "best_variant": best,
            "train": {
                "batch": train_batch,
                "seconds_per_step": step_s,
                "flops_per_step": flops_step,
                "fraction_of_peak": flops_step / step_s / peak,
            },
            "sampling": {
                "sampler": f"{cfg.sampling.sampler}-{cfg.sampling.steps}",
                "batch": sample_batch,
                "seconds_per_evaluation": eval_s,
                "flops_per_pair": flops_eval / sample_batch * cfg.sampling.steps,
                "seconds_per_pair": pair_s,
                "fraction_of_peak": flops_eval / eval_s / peak,
            },
            "projection": {
                "assumptions": f"{steps} training steps of batch {train_batch} per GPU on {gpus} GPUs, perfect data-parallel scaling; pairs spread evenly over {gpus} GPUs",
                "training_gpu_hours": steps * step_s * gpus / 3600,
                "training_wall_hours": steps * step_s / 3600,
                "million_pairs_gpu_hours": 1e6 * pair_s / 3600,
                "million_pairs_wall_hours": 1e6 * pair_s / 3600 / gpus,
            },
        }
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    t, s, pr = record["train"], record["sampling"], record["projection"]
    print(
        f"{record['device']}: train step {t['seconds_per_step']:.3f} s ({t['flops_per_step'] / 1e12:.2f} TFLOP, {100 * t['fraction_of_peak']:.1f} % of peak); "
        f"pair {s['seconds_per_pair']:.3f} s ({s['flops_per_pair'] / 1e12:.2f} TFLOP, {100 * s['fraction_of_peak']:.1f} %); "
        f"training {pr['training_gpu_hours']:.1f} GPU-h, 1e6 pairs {pr['million_pairs_gpu_hours']:.1f} GPU-h ({best}); written to {out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
