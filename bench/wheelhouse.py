"""Put into a folder the wheels an offline machine needs to install dakter-scale with
``pip install --no-index --find-links DIR dakter-scale`` (an air-gapped cluster, a GPU image with no
network). Run it where pip can reach a package index, with dakter-scale installed in this Python:

    python bench/wheelhouse.py wheels                       # the project + every dependency but torch
    python bench/wheelhouse.py wheels --extras ray,s3       # ... and the optional extras
    python bench/wheelhouse.py wheels --only diffusers importlib-metadata lazy-importer webdataset \\
        braceexpand segmentation-models-pytorch       # only what a PyTorch image lacks (the GPU evidence run)

The dependency closure is read from this environment's installed packages, pinned to their
versions, and downloaded without dependencies (``pip download --no-deps --only-binary=:all:``).
torch and torchvision and what only they need are left out: the target brings its own PyTorch
build (a CUDA wheel is several GB). The project's own wheel is built from this checkout.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROVIDED = {"torch", "torchvision"}  # the target's own PyTorch


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str, extras: set[str]) -> dict[str, str]:
    """{name: installed version} of everything `root` (with `extras`) needs here, torch excluded."""
    found: dict[str, str] = {}
    todo = [(root, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        dist = md.distribution(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            dep = canonical(req.name)
            if dep in PROVIDED or dep in found:
                continue
            try:
                found[dep] = md.version(req.name)
            except md.PackageNotFoundError:
                sys.exit(
                    f"error: {req.name} (needed by {name}) is not installed here: install dakter-scale with the same extras first"
                )
            todo.append((req.name, frozenset(req.extras)))
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder for the wheels")
    p.add_argument("--extras", default="", help="comma-separated extras of dakter-scale to include (ray, s3)")
    p.add_argument(
        "--only", nargs="+", metavar="NAME", help="download only these dependencies (and the project's wheel)"
    )
    p.add_argument(
        "--python-version", help="target Python, e.g. 3.12 (pip download's option; binary wheels then need --platform)"
    )
    p.add_argument(
        "--platform", action="append", default=[], help="target platform tag, repeatable (e.g. manylinux_2_28_x86_64)"
    )
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    needed = closure("dakter-scale", {e for e in args.extras.split(",") if e})
    if args.only:
        wanted = {canonical(n) for n in args.only}
        unknown = sorted(wanted - set(needed))
        if unknown:
            sys.exit(
                f"error: --only {', '.join(unknown)}: not a dependency of dakter-scale here (known: {', '.join(sorted(needed))})"
            )
        needed = {n: v for n, v in needed.items() if n in wanted}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(pip + ["wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)], check=True)
    target = (["--python-version", args.python_version] if args.python_version else []) + [
        f"--platform={t}" for t in args.platform
    ]
    pins = [f"{n}=={v}" for n, v in sorted(needed.items())]
    subprocess.run(
        pip + ["download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(out), *target, *pins], check=True
    )
    print(f"{len(pins) + 1} wheels in {out}: dakter-scale + {', '.join(pins)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
