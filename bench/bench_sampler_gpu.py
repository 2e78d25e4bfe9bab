"""The sampling loop on a GPU (issue 31 item 3; issue 16 item 3): pairs/s and the fraction of the bf16
matmul peak for the distilled and the undistilled samplers, at 256 and 64 px, batch sizes swept, under
the synthesis settings that set the network's arithmetic: sampling.precision (bf16 autocast) and
sampling.compile (true: torch.compile; reduce-overhead: torch.compile with CUDA graphs).

    bash bench/gpu_run.sh bench/bench_sampler_gpu.py --out OUT/sampler_gpu.json      # a bare GPU image, ~6-8 min on an H100
    python bench/bench_sampler_gpu.py --smoke --out F                                 # the same code on this CPU, seconds
    python bench/bench_sampler_gpu.py --device cpu --config configs/experiment_64.yaml --batches 8 --out F  # one CPU config

The models are built from their configs (default: configs/osd.yaml, the paper scale, 256 px, 113.7 M
parameters; configs/gpu_evidence.yaml, 64 px, 25.3 M) with randomly initialised weights: nothing is
trained. The undistilled sampler is the config's (DPM-Solver++-20 in both) or --sampler/--steps. A
distilled sampler of N evaluations per pair (--distilled, default 1,2,4,8) runs on the same network as a
distilled folder: the model's dakter.json gains the "distilled" record jobs/distill.py writes (its
timesteps), in memory, so sample_pairs takes the `distilled` sampler's own path (grid_step, clipping at
the last step). What a sampler costs per network evaluation does not depend on the weights, so these
timings are those of a trained distilled folder; the pairs themselves are noise.

Settings (the values synthesis records in a set's fingerprint; the device's defaults first):
  eager-bf16     precision bf16, compile false (on a GPU with bf16 the arithmetic of precision auto)
  compile-bf16   precision bf16, compile true             (torch.compile, default mode)
  graphs-bf16    precision bf16, compile reduce-overhead  (torch.compile with CUDA graphs)
  eager-fp32     precision fp32, compile false            (on request: --only)
On a CPU: eager-fp32 and compile-fp32 (compile true; it needs a C++ toolchain). The network goes through
diffusion.sample.compile_network, as a synthesis writer's does, once per (setting, config, batch)
after torch._dynamo.reset(): each batch is compiled with static shapes, as a writer with a fixed batch
compiles it. A group's first calls (distilled-max(N), then the undistilled sampler at 3 steps) compile
and, with CUDA graphs, record the graphs; their seconds are recorded apart ("warm_seconds"). Then each
sampler's sample_pairs calls are timed (median of --repeats). FLOPs per evaluation are counted with
torch.utils.flop_counter (convolutions and matrix products); the peak is a bf16 8192^3 product on a GPU
(fp32 --peak-n^3 on a CPU), measured before and after the runs (their median).

Eager settings sweep --batches; the compiled ones run at --compiled-batches (default: each config's
largest batch), since every (setting, batch) is a compilation. Groups run in this order: per config,
eager, compile, graphs; a group is not started once --budget-s seconds have passed since the start
(recorded as skipped), and the JSON is rewritten after every measured point, so a run cut short still
leaves what it measured ("complete": false until the end). On a CPU the GPU-only fields (the fraction of
the bf16 peak, GPU memory, GPU-hours per million pairs) are null.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_sampler import as_distilled, build_model  # noqa: E402

from dakter_scale.config import load_config  # noqa: E402
from dakter_scale.diffusion import sample  # noqa: E402

from measure import count_flops, device_name, matmul_peak, timed  # noqa: E402

# name -> (sampling.precision, sampling.compile)
SETTINGS = {
    "eager-fp32": ("fp32", False),
    "eager-bf16": ("bf16", False),
    "compile-bf16": ("bf16", True),
    "graphs-bf16": ("bf16", "reduce-overhead"),
    "compile-fp32": ("fp32", True),
}
GPU_CONFIGS = ("configs/osd.yaml", "configs/gpu_evidence.yaml")
GPU_BATCHES = {256: (16, 64), 64: (32, 128, 512)}  # per resolution, sized for ~6-8 min on an H100
SMOKE = {"config": "configs/experiment_demo.yaml", "batches": "2", "steps": 2, "distilled": "1,2", "peak_n": 256}
WARM_STEPS = 3  # the undistilled sampler's warm call: the network's shapes are those of the timed calls
WEIGHTS = (
    "randomly initialised (torch.manual_seed(0)), untrained; distilled-N is the same network with the "
    "'distilled' record jobs/distill.py writes (in memory, no training): a sampler's cost per network "
    "evaluation does not depend on the weights"
)


def settings(device: torch.device) -> tuple[list[str], list[str]]:
    """(the settings this device runs, those run by default), in run order."""
    if device.type == "cuda":
        return ["eager-bf16", "compile-bf16", "graphs-bf16", "eager-fp32"], [
            "eager-bf16",
            "compile-bf16",
            "graphs-bf16",
        ]
    return ["eager-fp32", "compile-fp32"], ["eager-fp32", "compile-fp32"]


def parse_batches(spec: str | None, n_configs: int, flag: str) -> list[list[int]] | None:
    """'16,64;32,128' -> one list per config; one list serves every config."""
    if spec is None:
        return None
    groups = [[int(b) for b in g.split(",") if b.strip()] for g in spec.split(";")]
    if len(groups) == 1:
        groups *= n_configs
    if len(groups) != n_configs or not all(groups):
        sys.exit(f"{flag}: {spec!r} gives {len(groups)} batch lists for {n_configs} configs")
    return groups


def write(record: dict, out: Path) -> None:
    """The record as it stands, fractions recomputed against the peaks measured so far; atomically."""
    peaks = record["matmul_peak"]["samples"]
    peak = statistics.median(p["flops_per_second"] for p in peaks) if peaks else None
    record["matmul_peak"]["flops_per_second"] = peak
    gpu = record["device_type"] == "cuda"
    for row in record["runs"]:
        if "failed" not in row and peak:
            row["fraction_of_peak"] = row["flops_per_second"] / peak
            row["fraction_of_bf16_peak"] = row["fraction_of_peak"] if gpu else None
    record["summary"] = summary(record)
    record["elapsed_seconds"] = round(time.perf_counter() - record["_t0"], 1)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps({k: v for k, v in record.items() if k != "_t0"}, indent=2) + "\n")
    os.replace(tmp, out)


def summary(record: dict) -> dict:
    """Per resolution and sampler: the fastest point, and each setting's pairs/s over the first setting's
    at the same batch (the speed-up of compile and CUDA graphs)."""
    out: dict = {}
    done = [r for r in record["runs"] if "failed" not in r]
    for res in sorted({r["resolution"] for r in done}):
        per: dict = {}
        for name in dict.fromkeys(r["sampler"] for r in done if r["resolution"] == res):
            rows = [r for r in done if r["resolution"] == res and r["sampler"] == name]
            best = max(rows, key=lambda r: r["pairs_per_second"])
            base = {r["batch"]: r["pairs_per_second"] for r in rows if r["setting"] == record["settings"][0]}
            per[name] = {
                **{
                    k: best.get(k)
                    for k in (
                        "evaluations_per_pair",
                        "setting",
                        "batch",
                        "pairs_per_second",
                        "seconds_per_evaluation_per_pair",
                        "fraction_of_peak",
                        "fraction_of_bf16_peak",
                        "gpu_hours_per_million_pairs",
                    )
                },
                f"speed_vs_{record['settings'][0]}": {
                    f"{r['setting']} batch {r['batch']}": r["pairs_per_second"] / base[r["batch"]]
                    for r in rows
                    if r["batch"] in base and r["setting"] != record["settings"][0]
                },
            }
        out[str(res)] = per
    return out


def flops_per_evaluation(unet, channels: int, resolution: int, device: torch.device) -> float:
    """FLOPs of one network evaluation of one pair, counted on the device (the same count on any)."""
    z = torch.randn(1, channels, resolution, resolution, device=device)
    with torch.no_grad():
        return float(count_flops(lambda: unet(z, torch.full((1,), 500, device=device))))


def inductor_counters() -> dict:
    """torch's own count of compiled graphs, graph breaks and CUDA-graph skips (a setting that silently
    ran without its graphs shows here)."""
    try:
        from torch._dynamo.utils import counters

        return {
            "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0)),
        }
    except Exception as e:  # private API: its absence is not the bench's failure
        return {"unavailable": f"{type(e).__name__}: {e}"}


def run_group(model, eager_unet, plan: dict, name: str, batch: int, device, args, record, out) -> None:
    """One (config, setting, batch): compile (if the setting does), warm, then time every sampler."""
    precision, compile_mode = SETTINGS[name]
    group = {"resolution": model.resolution, "config": plan["config"], "setting": name, "batch": batch}
    record["groups"].append(group)
    elapsed = time.perf_counter() - record["_t0"]
    if elapsed > args.budget_s:
        group["status"] = f"skipped: {elapsed:.0f} s had passed, over --budget-s {args.budget_s:g}"
        print(f"{model.resolution} px {name} batch {batch}: {group['status']}", flush=True)
        write(record, out)
        return
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model.unet = sample.compile_network(eager_unet, compile_mode)
    seeds = list(range(batch))
    base = dataclasses.replace(plan["undistilled"], precision=precision, compile=compile_mode)
    samplers = [
        (
            f"distilled-{n}",
            as_distilled(model, n),
            dataclasses.replace(base, sampler="distilled", steps=n, eta=0.0, decode_last=min(base.decode_last, n)),
        )
        for n in sorted(args.distilled_steps, reverse=True)
    ]
    samplers.append((f"{base.sampler}-{base.steps}", model, base))
    group["warm_seconds"] = {}

    def call(m, cfg):
        return sample.sample_pairs(m, seeds, cfg, device)

    # warm-up: distilled-max(N) (grid_step's shapes: t per pair), then the undistilled sampler at a few steps (t shared)
    warm = []
    if args.distilled_steps:
        warm.append(("distilled", samplers[0][1], samplers[0][2]))
    warm.append(("undistilled", model, dataclasses.replace(base, steps=min(WARM_STEPS, base.steps), decode_last=1)))
    for kind, m, cfg in warm:
        t0 = time.perf_counter()
        try:
            call(m, cfg)
            if device.type == "cuda":
                torch.cuda.synchronize()
        except Exception as e:  # a setting that cannot run here is a result, not the end of the run
            group["status"] = f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:500]}"
            print(f"{model.resolution} px {name} batch {batch}: {group['status']}", flush=True)
            record["runs"].append({**group, "failed": group["status"]})
            write(record, out)
            return
        group["warm_seconds"][kind] = time.perf_counter() - t0
    for label, m, cfg in samplers:
        seconds = timed(lambda m=m, cfg=cfg: call(m, cfg), device, args.repeats, warmup=0)
        nfe = cfg.steps
        row = {
            "resolution": model.resolution,
            "config": plan["config"],
            "setting": name,
            "precision": precision,
            "compile": compile_mode,
            "batch": batch,
            "sampler": label,
            "distilled": cfg.sampler == "distilled",
            "evaluations_per_pair": nfe,
            "seconds_per_call": seconds,
            "pairs_per_second": batch / seconds,
            "seconds_per_evaluation_per_pair": seconds / (nfe * batch),
            "flops_per_pair": plan["flops_per_evaluation"] * nfe,
            "flops_per_second": plan["flops_per_evaluation"] * nfe * batch / seconds,
            "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
            "gpu_hours_per_million_pairs": 1e6 / (batch / seconds) / 3600 if device.type == "cuda" else None,
        }
        record["runs"].append(row)
        write(record, out)
        print(
            f"{model.resolution} px {name} batch {batch} {label}: {row['pairs_per_second']:.2f} pairs/s, "
            f"{row['seconds_per_evaluation_per_pair'] * 1e3:.3f} ms per evaluation per pair, "
            f"{row['flops_per_second'] / 1e12:.3f} TFLOP/s = {100 * row['fraction_of_peak']:.1f} % of the peak",
            flush=True,
        )
    group["status"] = "done"
    group["torch_counters"] = inductor_counters()
    write(record, out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config",
        help="model config(s), comma-separated (default on a GPU: configs/osd.yaml,configs/gpu_evidence.yaml)",
    )
    p.add_argument("--out", required=True, help="JSON record to write (rewritten after every measured point)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="tiny and quick: the 32 px demo model on the CPU, batch 2")
    p.add_argument(
        "--batches",
        help="pairs per sample_pairs call, comma-separated, ';' between configs (default: 16,64 at 256 px, 32,128,512 at 64 px)",
    )
    p.add_argument(
        "--compiled-batches", help="the compiled settings' batches, as --batches (default: each config's largest)"
    )
    p.add_argument("--sampler", help="the undistilled sampler (default: the config's sampling.sampler)")
    p.add_argument("--steps", type=int, help="its evaluations per pair (default: the config's sampling.steps)")
    p.add_argument("--distilled", default="1,2,4,8", help="the distilled sampler's evaluations per pair ('' for none)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per point (median)")
    p.add_argument("--only", help="comma-separated setting names to run (default: this device's defaults)")
    p.add_argument("--budget-s", type=float, default=330.0, help="start no group after this many seconds (default 330)")
    p.add_argument(
        "--peak-n", type=int, help="side of the peak's matrix product (default: 8192 bf16 on a GPU, 1024 fp32 on a CPU)"
    )
    args = p.parse_args()

    if args.smoke:
        args.device = "cpu"
        args.config = args.config or SMOKE["config"]
        args.batches = args.batches or SMOKE["batches"]
        args.steps = args.steps or SMOKE["steps"]
        args.distilled = SMOKE["distilled"] if args.distilled == p.get_default("distilled") else args.distilled
        args.repeats = 1
        args.peak_n = args.peak_n or SMOKE["peak_n"]
        args.only = args.only or "eager-fp32"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible to torch")
    if device.type == "cpu" and not args.config:
        sys.exit("--config: on a CPU name the config (the default 256 and 64 px models are GPU work), or use --smoke")
    available, chosen = settings(device)
    if args.only:
        wanted = args.only.split(",")
        unknown = [w for w in wanted if w not in available]
        if unknown:
            sys.exit(f"--only: {', '.join(unknown)} not among this device's settings {sorted(available)}")
        chosen = [s for s in available if s in wanted]
    args.distilled_steps = [int(n) for n in args.distilled.split(",") if n.strip()]
    configs = args.config.split(",") if args.config else [str(ROOT / c) for c in GPU_CONFIGS]
    batches = parse_batches(args.batches, len(configs), "--batches")
    compiled_batches = parse_batches(args.compiled_batches, len(configs), "--compiled-batches")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    peaks = [matmul_peak(device, n=args.peak_n)]
    record: dict = {
        "_t0": time.perf_counter(),
        "device": device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)",
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "smoke": args.smoke,
        "weights": WEIGHTS,
        "settings": chosen,
        "setting_values": {s: {"precision": SETTINGS[s][0], "compile": SETTINGS[s][1]} for s in chosen},
        "repeats": args.repeats,
        "budget_s": args.budget_s,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "complete": False,
        "matmul_peak": {"samples": peaks},
        "models": {},
        "groups": [],
        "runs": [],
    }
    print(
        f"{record['device']}, torch {torch.__version__}; peak before the runs {peaks[0]['flops_per_second'] / 1e12:.2f} TFLOP/s "
        f"({peaks[0]['dtype']} {peaks[0]['n']}^3); settings {', '.join(chosen)}\nweights: {WEIGHTS}",
        flush=True,
    )
    write(record, out)
    for i, path in enumerate(configs):
        cfg = load_config(path)
        undistilled = dataclasses.replace(
            cfg.sampling,
            **({"sampler": args.sampler} if args.sampler else {}),
            **({"steps": args.steps} if args.steps else {}),
        )
        undistilled = dataclasses.replace(undistilled, decode_last=min(undistilled.decode_last, undistilled.steps))
        undistilled.validate()
        model = build_model(cfg)
        model.unet.to(device)
        flops = flops_per_evaluation(model.unet, 1 + model.num_classes, model.resolution, device)
        plan = {"config": Path(path).name, "undistilled": undistilled, "flops_per_evaluation": flops}
        record["models"][str(model.resolution)] = {
            "config": plan["config"],
            "parameters": sum(t.numel() for t in model.unet.parameters()),
            "flops_per_evaluation_per_pair": flops,
            "num_train_timesteps": model.scheduler.config.num_train_timesteps,
            "undistilled": f"{undistilled.sampler}-{undistilled.steps}",
            "distilled_evaluations_per_pair": args.distilled_steps,
        }
        print(
            f"{plan['config']}: {model.resolution} px, {record['models'][str(model.resolution)]['parameters'] / 1e6:.1f} M parameters, "
            f"{flops / 1e9:.2f} GFLOP per evaluation per pair",
            flush=True,
        )
        eager_unet = model.unet
        sweep = batches[i] if batches else list(GPU_BATCHES.get(model.resolution, (16, 64)))
        compiled = compiled_batches[i] if compiled_batches else [max(sweep)]
        for name in chosen:
            for batch in sweep if SETTINGS[name][1] is False else compiled:
                run_group(model, eager_unet, plan, name, batch, device, args, record, out)
        model.unet = eager_unet
        del model, eager_unet
        torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    peaks.append(matmul_peak(device, n=args.peak_n))
    record["complete"] = True
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    write(record, out)
    print(
        f"peak: {record['matmul_peak']['flops_per_second'] / 1e12:.3f} TFLOP/s (median of "
        f"{[round(p['flops_per_second'] / 1e12, 3) for p in peaks]}); elapsed {record['elapsed_seconds']:.0f} s",
        flush=True,
    )
    for res, per in record["summary"].items():
        for name, best in per.items():
            print(
                f"best at {res} px, {name}: {best['setting']} batch {best['batch']}, {best['pairs_per_second']:.2f} pairs/s, "
                f"{100 * best['fraction_of_peak']:.1f} % of the peak",
                flush=True,
            )
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
