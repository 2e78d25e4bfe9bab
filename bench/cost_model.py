"""GPU-hours per million 256 px pairs, from the measured paper-scale numbers on the H200.

    python bench/cost_model.py                        (reads bench/results/paper_scale_gpu.json)
    python bench/cost_model.py --json bench/results/cost_model.json
    python bench/cost_model.py --sampler-gpu OUT/sampler_gpu.json   (measured sampler points beside the estimates)

Only measured inputs (bench/bench_paper_scale.py wrote them): the seconds of one network evaluation of a
batch of pairs in the sampling loop (bf16 autocast), its FLOPs, the bf16 matmul peak, and the seconds of
one training step. A pair's sampling cost is its network evaluations (NFE) times the measured seconds per
evaluation per pair; decoding, PNG encoding and writing are not in it (not measured on a GPU). Printed:
the GPU-hours per million pairs at each NFE, the NFE that fits a budget at the measured efficiency, the
fraction of the bf16 peak each NFE needs to fit it, and what one distillation optimiser step costs
(one training step plus the teacher's two evaluations per pair of the batch, each from the measured
parts; never measured as one step).

Where bench/bench_sampler_gpu.py has written its record (--sampler-gpu, default
bench/results/sampler_gpu.json when that file exists), each sampler it measured at the model's resolution
(the distilled sampler at 1, 2, 4, 8 evaluations per pair, the undistilled one) is put beside the
estimate: its fastest measured point (setting, batch), its seconds per evaluation per pair and
hours per million pairs on that record's device, against NFE x the paper-scale step time above.
The two records may come from different devices (the estimate's is the H200): both are named.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NFE = (1, 2, 4, 8, 10, 20, 50, 100)
PAIRS = 1_000_000
SAMPLER_GPU = "bench/results/sampler_gpu.json"  # bench/bench_sampler_gpu.py's record, once a GPU run has made it


def measured_samplers(record: dict, resolution: int, estimate_per_evaluation: float, source: str = "") -> dict:
    """Per sampler that bench_sampler_gpu.py measured at `resolution`: its fastest point (the setting and
    batch with the most pairs/s), beside the estimate of NFE x `estimate_per_evaluation` (s per evaluation
    per pair). Hours per million pairs are on the record's device (GPU-hours on a GPU)."""
    rows = [r for r in record.get("runs", []) if "failed" not in r and r.get("resolution") == resolution]
    out = []
    for name in dict.fromkeys(r["sampler"] for r in rows):
        best = max((r for r in rows if r["sampler"] == name), key=lambda r: r["pairs_per_second"])
        nfe = best["evaluations_per_pair"]
        estimate_hours = nfe * estimate_per_evaluation * PAIRS / 3600
        hours = PAIRS / best["pairs_per_second"] / 3600
        out.append(
            {
                "sampler": name,
                "distilled": best["distilled"],
                "evaluations_per_pair": nfe,
                "setting": best["setting"],
                "batch": best["batch"],
                "seconds_per_evaluation_per_pair": best["seconds_per_evaluation_per_pair"],
                "estimate_seconds_per_evaluation_per_pair": estimate_per_evaluation,
                "measured_over_estimate": best["seconds_per_evaluation_per_pair"] / estimate_per_evaluation,
                "hours_per_million_pairs": hours,
                "estimate_gpu_hours_per_million_pairs": estimate_hours,
                "fraction_of_bf16_peak": best.get("fraction_of_bf16_peak"),
            }
        )
    out.sort(key=lambda r: (not r["distilled"], r["evaluations_per_pair"]))
    return {
        "source": source,
        "device": record.get("device"),
        "device_type": record.get("device_type"),
        "complete": record.get("complete"),
        "resolution": resolution,
        "rows": out,
    }


def cost_model(
    measured: dict, budget_gpu_hours: float = 8.0, sampler_gpu: dict | None = None, sampler_gpu_source: str = ""
) -> dict:
    sampling, train = measured["sampling"], measured["train"]
    evaluation_per_pair = sampling["seconds_per_evaluation"] / sampling["batch"]  # s per pair per NFE
    flops_per_evaluation = sampling["flops_per_pair"] / _nfe(sampling["sampler"])  # per pair
    peak = measured["matmul_peak"]["flops_per_second"]
    fraction = flops_per_evaluation / evaluation_per_pair / peak
    rows = []
    for nfe in NFE:
        hours = nfe * evaluation_per_pair * PAIRS / 3600
        rows.append(
            {
                "nfe": nfe,
                "gpu_hours_per_million": hours,
                "wall_hours_on_8_gpus": hours / 8,
                # the efficiency at which this NFE fits the budget (> 1: beyond the peak, impossible)
                "fraction_of_peak_to_fit_budget": fraction * hours / budget_gpu_hours,
            }
        )
    teacher_seconds = 2 * evaluation_per_pair * train["batch"]  # two teacher evaluations per pair, no backward
    model = {
        "source": "bench/results/paper_scale_gpu.json",
        "device": measured["device"],
        "resolution": measured["resolution"],
        "measured": {
            "seconds_per_evaluation_per_pair": evaluation_per_pair,
            "gflop_per_evaluation_per_pair": flops_per_evaluation / 1e9,
            "fraction_of_bf16_peak": fraction,
            "train_step_seconds": train["seconds_per_step"],
            "train_batch": train["batch"],
        },
        "budget_gpu_hours": budget_gpu_hours,
        "nfe_within_budget_at_measured_efficiency": budget_gpu_hours * 3600 / (evaluation_per_pair * PAIRS),
        "rows": rows,
        "distillation_step_seconds_estimate": train["seconds_per_step"] + teacher_seconds,
        "distillation_gpu_hours_per_1000_steps": 1000 * (train["seconds_per_step"] + teacher_seconds) / 3600,
    }
    if sampler_gpu is not None:
        model["measured_samplers"] = measured_samplers(
            sampler_gpu, measured["resolution"], evaluation_per_pair, sampler_gpu_source
        )
    return model


