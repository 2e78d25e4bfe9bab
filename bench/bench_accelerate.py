"""Accelerate overhead: training steps/s under accelerate (1 process) / a bare PyTorch loop.

Same model, same batch, same optimiser, one thread, in one process. The two loops alternate
step by step (bare, accelerate, bare, ...) so that load from other work on a shared machine hits
both alike. Reported: the median over pairs of (bare step time / accelerate step time) -- robust
to load bursts, the headline -- and the ratio of the two medians.

  bare        loss = mixed_loss(model(x)); backward; clip_grad_norm_; step; zero_grad
  accelerate  the student trainer's step: make_accelerator() + prepare(model, optimizer),
              accelerator.autocast(), accelerator.backward, accelerator.clip_grad_norm_

    python bench/bench_accelerate.py                            # the student (unet/resnet18), 64 px, batch 16
    python bench/bench_accelerate.py --model diffusion --size 32 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def build(model: str, size: int):
    if model == "student":
        from dakter_scale.config import StudentConfig
        from dakter_scale.student.models import build_student

        s = StudentConfig()
        return build_student(s.arch, s.encoder, 5, None, s.encoder_depth)
    from dakter_scale.config import UNetConfig
    from dakter_scale.diffusion.model import build_unet

    return build_unet(UNetConfig(), size, 6)


def make_batch(model: str, size: int, batch_size: int):
    g = torch.Generator().manual_seed(0)
    if model == "student":
        x = torch.randn(batch_size, 1, size, size, generator=g)
        q = torch.softmax(torch.randn(batch_size, 5, size, size, generator=g), 1)
        return x, q
    z = torch.randn(batch_size, 6, size, size, generator=g)
    t = torch.randint(0, 1000, (batch_size,), generator=g)
    return z, t


def loss_of(model_name: str, model, batch):
    if model_name == "student":
        from dakter_scale.core.kd import mixed_loss

        x, q = batch
        loss, _ = mixed_loss(model(x), q.argmax(1), q, torch.ones(len(x), dtype=torch.bool))
        return loss
    z, t = batch
    return torch.nn.functional.mse_loss(model(z, t).sample, z)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["student", "diffusion"], default="student")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pairs", type=int, default=40, help="timed (bare, accelerate) step pairs, after 2 warm-up pairs")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "accelerate.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    from dakter_scale.training import make_accelerator

    batch = make_batch(args.model, args.size, args.batch_size)
    torch.manual_seed(0)
    bare_model = build(args.model, args.size)
    bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=1e-4)
    torch.manual_seed(0)
    accelerator = make_accelerator("auto")
    acc_model = build(args.model, args.size)
    acc_model, acc_opt = accelerator.prepare(acc_model, torch.optim.AdamW(acc_model.parameters(), lr=1e-4))

    def bare_step():
        loss = loss_of(args.model, bare_model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bare_model.parameters(), 1.0)
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    def accelerate_step():
        with accelerator.autocast():
            loss = loss_of(args.model, acc_model, batch)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(acc_model.parameters(), 1.0)
        acc_opt.step()
        acc_opt.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"bare": [], "accelerate": []}
    for i in range(args.pairs + 2):
        for name, step in (("bare", bare_step), ("accelerate", accelerate_step)):
            t0 = time.perf_counter()
            step()
            if i >= 2:  # warm-up pairs: allocator and caches
                times[name].append(time.perf_counter() - t0)
    bare, acc = statistics.median(times["bare"]), statistics.median(times["accelerate"])
    paired = statistics.median(b / a for b, a in zip(times["bare"], times["accelerate"]))
    result = {
        "benchmark": "accelerate_overhead",
        "command": " ".join(["python bench/bench_accelerate.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "model": args.model,
        "parameters": sum(p.numel() for p in bare_model.parameters()),
        "size": args.size,
        "batch_size": args.batch_size,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "timed_pairs": len(times["bare"]),
        "bare_step_s": round(bare, 4),
        "accelerate_step_s": round(acc, 4),
        "steps_per_s": {"bare": round(1 / bare, 3), "accelerate": round(1 / acc, 3)},
        "ratio_accelerate_over_bare": round(paired, 4),
        "ratio_of_medians": round(bare / acc, 4),
        "target": 0.97,
        "all_step_s": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"| model ({args.model}, {args.size} px, batch {args.batch_size}, 1 thread) | steps/s | ratio |")
    print("|---|---:|---:|")
    print(f"| bare PyTorch loop | {1 / bare:.3f} | 1.000 |")
    print(
        f"| accelerate, 1 process ({accelerator.device}, {accelerator.mixed_precision}) | {1 / acc:.3f} | {paired:.3f} (ratio of medians {bare / acc:.3f}) |"
    )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
