"""Run the paper's comparison on any labelled dataset and write tables, plots and sample figures.

    python jobs/experiment.py --config configs/experiment_demo.yaml --out runs/exp
    python jobs/experiment.py --config configs/experiment_demo.yaml --data osd:/data/osd --out runs/exp_osd
    python jobs/experiment.py --config configs/experiment_demo.yaml --out runs/exp experiment.seeds=[0,1,2,3,4]
    python jobs/experiment.py --config configs/experiment_demo.yaml --out runs/exp --plan     (the units, done or to run)
    python jobs/experiment.py --config configs/experiment_demo.yaml --out runs/exp --partial  (OUT/partial.md: the tables so far)

    # runners sharing one study folder: start the same command twice (two cores, or two machines on one
    # shared folder); each unit is claimed (OUT/claims/), so each is built once and the students split
    python jobs/experiment.py --config C --out runs/exp &  python jobs/experiment.py --config C --out runs/exp

    # runners sharing one study through --records: each trains its students (and what they need) into its own OUT
    python jobs/experiment.py --config C --out runs/exp_a --records docs/results/exp --only 'none-*,copy_paste*'
    python jobs/experiment.py --config C --out runs/exp_b --records docs/results/exp --only 'dakter*,hard*,pasted_after*'
    # where a validation grid sets the students' length, a runner without the grid's students waits for it
    python jobs/experiment.py --config C --out runs/exp_a --records docs/results/exp --only 'none-*' --wait

    # the finished students of runs/exp scored on another split: runs/exp/rescore_val7.md (and .json)
    python jobs/experiment.py --out runs/exp --rescore 'synthetic:40?size=32&test=200&seed=7' --tag val7
    python jobs/experiment.py --out runs/exp --rescore 'synthetic:40?size=32&test=200&seed=7' --tag val7 --students '*-unet-*'

    # rewrite runs/exp/results.md and its figures from runs/exp/results.json
    python jobs/experiment.py --out runs/exp --report

Methods: the arms experiment.methods accepts, listed at the end (their definitions: study/plan.py), among
them no augmentation; generated pairs as hard labels (DDPM / SatSynth style); DAKTer (soft labels + KD);
DAKTer with b = 1 (the ablation); `hard_matched`, hard labels with the same weight on generated pairs
as DAKTer's KD weight λ (the control). λ per student is set in
`experiment.kd_weights` (e.g. [unet:1.0]) or chosen on a validation split before the main table
(`experiment.validation_spec` + `experiment.kd_weight_grid`, e.g. [0.5,1.0,2.0]; recorded in
results.json). Students, ratios, seeds and the optional sampler and decode studies come from the
config's `experiment` section. One diffusion model and one set of shards per b serve every
student. Rerunning the same command resumes: finished models, shard sets and students are kept.
Writes OUT/results.md, OUT/results.json and figures.
"""

from __future__ import annotations

from dakter_scale.cli import config_from, fail, parser, progress_enabled, run, script

WAIT_POLL_S = 60  # --wait: seconds between looks at the records


def methods_help() -> str:
    """Every method the study plan accepts (study/plan.py's registry), with what the reports call it."""
    from dakter_scale.study.plan import INSTANCE_PASTE, METHOD_NAMES

    width = max(map(len, METHOD_NAMES)) + 2
    lines = [f"  {m:<{width}}{name}" for m, name in METHOD_NAMES.items()]
    note = f"({INSTANCE_PASTE}: one arm per experiment.bank_sizes entry, {INSTANCE_PASTE}_N)"
    return "\nMethods (experiment.methods):\n" + "\n".join(lines) + "\n" + note + "\n"


