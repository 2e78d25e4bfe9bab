"""Train a segmentation student on real data plus generated pairs (KD on soft labels, or CE on hard labels).

    python jobs/train_student.py --data synthetic:64 --ratio 0 --out runs/student --config configs/demo.yaml
    python jobs/train_student.py --data osd:/data/osd --synthetic s3://bucket/dakter/v1 --ratio 2 --labels soft --arch segformer --out runs/s
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 jobs/train_student.py ...            (2 CPU processes, gloo)
    accelerate launch --num_processes 8 jobs/train_student.py ... student.num_workers=4 (8 GPUs)
    python jobs/train_student.py ... student.checkpoint_every=200 --resume latest     (continue after a stop)

--ratio is generated samples per real sample: 0.5 = 50 %, 2 = 200 %, 100 = 10,000 %; "200%" is accepted too.
--labels soft is DAKTer (KD loss on the soft labels); hard trains on their argmax with CE (the DDPM / SatSynth baseline).
--copy-paste oil:3x,ship:3x pastes real instances of those classes onto real samples until each meets its
share (the grammar of --class-target); student.copy_paste_real / copy_paste_generated set the shares of
samples pasted (0.5 / 0). --augment d4 flips and turns every sample (real and generated) the same way.
--instance-bank URL draws the pasted instances from an instance bank of generated instances (jobs/bank_instances.py),
soft labels and all, instead of the real pairs; --instance-bank-size N uses its first N (the bank's size).
--init STUDENT starts from a trained student's weights (fine-tuning; the study's pretrain_finetune arm).
--synthetic takes any fsspec URL (a folder, s3://, gs://); S3 credentials and endpoint come from AWS_* variables.
Bad shards: student.on_bad_shard=warn (skip, count, name them at the end) or raise. See docs/training.md.
--report-to tensorboard (pip install 'dakter-scale[tracking]'), mlflow or wandb sends loss, learning rate and steps/s
to that tracker; --evaluate test evaluates the written student on the real data's test split (tracker, OUT/logs/eval.json, README.md card).
"""

from __future__ import annotations

from dakter_scale.cli import check_flag, config_from, parser, progress_enabled, ratio_flag, run, script, training_flags


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--data",
        "--real",
        dest="real",
        metavar="SPEC",
        help="real data spec (overrides data.spec), as --data of the other jobs; default the config's data.spec, else synthetic:64 (the built-in simulator)",
    )
    p.add_argument("--out", required=True, help="student folder to write")
    p.add_argument(
        "--synthetic",
        help="folder or URL of generated shards (jobs/synthesize.py --out); read only with a ratio above 0 (--ratio)",
    )
    p.add_argument(
        "--ratio",
        help="generated per real sample, e.g. 2 or 200%% (overrides student.ratio, 0 unless the config sets it: real data only, --synthetic not read)",
    )
    p.add_argument("--labels", choices=["soft", "hard"], help="soft: KD on soft labels (DAKTer); hard: CE on argmax")
    p.add_argument("--arch", help="unet, deeplabv3plus, segformer, fpn, ... (overrides student.arch)")
    p.add_argument("--encoder", help="smp encoder name, or auto")
    p.add_argument(
        "--copy-paste",
        metavar="TARGET",
        help="copy-paste real instances onto real samples, e.g. oil:3x,ship:3x (overrides student.copy_paste)",
    )
    p.add_argument(
        "--instance-bank",
        metavar="URL",
        help="copy-paste draws its donors from this instance bank of generated instances (jobs/bank_instances.py) instead of the real pairs (overrides student.instance_bank)",
    )
    p.add_argument(
        "--instance-bank-size",
        type=int,
        metavar="N",
        help="use the bank's first N instances (overrides student.instance_bank_size; default all)",
    )
    p.add_argument(
        "--init", metavar="STUDENT", help="start from this student folder's weights (overrides student.init)"
    )
    p.add_argument(
        "--augment",
        choices=["none", "flip", "d4"],
        help="geometric augmentation of every sample (overrides student.augment)",
    )
    p.add_argument("--max-steps", type=int, help="training steps (overrides student.max_steps)")
    p.add_argument(
        "--evaluate",
        choices=["test", "train"],
        help="evaluate the written student on this split of the real data: metrics to the tracker, OUT/logs/eval.json and the card",
    )
    training_flags(p, "'latest' (newest checkpoint in OUT, or a fresh start if none) or a checkpoint folder")
    args = p.parse_args()

    def body() -> int:
        from dakter_scale.student.train import train_student
        from dakter_scale.training import finish, tracked_accelerator

        check_flag("--max-steps", args.max_steps, 1)
        check_flag("--instance-bank-size", args.instance_bank_size, 0)
        cfg = config_from(
            args,
            {
                "data.spec": args.real,
                "student.ratio": ratio_flag(args.ratio),
                "student.labels": args.labels,
                "student.arch": args.arch,
                "student.encoder": args.encoder,
                "student.max_steps": args.max_steps,
                "student.copy_paste": args.copy_paste,
                "student.instance_bank": args.instance_bank,
                "student.instance_bank_size": args.instance_bank_size,
                "student.init": args.init,
                "student.augment": args.augment,
            },
        )
        accelerator = tracked_accelerator(cfg.student.mixed_precision, args.report_to, args.out)
        train_student(
            cfg,
            args.out,
            synthetic=args.synthetic,
            resume=args.resume,
            progress=progress_enabled(),
            accelerator=accelerator,
            evaluate=args.evaluate,
        )
        finish(accelerator)
        return 0

    run(body)


if __name__ == "__main__":
    script(main)
