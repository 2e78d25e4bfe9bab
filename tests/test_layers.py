"""The layer table of docs/architecture.md, enforced by reading every import (module level and inside
functions) of the package: every module has a layer (LAYERS) and imports only its own layer and those
below it, with no circle between modules; core is pure maths; data reaches neither Ray nor accelerate;
scene inference imports nothing of synthesis, the runner (dist/) neither of them; nothing in the library
imports the jobs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "dakter_scale"
# core/: tensors in, tensors out. No files, storage, processes, Ray, accelerate or webdataset.
CORE_ALLOWED = {
    "__future__",
    "math",
    "dataclasses",
    "typing",
    "collections",
    "functools",
    "itertools",
    "numbers",
    "enum",
    "abc",
    "torch",
    "numpy",
    "dakter_scale.core",
}
# data/: reading and writing data. Never Ray or accelerate (nor, by LAYERS, anything above it).
DATA_FORBIDDEN = {"ray", "accelerate"}
# The layers of docs/architecture.md, bottom to top: a module (a file, or every file of a folder, the
# longest entry deciding) may import its own layer and those below. Every module of the package has one.
LAYERS = (
    ("errors", ("errors.py", "__init__.py")),
    ("core", ("core/",)),
    ("io", ("data/", "config.py", "cards.py", "diffusion/model.py", "student/models.py", "dist/")),
    ("orchestration", ("training.py", "diffusion/", "student/", "synth/", "scene/", "study/", "experiment.py")),
    ("job plumbing", ("cli.py",)),
)
# Imports between modules of one layer that are ruled out all the same (importer prefix -> imported prefixes).
APART = {"scene/": ("synth/",), "dist/": ("synth/", "scene/")}


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


def layer(rel: str) -> int:
    """The layer index of a package path (dakter_scale/-relative, e.g. synth/run.py): the longest LAYERS entry that matches it."""
    matches = [
        (len(entry), i)
        for i, (_, entries) in enumerate(LAYERS)
        for entry in entries
        if rel == entry or (entry.endswith("/") and rel.startswith(entry))
    ]
    assert matches, f"{rel} has no layer in LAYERS: give it one (and a row in docs/architecture.md's table)"
    return max(matches)[1]


def module_path(module: str) -> str | None:
    """The package file a dotted import names (dakter_scale.synth.run.Summary -> synth/run.py), or None outside the package."""
    parts = module.split(".")
    if parts[0] != "dakter_scale":
        return None
    for n in range(len(parts), 1, -1):
        base = PACKAGE.joinpath(*parts[1:n])
        if base.with_suffix(".py").is_file():
            return str(base.with_suffix(".py").relative_to(PACKAGE))
        if (base / "__init__.py").is_file():
            return str((base / "__init__.py").relative_to(PACKAGE))
    return "__init__.py"


def package_imports(path: Path) -> set[str]:
    """The package files a file imports: not itself, nor the __init__.py of a folder it lives in
    (``from dakter_scale.data import storage`` in data/shardset/ names storage.py; Python runs the
    folders' own __init__ first whatever the file imports)."""
    own = str(path.relative_to(PACKAGE))
    return {
        p
        for p in map(module_path, imports(path))
        if p is not None and p != own and not (p.endswith("__init__.py") and own.startswith(p[: -len("__init__.py")]))
    }


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


def violations(rel: str, imported: set[str]) -> list[str]:
    """What is wrong with module `rel` importing the package files `imported`: a higher layer, or an APART rule."""
    own = layer(rel)
    up = [f"{m} (a higher layer: {LAYERS[layer(m)][0]})" for m in sorted(imported) if layer(m) > own]
    return up + [
        f"{m} ({prefix} must not import {', '.join(banned)})"
        for prefix, banned in APART.items()
        if rel.startswith(prefix)
        for m in sorted(imported)
        if m.startswith(banned)
    ]


@pytest.mark.parametrize("path", files(""), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    rel = str(path.relative_to(PACKAGE))
    bad = violations(rel, package_imports(path))
    assert not bad, f"{rel} ({LAYERS[layer(rel)][0]}) imports {bad}"


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """The first import circle of a module graph (a depth-first walk), as its modules in order with the
    first again at the end, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in done and (circle := visit(nxt)):
                return circle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (circle := visit(node)):
            return circle
    return None


def test_no_module_imports_itself_through_a_circle():
    circle = find_circle({str(p.relative_to(PACKAGE)): package_imports(p) for p in files("")})
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_layer_rules_are_not_blind(tmp_path):
    """A module with no layer is named; an import up a layer and scene -> synth are both seen."""
    assert layer("synth/run.py") == layer("scene/predict.py") > layer("dist/driver.py") > layer("core/kd.py")
    assert layer("diffusion/model.py") < layer("diffusion/train.py") and layer("cli.py") == len(LAYERS) - 1
    with pytest.raises(AssertionError, match="has no layer"):
        layer("newthing.py")
    assert find_circle({"a.py": {"b.py"}, "b.py": {"c.py"}, "c.py": {"a.py"}}) == ["a.py", "b.py", "c.py", "a.py"]
    assert find_circle({"a.py": {"b.py"}, "b.py": set(), "c.py": {"a.py", "b.py"}}) is None
    assert (
        module_path("dakter_scale.synth.run.Summary") == "synth/run.py"
        and module_path("dakter_scale.data") == "data/__init__.py"
    )
    assert module_path("numpy") is None
    assert violations("data/real.py", {"training.py", "core/kd.py"}) == ["training.py (a higher layer: orchestration)"]
    assert violations("scene/predict.py", {"synth/run.py", "dist/driver.py"}) == [
        "synth/run.py (scene/ must not import synth/)"
    ]
    assert violations("dist/driver.py", {"scene/read.py"}) == [
        "scene/read.py (a higher layer: orchestration)",
        "scene/read.py (dist/ must not import synth/, scene/)",
    ]


SHARDSET = "dakter_scale.data.shardset"


def shardset_names(path: Path, package: str | None = None) -> set[str]:
    """What a module outside data/shardset/ takes from the shard set: the names after the package."""
    return {m[len(SHARDSET) + 1 :] for m in imports(path, package) if m.startswith(SHARDSET + ".")}


@pytest.mark.parametrize(
    "path",
    [p for p in files("") if "data/shardset/" not in str(p.relative_to(PACKAGE))],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_the_library_uses_only_the_shard_sets_surface(path):
    """The shard set owns its format: the rest of the library imports only the names of its __all__
    (its constants are ShardSet's attributes), never one of its modules."""
    from dakter_scale.data import shardset

    bad = sorted(shardset_names(path) - set(shardset.__all__))
    assert not bad, f"{path.relative_to(ROOT)} reaches into the shard set for {bad}"


def test_the_surface_rule_is_not_blind(tmp_path):
    reach = tmp_path / "reach.py"
    reach.write_text(
        "from dakter_scale.data.shardset import ShardSet, shard_name\nfrom dakter_scale.data.shardset.codec import read_tar\n"
    )
    assert shardset_names(reach, "dakter_scale.synth") == {"ShardSet", "shard_name", "codec", "codec.read_tar"}
