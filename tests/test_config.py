"""Typed config: YAML + overrides, validation errors that name the key, shipped configs load."""

from pathlib import Path

import pytest

from dakter_scale.config import Config, ConfigError, dump_config, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_validate():
    assert load_config().validate() == Config()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.data.resolution % 8 == 0


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("student:\n  lr: 0.1\n  arch: segformer\ndiffusion:\n  unet:\n    block_out_channels: [16, 32]\n")
    cfg = load_config(p, ["student.lr=3e-4", "diffusion.b=0.528", "data.flip=false", "synthesis.n=1e6"])
    assert cfg.student.lr == 3e-4 and cfg.student.arch == "segformer"
    assert cfg.diffusion.unet.block_out_channels == (16, 32)
    assert cfg.diffusion.b == 0.528 and cfg.data.flip is False and cfg.synthesis.n == 1_000_000
    assert load_config(p, ["diffusion.b=auto-std"]).diffusion.b == "auto-std"


def test_round_trip_through_saved_yaml(tmp_path):
    cfg = load_config(
        None, ["student.ratio=2.5", "diffusion.unet.block_out_channels=[8,16]", "diffusion.unet.norm_num_groups=8"]
    )
    path = save_config(cfg, tmp_path)
    assert load_config(path) == cfg
    assert "ratio: 2.5" in dump_config(cfg)


@pytest.mark.parametrize(
    "override,match",
    [
        ("student.lrr=1", r"unknown config key student\.lrr"),
        ("student.lr=fast", r"student\.lr: expected a number"),
        ("student.max_steps=1.5", r"student\.max_steps: expected an integer"),
        ("student.labels=fuzzy", r"student\.labels"),
        ("diffusion.b=-2", r"diffusion\.b"),
        ("diffusion.prediction_type=noise", r"diffusion\.prediction_type"),
        ("data.resolution=30", r"data\.resolution"),
        ("sampling.decode_last=99", r"sampling\.decode_last"),
        ("synthesis.n=0", r"synthesis\.n"),
        ("data.flip=maybe", r"data\.flip: expected true or false"),
        ("nokey", "not key=value"),
        (
            "experiment.filter_keep=0.5 experiment.steps_grid=[600,1200] experiment.validation_spec=synthetic:8?seed=7",
            r"^experiment\.filter_keep: the filter's judge is trained before steps_grid chooses the student length",
        ),
    ],
)
def test_errors_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, override.split(" "))


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("studnet:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config key studnet .*unknown\.yaml"):
        load_config(unknown)


def test_replace():
    cfg = load_config().replace(**{"student.ratio": 3.0, "student.labels": "hard"})
    assert cfg.student.ratio == 3.0 and cfg.student.labels == "hard"
