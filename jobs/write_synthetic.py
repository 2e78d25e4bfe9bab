"""Write the built-in simulated SAR scenes to disk in the OSD or SOS folder layout.

    python jobs/write_synthetic.py --layout osd --out data/osd_sim --train 1002 --test 110
    python jobs/write_synthetic.py --layout sos --out data/sos_sim --train 3101 --test 776 --size 256

The result reads back with the osd:PATH / sos:PATH specs like the real datasets.
"""

from __future__ import annotations

from dakter_scale.cli import check_flag, parser, progress_enabled, run, script


def main() -> None:
    p = parser(__doc__, config=False)
    p.add_argument(
        "--layout",
        choices=["osd", "sos"],
        required=True,
        help="osd: {train,test}/images/*.jpg with labels/ (RGB colours) and labels_1D/ (class ids), 5 classes; "
        "sos: {train,test}/{palsar,sentinel}/N_sat.jpg + N_mask.png, oil against background (half the scenes each)",
    )
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--train", type=int, required=True, help="training scenes")
    p.add_argument("--test", type=int, required=True, help="test scenes")
    p.add_argument("--height", type=int, default=650, help="OSD scene height (default 650, as OSD)")
    p.add_argument("--width", type=int, default=1250, help="OSD scene width (default 1250, as OSD)")
    p.add_argument("--size", type=int, default=256, help="SOS patch side (default 256)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the simulator's base seed (default 0). osd: scene i of a split is drawn from the seed that "
        "synthetic:N?size=S&seed=SEED gives scene i of that split, so with --height and --width S it is the same "
        "scene, stored as JPEG; sos: a stream of its own per satellite",
    )
    args = p.parse_args()

    def body() -> int:
        from dakter_scale.data.synthetic_sar import write_osd_layout, write_sos_layout

        check_flag("--train", args.train, 1)
        check_flag("--test", args.test, 1)
        for flag, side in (("--height", args.height), ("--width", args.width), ("--size", args.size)):
            check_flag(flag, side, 16)  # the simulator's smallest scene, as synthetic:N?size=S
        check_flag("--seed", args.seed, 0)
        if args.layout == "osd":
            write_osd_layout(
                args.out, args.train, args.test, args.height, args.width, args.seed, progress=progress_enabled()
            )
        else:
            write_sos_layout(args.out, args.train, args.test, args.size, args.seed, progress=progress_enabled())
        print(f"wrote {args.train} train and {args.test} test scenes in the {args.layout.upper()} layout to {args.out}")
        return 0

    run(body)


if __name__ == "__main__":
    script(main)
