"""The layer table of docs/architecture.md, enforced by reading every import (module level and inside
functions) of the package: core is pure maths, data never reaches up to the trainers or across to
Ray and accelerate, and nothing in the library imports the jobs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "dakter_scale"
# core/: tensors in, tensors out. No files, storage, processes, Ray, accelerate or webdataset.
CORE_ALLOWED = {"__future__", "math", "dataclasses", "typing", "collections", "functools", "itertools", "numbers", "enum", "abc", "torch", "numpy", "dakter_scale.core"}
# data/: reading and writing data. Never the orchestration above it, never Ray or accelerate.
DATA_FORBIDDEN = {"ray", "accelerate", "dakter_scale.training", "dakter_scale.synth", "dakter_scale.student", "dakter_scale.diffusion", "dakter_scale.experiment", "dakter_scale.pipeline"}


def imports(path: Path, package: str | None = None) -> set[str]:
    """Every module a file imports, as dotted names (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = package or ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def within(module: str, prefixes: set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def files(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py")) if folder else sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", files("core"), ids=lambda p: p.name)
def test_core_imports_only_maths(path):
    bad = sorted(m for m in imports(path) if not within(m, CORE_ALLOWED))  # "from torch import nn" is torch.nn: allowed
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", files("data"), ids=lambda p: p.name)
def test_data_imports_no_ray_accelerate_or_orchestration(path):
    bad = sorted(m for m in imports(path) if within(m, DATA_FORBIDDEN))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", files(""), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_never_imports_jobs_or_bench(path):
    bad = sorted(m for m in imports(path) if within(m, {"jobs", "bench"}))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", [PACKAGE / "scene" / "tile.py"], ids=lambda p: p.name)
def test_scene_tiling_is_pure_maths(path):
    """The tile grid and the blending window are maths like core/: numpy in, numpy out."""
    bad = sorted(m for m in imports(path) if not within(m, CORE_ALLOWED))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The rule must not be blind: a lazy import inside a function and a relative import both count."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import ray\n    from ..training import run_steps\n")
    found = imports(probe, package="dakter_scale.core")
    assert "ray" in found and "dakter_scale.training.run_steps" in found
