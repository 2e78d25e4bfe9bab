"""Sampler compute efficiency (issue 16): FLOPs per pair, achieved FLOP/s of the sampling loop, and the
fraction of this machine's matrix-multiply peak measured in the same run; settings picked by measurement.

    python bench/bench_sampler.py --out bench/results/sampler_cpu.json      # about 6 min on the 2-core CPU

The model is the committed experiment's (configs/experiment_demo.yaml: 32 px, UNet channels [32, 64, 64],
1 + 5 channels); its weights do not change the work, so it is built untrained from the config.
1. FLOPs per network evaluation, counted with torch.utils.flop_counter over one forward pass (per pair:
   x the NFE, the sampler's steps). The counter counts convolutions and matrix products only.
2. Settings: seconds per (pair x network evaluation) of the real sampling loop (`sample_pairs`, DDIM with
   --sweep-steps steps) for every batch size x torch threads x memory format (contiguous, channels_last) x
   grad mode (no_grad, the loop's own; inference_mode around it); median of --repeats after a warm-up.
   The matmul peak (fp32 N^3, N = --peak-n) is measured at each thread count right before and after
   that thread count's settings (the median of both is the peak; the machine is shared and noisy).
3. At the fastest setting, every sampler of the frontier (ddim, ddpm, dpmsolver++ orders 2 and 3, unipc)
   with --steps steps, and the distilled sampler (jobs/distill.py's folders) at each of --distilled steps,
   in --repeats interleaved rounds with a peak measurement each: pairs/s, seconds per network evaluation,
   achieved FLOP/s and fraction of peak (medians).
4. Where the time goes at that setting: a torch.profiler table of one sampling call, grouped by op kind.
5. Projection: GPU-hours per million 256 px pairs for each frontier point, from the H200's measured
   seconds per network evaluation at the paper scale (bench/results/paper_scale_gpu.json) x NFE.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dakter_scale.config import SamplingConfig, load_config  # noqa: E402
from dakter_scale.core.distill import distill_timesteps  # noqa: E402
from dakter_scale.data.osd import CLASSES  # noqa: E402
from dakter_scale.diffusion.model import JointDiffusion, build_scheduler, build_unet  # noqa: E402
from dakter_scale.diffusion.sample import sample_pairs  # noqa: E402

from measure import count_flops, matmul_peak, timed  # noqa: E402

SAMPLERS = [("ddim", 2), ("ddpm", 2), ("dpmsolver++", 2), ("dpmsolver++", 3), ("unipc", 2)]
FRONTIER_NFE = (10, 20, 50, 100, 250, 1000)


def op_kind(name: str) -> str:
    """A profiler op's kind, for "where the time goes"."""
    op = name.removeprefix("aten::")
    if "conv" in op:
        return "convolution"
    if "group_norm" in op:
        return "group_norm"
    if op in ("addmm", "mm", "bmm", "linear", "matmul"):
        return "matmul / linear"
    if "upsample" in op:
        return "upsample"
    return "other (elementwise, copies, the scheduler)"


def build_model(cfg) -> JointDiffusion:
    """The config's joint model, untrained: the work per network evaluation does not depend on the weights."""
    d, k = cfg.diffusion, len(CLASSES)
    torch.manual_seed(0)
    unet = build_unet(d.unet, cfg.data.resolution, 1 + k).eval()
    scheduler = build_scheduler(d.num_train_timesteps, d.beta_schedule, d.prediction_type, d.rescale_zero_terminal_snr)
    label_type = d.prediction_type if d.label_prediction_type == "same" else d.label_prediction_type
    info = {
        "b": 0.5,
        "classes": list(CLASSES),
        "resolution": cfg.data.resolution,
        "prediction_type": d.prediction_type,
        "label_prediction_type": label_type,
    }
    return JointDiffusion(unet=unet, scheduler=scheduler, info=info)


def flops_per_evaluation(model: JointDiffusion, batch: int = 8) -> float:
    """FLOPs of one network evaluation for one pair (counted over a batch, divided by it)."""
    r, c = model.resolution, 1 + model.num_classes
    z = torch.randn(batch, c, r, r)
    with torch.no_grad():
        return count_flops(lambda: model.unet(z, torch.full((batch,), 500))) / batch


def as_distilled(model: JointDiffusion, steps: int) -> JointDiffusion:
    """The same network as a distilled folder of `steps` steps (dakter.json's "distilled" record): what its
    sampler costs does not depend on the weights either."""
    timesteps = distill_timesteps(model.scheduler.config.num_train_timesteps, steps)
    return JointDiffusion(model.unet, model.scheduler, {**model.info, "distilled": {"timesteps": timesteps}})