def _nfe(sampler: str) -> int:
    """'ddim-100' -> 100: the evaluations per pair the measured FLOPs per pair were counted over."""
    return int(sampler.rsplit("-", 1)[1])


def markdown(model: dict) -> str:
    m = model["measured"]
    lines = [
        f"Measured ({model['device']}, {model['resolution']} px): {m['seconds_per_evaluation_per_pair'] * 1e3:.3f} ms and "
        f"{m['gflop_per_evaluation_per_pair']:.0f} GFLOP per network evaluation per pair, {100 * m['fraction_of_bf16_peak']:.1f} % of the bf16 peak.",
        "",
        f"| evaluations per pair | GPU-hours per million pairs | hours on 8 GPUs | fraction of the bf16 peak needed for {model['budget_gpu_hours']:g} GPU-hours |",
        "|---|---|---|---|",
    ]
    for r in model["rows"]:
        need = r["fraction_of_peak_to_fit_budget"]
        lines.append(
            f"| {r['nfe']} | {r['gpu_hours_per_million']:.2f} | {r['wall_hours_on_8_gpus']:.2f} | "
            + (f"{100 * need:.1f} %" if need <= 1 else f"{100 * need:.0f} % (beyond the peak)")
            + " |"
        )
    lines += [
        "",
        f"Within {model['budget_gpu_hours']:g} GPU-hours at the measured efficiency: {model['nfe_within_budget_at_measured_efficiency']:.2f} evaluations per pair.",
        f"One distillation optimiser step at batch {m['train_batch']} (a training step plus the teacher's two evaluations per pair): "
        f"about {model['distillation_step_seconds_estimate']:.3f} s, {model['distillation_gpu_hours_per_1000_steps']:.3f} GPU-hours per 1,000 steps.",
    ]
    if "measured_samplers" in model:
        lines += ["", *measured_markdown(model["measured_samplers"], model["device"])]
    return "\n".join(lines)


def measured_markdown(ms: dict, estimate_device: str) -> list[str]:
    unit = "GPU-hours" if ms["device_type"] == "cuda" else "device-hours"
    head = f"Measured samplers ({ms['source']}: {ms['device']}, {ms['resolution']} px"
    head += "" if ms["complete"] else ", an incomplete run"
    if not ms["rows"]:
        return [head + f"): no point at {ms['resolution']} px in it."]
    lines = [
        head + f") beside the estimate from {estimate_device}'s step time; each sampler's fastest setting and batch:",
        "",
        f"| sampler | evaluations per pair | setting, batch | ms per evaluation per pair (measured / estimate) | {unit} per million pairs (measured) | GPU-hours per million pairs (estimate) | fraction of the bf16 peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ms["rows"]:
        peak = r["fraction_of_bf16_peak"]
        lines.append(
            f"| {r['sampler']} | {r['evaluations_per_pair']} | {r['setting']}, {r['batch']} | "
            f"{r['seconds_per_evaluation_per_pair'] * 1e3:.3f} / {r['estimate_seconds_per_evaluation_per_pair'] * 1e3:.3f} "
            f"({r['measured_over_estimate']:.2f}x) | {r['hours_per_million_pairs']:.2f} | {r['estimate_gpu_hours_per_million_pairs']:.2f} | "
            + ("–" if peak is None else f"{100 * peak:.1f} %")
            + " |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measured", default="bench/results/paper_scale_gpu.json", help="bench_paper_scale.py's output")
    p.add_argument("--budget", type=float, default=8.0, help="GPU-hours per million pairs to fit (default 8)")
    p.add_argument("--json", help="also write the model to this file")
    p.add_argument(
        "--sampler-gpu",
        help=f"bench/bench_sampler_gpu.py's record, its points put beside the estimates (default: {SAMPLER_GPU} if it exists)",
    )
    args = p.parse_args()
    source = args.sampler_gpu or SAMPLER_GPU
    if args.sampler_gpu and not Path(source).is_file():
        raise SystemExit(f"--sampler-gpu: {source} does not exist")
    sampler_gpu = json.loads(Path(source).read_text()) if Path(source).is_file() else None
    model = cost_model(json.loads(Path(args.measured).read_text()), args.budget, sampler_gpu, source)
    if args.json:
        Path(args.json).write_text(json.dumps(model, indent=2) + "\n")
    print(markdown(model))
    if sampler_gpu is None:
        print(
            f"\nNo measured sampler points: {source} does not exist (no GPU run of bench/bench_sampler_gpu.py yet; "
            "`bash bench/gpu_run.sh bench/bench_sampler_gpu.py --out OUT/sampler_gpu.json`, then --sampler-gpu OUT/sampler_gpu.json)."
        )


if __name__ == "__main__":
    main()
