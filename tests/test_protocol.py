"""The evidence study's protocol, checked against the committed results: its test split is one that
no other committed run scored, and its validation split shares no scene with it."""

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


def test_the_evidence_test_split_was_never_scored_by_another_committed_run():
    cfg = load_config(str(CONFIG), [])
    test = cfg.experiment.test_spec
    assert test and test != cfg.data.spec
    for path in sorted((ROOT / "docs" / "results").rglob("*.json")):
        if OWN in path.parents:
            continue
        assert test not in specs_in(json.loads(path.read_text())), f"{path.relative_to(ROOT)} scored {test}"


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
    for path in sorted((ROOT / "docs" / "results").rglob("*.json")):
        if path.relative_to(ROOT / "docs" / "results").parts[0].startswith("scarcity_"):
            continue
        assert test not in specs_in(json.loads(path.read_text())), f"{path.relative_to(ROOT)} scored {test}"
    scenes = set(split_digests(open_source(test), "test"))
    assert len(scenes) == 500 and not scenes & set(split_digests(open_source(cfg.experiment.validation_spec), "test"))
    for n in (10, 20, 40, 100):
        spec = f"synthetic:{n}?size=32&test=500"
        assert load_config(str(SCARCITY), [f"data.spec={spec}"]).data.spec == spec
        assert not scenes & set(split_digests(open_source(spec), "train"))