def time_sampling(model: JointDiffusion, sampling: SamplingConfig, batch: int, repeats: int, inference: bool) -> float:
    """Median seconds of one sample_pairs call over `batch` pairs."""
    seeds = list(range(batch))
    mode = torch.inference_mode if inference else contextlib.nullcontext

    def run():
        with mode():
            sample_pairs(model, seeds, sampling, "cpu")

    return timed(run, torch.device("cpu"), repeats, warmup=1)


def set_memory_format(model: JointDiffusion, channels_last: bool) -> None:
    model.unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def profile(model: JointDiffusion, sampling: SamplingConfig, batch: int) -> dict:
    """Self CPU time of one sampling call by op, and grouped by kind (op_kind)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    seeds = list(range(batch))
    sample_pairs(model, seeds, sampling, "cpu")  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        sample_pairs(model, seeds, sampling, "cpu")
    events = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()]
    total = sum(s for _, s, _ in events)
    kinds: dict[str, float] = {}
    for name, seconds, _ in events:
        kinds[op_kind(name)] = kinds.get(op_kind(name), 0.0) + seconds
    top = sorted(events, key=lambda e: -e[1])[:15]
    return {
        "seconds": total,
        "by_kind": {
            k: {"seconds": round(v, 4), "share": round(v / total, 4)}
            for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])
        },
        "top_ops": [
            {"op": n, "self_seconds": round(s, 4), "share": round(s / total, 4), "calls": c} for n, s, c in top
        ],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "experiment_demo.yaml"))
    p.add_argument("--out", required=True, help="JSON record to write")
    p.add_argument("--batches", default="1,8,32", help="batch sizes of the settings sweep")
    p.add_argument("--threads", default="1,2", help="torch thread counts of the settings sweep")
    p.add_argument("--sweep-steps", type=int, default=4, help="DDIM steps of one timed call in the settings sweep")
    p.add_argument("--steps", type=int, default=20, help="steps (= network evaluations) of each sampler's timed call")
    p.add_argument(
        "--distilled", default="1,2,4,8", help="step counts of the distilled sampler measured beside them ('' for none)"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed calls per setting (median)")
    p.add_argument("--peak-n", type=int, default=2048, help="side of the fp32 matrix product of the peak")
    p.add_argument(
        "--gpu",
        default=str(ROOT / "bench" / "results" / "paper_scale_gpu.json"),
        help="the H200 paper-scale record of the projection",
    )
    args = p.parse_args()

    cfg = load_config(args.config)
    model = build_model(cfg)
    params = sum(t.numel() for t in model.unet.parameters())
    flops = flops_per_evaluation(model)
    record: dict = {
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "config": Path(args.config).name,
        "resolution": model.resolution,
        "channels": 1 + model.num_classes,
        "parameters": params,
        "flops_per_evaluation_per_pair": flops,
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "settings": [],
        "peaks": {},
    }
    print(
        f"{params / 1e6:.2f} M parameters, {flops / 1e9:.3f} GFLOP per network evaluation per pair; load {record['loadavg_start']}",
        flush=True,
    )

    # 2. the settings sweep, each thread count between two peak measurements
    sweep = SamplingConfig(sampler="ddim", steps=args.sweep_steps)
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        peaks = [matmul_peak(torch.device("cpu"), n=args.peak_n)["flops_per_second"]]
        for batch in [int(b) for b in args.batches.split(",")]:
            for channels_last in (False, True):
                set_memory_format(model, channels_last)
                for inference in (False, True):
                    seconds = time_sampling(model, sweep, batch, args.repeats, inference)
                    per = seconds / (batch * sweep.steps)
                    row = {
                        "threads": threads,
                        "batch": batch,
                        "channels_last": channels_last,
                        "inference_mode": inference,
                        "seconds_per_pair_evaluation": per,
                        "flops_per_second": flops / per,
                    }
                    record["settings"].append(row)
                    print(
                        f"threads {threads} batch {batch:3d} channels_last {channels_last!s:5} inference_mode {inference!s:5}: {1e3 * per:7.2f} ms per pair-evaluation, {flops / per / 1e9:6.2f} GFLOP/s",
                        flush=True,
                    )
        peaks.append(matmul_peak(torch.device("cpu"), n=args.peak_n)["flops_per_second"])
        record["peaks"][str(threads)] = {"samples": peaks, "flops_per_second": statistics.median(peaks)}
        print(
            f"threads {threads}: fp32 {args.peak_n}^3 matmul peak {[round(v / 1e9, 1) for v in peaks]} GFLOP/s",
            flush=True,
        )
    for row in record["settings"]:
        row["fraction_of_peak"] = row["flops_per_second"] / record["peaks"][str(row["threads"])]["flops_per_second"]
    best = min(record["settings"], key=lambda r: r["seconds_per_pair_evaluation"])
    record["best_setting"] = best
    print(f"best: {best}", flush=True)

    # 3. every sampler at the best setting, in interleaved rounds (each round times every sampler once and
    # the peak once), so that load drifting on the shared machine reaches all of them alike
    torch.set_num_threads(best["threads"])
    set_memory_format(model, best["channels_last"])
    configs = {
        f"{name}:{args.steps}" + (f":{order}" if name in ("dpmsolver++", "unipc") else ""): (
            model,
            SamplingConfig(sampler=name, steps=args.steps, solver_order=order),
        )
        for name, order in SAMPLERS
    }
    for steps in [int(n) for n in args.distilled.split(",") if n]:
        configs[f"distilled:{steps}"] = (as_distilled(model, steps), SamplingConfig(sampler="distilled", steps=steps))
    times: dict[str, list[float]] = {key: [] for key in configs}
    peaks = []
    for key, (m, sampling) in configs.items():  # warm-up
        time_sampling(m, sampling, best["batch"], 1, best["inference_mode"])
    for _ in range(args.repeats):
        peaks.append(matmul_peak(torch.device("cpu"), n=args.peak_n)["flops_per_second"])
        for key, (m, sampling) in configs.items():
            times[key].append(time_sampling(m, sampling, best["batch"], 1, best["inference_mode"]))
    peak = statistics.median(peaks)
    record["sampler_peak"] = {"samples": peaks, "flops_per_second": peak, "threads": best["threads"], "n": args.peak_n}
    record["samplers"] = {}
    for key, samples in times.items():
        steps = configs[key][1].steps
        seconds = statistics.median(samples)
        per = seconds / (best["batch"] * steps)
        record["samplers"][key] = {
            "steps": steps,
            "seconds_samples": samples,
            "pairs_per_second": best["batch"] / seconds,
            "seconds_per_pair_evaluation": per,
            "flops_per_pair": flops * steps,
            "flops_per_second": flops / per,
            "fraction_of_peak": flops / per / peak,
        }
        print(
            f"{key}: {best['batch'] / seconds:.2f} pairs/s, {1e3 * per:.2f} ms per pair-evaluation, {flops / per / 1e9:.2f} GFLOP/s, {100 * flops / per / peak:.1f} % of {peak / 1e9:.1f}",
            flush=True,
        )
    ddim = record["samplers"][f"ddim:{args.steps}"]["seconds_per_pair_evaluation"]
    for row in record["samplers"].values():
        row["time_vs_ddim"] = row["seconds_per_pair_evaluation"] / ddim

    # 4. where the time goes
    record["profile"] = profile(model, SamplingConfig(sampler="ddim", steps=args.sweep_steps), best["batch"])
    conv = record["profile"]["by_kind"].get("convolution", {}).get("seconds", 0.0)
    if conv > 0:
        per_call = record["profile"]["seconds"] / (best["batch"] * args.sweep_steps)
        record["profile"]["convolution_flops_per_second"] = flops / per_call * record["profile"]["seconds"] / conv
    print(json.dumps(record["profile"]["by_kind"]), flush=True)

    # 5. projection from the H200 paper-scale record
    gpu = json.loads(Path(args.gpu).read_text())
    per_eval = gpu["sampling"]["seconds_per_evaluation"] / gpu["sampling"]["batch"]
    record["projection"] = {
        "source": str(Path(args.gpu).relative_to(ROOT)),
        "gpu": gpu["device"],
        "seconds_per_pair_evaluation": per_eval,
        "flops_per_pair_evaluation": gpu["sampling"]["flops_per_pair"] / int(gpu["sampling"]["sampler"].split("-")[1]),
        "assumption": "the UNet evaluation dominates on the GPU (the solvers' per-step tensor work is on 256 px pairs, ~1e-5 of a 495 GFLOP evaluation); GPU-hours = 1e6 x NFE x seconds per pair-evaluation / 3600",
        "gpu_hours_per_million_pairs": {str(n): 1e6 * n * per_eval / 3600 for n in FRONTIER_NFE},
    }
    record["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
