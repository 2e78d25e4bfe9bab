"""GPU-hours per million 256 px pairs, from the measured paper-scale numbers on the H200.

    python bench/cost_model.py                        (reads bench/results/paper_scale_gpu.json)
    python bench/cost_model.py --json bench/results/cost_model.json

Only measured inputs (bench/bench_paper_scale.py wrote them): the seconds of one network evaluation of a
batch of pairs in the sampling loop (bf16 autocast), its FLOPs, the bf16 matmul peak, and the seconds of
one training step. A pair's sampling cost is its network evaluations (NFE) times the measured seconds per
evaluation per pair; decoding, PNG encoding and writing are not in it (not measured on a GPU). Printed:
the GPU-hours per million pairs at each NFE, the NFE that fits a budget at the measured efficiency, the
fraction of the bf16 peak each NFE needs to fit it, and what one distillation optimiser step costs
(one training step plus the teacher's two evaluations per pair of the batch, each from the measured
parts; never measured as one step).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NFE = (1, 2, 4, 8, 10, 20, 50, 100)
PAIRS = 1_000_000


def cost_model(measured: dict, budget_gpu_hours: float = 8.0) -> dict:
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
    return {
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
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measured", default="bench/results/paper_scale_gpu.json", help="bench_paper_scale.py's output")
    p.add_argument("--budget", type=float, default=8.0, help="GPU-hours per million pairs to fit (default 8)")
    p.add_argument("--json", help="also write the model to this file")
    args = p.parse_args()
    model = cost_model(json.loads(Path(args.measured).read_text()), args.budget)
    if args.json:
        Path(args.json).write_text(json.dumps(model, indent=2) + "\n")
    print(markdown(model))


if __name__ == "__main__":
    main()
