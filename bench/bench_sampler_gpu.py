"""The sampling loop's inference settings, measured where they matter (issue 16 item 3, GPU half): fp32
against bf16 autocast (the loop's own on a GPU), torch.compile, and CUDA graphs (torch.compile's
"reduce-overhead" mode), each at a few batch sizes, with pairs/s and the fraction of the device's
matrix-multiply peak (bf16 8192^3 on a GPU, fp32 --peak-n^3 on a CPU), measured in the same run
before and after the settings (their median).

    python bench/bench_sampler_gpu.py --config configs/gpu_evidence.yaml --out F     # on a GPU, ~3 min
    python bench/bench_sampler_gpu.py --config configs/osd.yaml --batches 16,64 --out F  # paper scale
    python bench/bench_sampler_gpu.py --device cpu --batches 8 --steps 4 --out F      # the same code on a CPU

What is timed is the real loop (`sample_pairs`, the config's sampler unless --sampler) on a model
built untrained from the config (the work does not depend on the weights), median of --repeats calls
after warm-up calls that include compilation (its seconds are recorded apart). Settings:
  eager-fp32     autocast off (sample_pairs(..., autocast=False))
  eager-bf16     the loop as it runs in synthesis on a GPU
  compile-bf16   model.unet = torch.compile(unet)
  graphs-bf16    torch.compile(unet, mode="reduce-overhead"): CUDA graphs (GPU only)
On a CPU only eager-fp32 and compile-fp32 run (bf16 autocast is the GPU's setting). A compiled loop's
floats differ in the last bits from the eager loop's, so a set drawn with it is another dataset: none
of these settings is switched on in synthesis by this script; it says whether one pays.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_sampler import build_model, flops_per_evaluation  # noqa: E402

from dakter_scale.config import load_config  # noqa: E402
from dakter_scale.diffusion import sample  # noqa: E402

from measure import device_name, matmul_peak, timed  # noqa: E402


def settings(device: torch.device) -> list[tuple[str, str | None, bool]]:
    """(name, torch.compile mode or None for eager, bf16 autocast) of each setting this device runs."""
    if device.type == "cuda":
        return [
            ("eager-fp32", None, False),
            ("eager-bf16", None, True),
            ("compile-bf16", "default", True),
            ("graphs-bf16", "reduce-overhead", True),
        ]
    return [("eager-fp32", None, False), ("compile-fp32", "default", False)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config",
        default=str(ROOT / "configs" / "gpu_evidence.yaml"),
        help="the model's config (default: the GPU evidence run's 64 px model)",
    )
    p.add_argument("--out", required=True, help="JSON record to write")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", default="64,256", help="pairs per sample_pairs call, comma-separated")
    p.add_argument("--sampler", help="sampler (default: the config's sampling.sampler)")
    p.add_argument("--steps", type=int, help="network evaluations per pair (default: the config's sampling.steps)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per setting (median)")
    p.add_argument("--only", help="comma-separated setting names to run (default: all this device runs)")
    p.add_argument(
        "--peak-n",
        type=int,
        help="side of the peak's matrix product (default: 8192 bf16 on a GPU, 1024 fp32 on a CPU; 2048 gives a CPU's peak more closely)",
    )
    args = p.parse_args()

    cfg = load_config(args.config)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible to torch")
    chosen = settings(device)
    if args.only:
        names = {s[0] for s in chosen}
        wanted = args.only.split(",")
        unknown = [w for w in wanted if w not in names]
        if unknown:
            sys.exit(f"--only: {', '.join(unknown)} not among this device's settings {sorted(names)}")
        chosen = [s for s in chosen if s[0] in wanted]
    sampling = dataclasses.replace(
        cfg.sampling,
        **({"sampler": args.sampler} if args.sampler else {}),
        **({"steps": args.steps} if args.steps else {}),
    )
    sampling.validate()
    model = build_model(cfg)
    flops = flops_per_evaluation(model, batch=1)  # counted on the CPU, before the move: the same work on any device
    model.unet.to(device)
    eager = model.unet
    peaks = [matmul_peak(device, n=args.peak_n)]  # before and after the runs: the median of the two is the peak
    record: dict = {
        "device": device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "config": Path(args.config).name,
        "resolution": model.resolution,
        "parameters": sum(t.numel() for t in eager.parameters()),
        "sampler": f"{sampling.sampler}-{sampling.steps}",
        "flops_per_pair": flops * sampling.steps,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "runs": [],
    }
    print(
        f"{record['device']}: {record['parameters'] / 1e6:.1f} M parameters, {record['sampler']}, {flops * sampling.steps / 1e9:.2f} GFLOP per pair; "
        f"peak before the runs {peaks[0]['flops_per_second'] / 1e12:.2f} TFLOP/s ({peaks[0]['dtype']} {peaks[0]['n']}^3)",
        flush=True,
    )
    for name, mode, bf16 in chosen:
        torch._dynamo.reset()
        model.unet = eager if mode is None else torch.compile(eager, mode=mode)
        for batch in [int(b) for b in args.batches.split(",")]:
            seeds = list(range(batch))

            def run():
                return sample.sample_pairs(model, seeds, sampling, device, autocast=bf16)

            t0 = time.perf_counter()
            try:
                run()  # the first call compiles
                if device.type == "cuda":
                    torch.cuda.synchronize()
            except Exception as e:  # a setting that cannot run here is a result, not the end of the run
                failed = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:500]}"
                print(f"{name} batch {batch}: failed: {failed}", flush=True)
                record["runs"].append({"setting": name, "batch": batch, "failed": failed})
                continue
            first = time.perf_counter() - t0
            seconds = timed(run, device, args.repeats, warmup=1)
            row = {
                "setting": name,
                "batch": batch,
                "first_call_seconds": first,
                "seconds_per_call": seconds,
                "pairs_per_second": batch / seconds,
                "flops_per_second": flops * sampling.steps * batch / seconds,
            }
            if device.type == "cuda":
                row["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()
            record["runs"].append(row)
            print(
                f"{name} batch {batch}: {row['pairs_per_second']:.2f} pairs/s, {row['flops_per_second'] / 1e12:.3f} TFLOP/s (first call {first:.1f} s)",
                flush=True,
            )
    model.unet = eager
    peaks.append(matmul_peak(device, n=args.peak_n))
    record["matmul_peak"] = {
        "samples": peaks,
        "flops_per_second": statistics.median(p["flops_per_second"] for p in peaks),
    }
    for row in record["runs"]:
        if "failed" not in row:
            row["fraction_of_peak"] = row["flops_per_second"] / record["matmul_peak"]["flops_per_second"]
    done = [r for r in record["runs"] if "failed" not in r]
    if done:
        best = max(done, key=lambda r: r["pairs_per_second"])
        base = [r for r in done if r["setting"] == chosen[0][0] and r["batch"] == best["batch"]]
        record["best"] = {
            **best,
            "speed_vs_" + chosen[0][0]: best["pairs_per_second"] / base[0]["pairs_per_second"] if base else None,
        }
        record["million_pairs_gpu_hours" if device.type == "cuda" else "million_pairs_device_hours"] = (
            1e6 / best["pairs_per_second"] / 3600
        )
        print(
            f"best: {best['setting']} batch {best['batch']}: {best['pairs_per_second']:.2f} pairs/s, {100 * best['fraction_of_peak']:.1f} % of the peak "
            f"({record['matmul_peak']['flops_per_second'] / 1e12:.3f} TFLOP/s, median of {[round(p['flops_per_second'] / 1e12, 3) for p in peaks]})",
            flush=True,
        )
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
