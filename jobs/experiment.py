"""Run the paper's comparison on any labelled dataset and write tables, plots and sample figures.

    python jobs/experiment.py --config configs/experiment_demo.yaml --out runs/exp
    python jobs/experiment.py --config configs/experiment_demo.yaml --data osd:/data/osd --out runs/exp_osd
    python jobs/experiment.py --config configs/experiment_demo.yaml --out runs/exp experiment.seeds=[0,1,2,3,4]

Methods: no augmentation; generated pairs as hard labels (DDPM / SatSynth style); DAKTer (soft
labels + KD); DAKTer with b = 1 (the ablation); optionally `hard_matched`, hard labels with the
same weight on generated pairs as DAKTer's KD weight λ (the control; per-student λ in
`experiment.kd_weights`, e.g. [unet:1.0]). Students, ratios, seeds and the optional sampler
and decode studies come from the config's `experiment` section. One diffusion model and one set
of shards per b serve every student. Rerunning the same command resumes: finished models, shard
sets and students are kept. Writes OUT/results.md, OUT/results.json and figures.
"""

from __future__ import annotations

from dakter_scale.cli import config_from, parser, progress_enabled, run


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", required=True, help="experiment folder (resumable)")
    p.add_argument("--data", help="data spec (overrides data.spec): synthetic:N, osd:PATH, sos:PATH")
    args = p.parse_args()

    def body() -> int:
        from dakter_scale.experiment import run_experiment
        from dakter_scale.training import setup_logging

        setup_logging()
        cfg = config_from(args, {"data.spec": args.data})
        path = run_experiment(cfg, args.out, progress=progress_enabled())
        print(f"results written to {path}")
        return 0

    run(body)


if __name__ == "__main__":
    main()