def main() -> None:
    p = parser(__doc__ + methods_help())
    p.add_argument(
        "--out",
        required=True,
        help="experiment folder (resumable); several runners of one command may share it, one per core or machine "
        "(each unit is built by the runner that claims it: OUT/claims/)",
    )
    p.add_argument(
        "--data",
        help="data spec (overrides data.spec): synthetic:N[?size=S&test=M&seed=X], osd:PATH, sos:PATH; default the config's data.spec, else synthetic:64 (the built-in simulator)",
    )
    p.add_argument(
        "--records",
        metavar="DIR",
        help="keep the finished students' scores in DIR and restore them from it (a study over several machines; study/records.py); "
        "at the end results.json, results.md and the figures are kept there too; a kept copy-paste student of "
        "another paste rule (student.augment.PASTE_RULE) is refused: the committed studies are rule 1, "
        "git tag paste-rule-1",
    )
    p.add_argument(
        "--retrain-rebuilt",
        action="store_true",
        help="with --records: where a model or generated set rebuilt here differs bit for bit from the one the kept "
        "students read (another machine sums in another order), drop those students from the records and train them "
        "again, instead of refusing; the real-only students are kept",
    )
    p.add_argument(
        "--only",
        metavar="GLOBS",
        help="train only the students whose names match one of these comma-separated globs (e.g. 'none-*,copy_paste*'), "
        "with the models and sets they need, then write OUT/partial.md: two runners, each with its own OUT and one "
        "--records, share a study",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="with --only and --records: where the students' settings wait on a validation grid that another runner "
        "trains, look in the records every minute until it is complete, then train them",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the units of the plan, done or to run, and exit (with --records, the kept scores are restored into OUT first)",
    )
    p.add_argument(
        "--partial",
        action="store_true",
        help="write OUT/partial.md, the tables over the students finished so far (with --records, from the kept scores, "
        "of any paste rule), training nothing, and exit",
    )
    p.add_argument(
        "--rescore",
        metavar="SPEC",
        help="score the finished students of OUT on the test split of SPEC (OUT's own config)",
    )
    p.add_argument(
        "--tag", help="with --rescore: the name of that split (students/NAME/metrics_TAG.json, OUT/rescore_TAG.md)"
    )
    p.add_argument(
        "--students", default="*", metavar="GLOB", help="with --rescore: only the student folders matching GLOB"
    )
    p.add_argument(
        "--report", action="store_true", help="rewrite OUT/results.md and its figures from OUT/results.json, and exit"
    )
    args = p.parse_args()

    def body() -> int:
        from dakter_scale.experiment import Experiment, describe_plan, read_config, run_experiment, write_report
        from dakter_scale.training import setup_logging

        setup_logging()
        if args.rescore or args.report:
            if args.config or args.overrides or args.data:
                fail("--rescore and --report use OUT's own config: drop --config, --data and overrides")
            if args.report:
                print(f"report written to {write_report(args.out)}")
                return 0
            if not args.tag:
                fail("--rescore needs --tag NAME for the split (e.g. val7, test1000)")
            exp = Experiment(read_config(args.out), args.out, progress=progress_enabled())
            print(f"rescored tables written to {exp.rescore(args.rescore, args.tag, args.students)}")
            return 0
        cfg = config_from(args, {"data.spec": args.data})
        only = [g.strip() for g in args.only.split(",") if g.strip()] if args.only is not None else None
        if only == []:
            fail("--only needs at least one glob, e.g. --only 'none-*,copy_paste*'")
        if args.plan:
            print("\n".join(describe_plan(cfg, args.out, only, args.records)))
            return 0
        if args.partial:
            exp = Experiment(cfg, args.out, progress=False, records=args.records)
            print(f"partial tables written to {exp.partial()}")
            return 0
        if args.wait and not (only and args.records):
            fail("--wait needs --only and --records: it waits for another runner's validation grid in the records")
        if args.retrain_rebuilt and not args.records:
            fail("--retrain-rebuilt needs --records: it drops kept students whose generator was rebuilt to other bytes")
        wait = WAIT_POLL_S if args.wait else None
        path = run_experiment(
            cfg,
            args.out,
            progress=progress_enabled(),
            records=args.records,
            only=only,
            wait=wait,
            retrain_rebuilt=args.retrain_rebuilt,
        )
        print(f"{'partial tables' if only else 'results'} written to {path}")
        return 0

    run(body)


if __name__ == "__main__":
    script(main)
