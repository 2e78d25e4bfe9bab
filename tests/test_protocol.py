"""The studies' protocol, checked against the committed results: a study's test split is one that no
other committed run scored (recognised by its scenes, not its spec's text), and its validation and
training splits share no scene with it."""

from __future__ import annotations

import json

from dakter_scale.config import load_config
from dakter_scale.data.real import open_source, split_digests

from conftest import ROOT

CONFIG = ROOT / "configs" / "evidence_64.yaml"
OWN = ROOT / "docs" / "results" / "evidence_64"


def specs_in(value) -> set[str]:
    """Every string in a JSON value that names a synthetic data spec."""
    if isinstance(value, dict):
        return set().union(*(specs_in(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(specs_in(v) for v in value)) if value else set()
    return {value} if isinstance(value, str) and value.startswith("synthetic:") else set()


def scenes_of(spec: str) -> tuple[int, int] | None:
    """What a synthetic spec's test split is made of, as (scene size, simulator seed): a scene is a
    function of its seed and size, and a split of n test scenes holds the first n of that seed's, so two
    specs with the same pair share scenes whatever their scene counts or the order of their options."""
    try:
        source = open_source(spec)
    except Exception:  # a spec of another version's grammar: compared by its text alone
        return None
    return (source.size, source.seed) if source.n["test"] else None


def scored_elsewhere(test: str, skip) -> list[str]:
    """The committed JSON files, but those `skip` keeps out, that name a spec whose test split shares
    scenes with `test`'s (the same text, or the same scene size and simulator seed)."""
    ours, found = scenes_of(test), []
    for path in sorted((ROOT / "docs" / "results").rglob("*.json")):
        if skip(path):
            continue
        for spec in specs_in(json.loads(path.read_text())):
            if spec == test or (ours is not None and scenes_of(spec) == ours):
                found.append(f"{path.relative_to(ROOT)} scored {spec}")
    return found


def test_a_split_is_recognised_by_its_scenes_not_its_text():
    ours = scenes_of("synthetic:100?size=64&test=500&seed=31")
    assert ours == (64, 31) == scenes_of("synthetic:40?seed=31&test=1000&size=64")  # other count, order
    assert scenes_of("synthetic:100?size=32&test=500&seed=31") != ours  # other size: other scenes
    assert scenes_of("synthetic:100?size=64&test=500") != ours  # seed 0


def test_the_evidence_test_split_was_never_scored_by_another_committed_run():
    cfg = load_config(str(CONFIG), [])
    test = cfg.experiment.test_spec
    assert test and test != cfg.data.spec
    assert scenes_of(test) is not None and not scored_elsewhere(test, lambda path: OWN in path.parents)


def test_the_evidence_validation_split_shares_no_scene_with_its_test_split():
    cfg = load_config(str(CONFIG), [])
    validation = set(split_digests(open_source(cfg.experiment.validation_spec), "test"))
    test = set(split_digests(open_source(cfg.experiment.test_spec), "test"))
    train = set(split_digests(open_source(cfg.data.spec), "train"))
    assert len(test) == 500 and not validation & test and not train & test


SCARCITY = ROOT / "configs" / "scarcity.yaml"


def test_the_scarcity_test_split_is_fresh_and_apart_for_every_training_size():
    """configs/scarcity.yaml's test split (seed 43) was scored by no committed run but its own records
    (docs/results/scarcity_N), and shares no scene with the validation split or any |D|'s training scenes."""
    cfg = load_config(str(SCARCITY), [])
    test = cfg.experiment.test_spec
    assert test.endswith("seed=43") and test != load_config(str(CONFIG), []).experiment.test_spec
    own = lambda path: path.relative_to(ROOT / "docs" / "results").parts[0].startswith("scarcity_")  # noqa: E731
    assert scenes_of(test) is not None and not scored_elsewhere(test, own)
    scenes = set(split_digests(open_source(test), "test"))
    assert len(scenes) == 500 and not scenes & set(split_digests(open_source(cfg.experiment.validation_spec), "test"))
    for n in (10, 20, 40, 100):
        spec = f"synthetic:{n}?size=32&test=500"
        assert load_config(str(SCARCITY), [f"data.spec={spec}"]).data.spec == spec
        assert not scenes & set(split_digests(open_source(spec), "train"))
