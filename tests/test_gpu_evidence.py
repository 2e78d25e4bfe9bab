"""The GPU evidence command (bench/gpu_evidence.sh) at its tiny setting on this CPU, started the way
a GPU machine starts it: from an environment that has Python and PyTorch but none of the project's
other dependencies, which are installed from a wheels folder with the network cut (pip --no-index).

The "image" is a fresh virtual environment that sees only torch, torchvision and what they need
(a .pth file pointing at links into this environment's site-packages); the wheels folder is built by
bench/wheelhouse.py (the only step that reaches the package index)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT

# What a PyTorch image has: torch, torchvision and their own dependencies.
IMAGE_PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "PIL",
    "pillow",
    "filelock",
    "typing_extensions",
    "sympy",
    "mpmath",
    "networkx",
    "jinja2",
    "markupsafe",
    "fsspec",
    "nvidia",
    "triton",
    "setuptools",
    "cuda",
    "packaging",
    "functorch",
    "torchgen",
)


def fake_image(venv: Path) -> Path:
    """A fresh venv whose Python sees only the IMAGE_PACKAGES of this environment."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(sysconfig.get_paths()["purelib"])
    image = venv / "image-site"
    image.mkdir()
    for entry in site.iterdir():
        stem = entry.name.split("-")[0].split(".")[0].lower()
        if any(stem == p.lower() or stem.startswith(p.lower() + "_") for p in IMAGE_PACKAGES):
            (image / entry.name).symlink_to(entry)
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(venv_site, "image.pth").write_text(str(image) + "\n")
    return python


@pytest.mark.slow
def test_gpu_evidence_tiny_run_from_an_offline_install(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, str(ROOT / "bench" / "wheelhouse.py"), str(wheels)], check=True, timeout=900)
    python = fake_image(tmp_path / "venv")
    missing = subprocess.run([str(python), "-c", "import diffusers"], capture_output=True, text=True)
    assert missing.returncode != 0, "the fake image must lack the project's dependencies"
    assert subprocess.run([str(python), "-c", "import torch"]).returncode == 0

    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        PYTHON=str(python),
        DAKTER_WHEELS=str(wheels),
        DAKTER_PROGRESS="0",
        OMP_NUM_THREADS="1",
        PIP_CONFIG_FILE=os.devnull,
    )
    out = tmp_path / "results"
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_evidence.sh"), str(out), "--tiny", "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "installing dakter-scale offline" in r.stdout
    assert "device: CPU" in r.stdout
    assert "Ray is not installed" in r.stderr  # the wheels carry no Ray: synthesis ran in-process, and said so
    files = sorted(p.name for p in out.iterdir())
    assert (
        files
        == sorted(
            ["results.md", "results.json", "per_class_iou.png", "samples_b_cfg.png", "throughput.json", "config.yaml"]
        )
        and len(files) <= 8
    )
    record = json.loads((out / "throughput.json").read_text())
    assert (
        record["device"].startswith("CPU")
        and 0 < record["diffusion"]["fraction_of_peak"]
        and record["sampling"]["pairs_per_second"] > 0
    )
    results = json.loads((out / "results.json").read_text())
    names = set(results["runs"])
    assert {
        f"{m}-{a}-r{r_}-s0"
        for m, a, r_ in (
            ("none", "unet", 0),
            ("hard", "unet", 2),
            ("dakter", "unet", 2),
            ("none", "segformer", 0),
            ("dakter", "segformer", 2),
        )
    } <= names
    assert all(run["images"] == 24 for run in results["runs"].values())  # the full (tiny) test split
    for arch in ("unet", "segformer"):  # the budget is measured once per architecture: every method trains as long
        steps = {n: v for n, v in results["steps"]["students"].items() if f"-{arch}-" in n}
        assert len(steps) == 3 and len(set(steps.values())) == 1, steps
