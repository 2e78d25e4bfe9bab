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
        ("data.flip=no", r"data\.flip: expected true or false, got 'no'"),  # YAML 1.2: no is a string
        ("diffusion.unet.norm_num_groups=0", r"^diffusion\.unet\.norm_num_groups: must be >= 1, got 0"),
        ("diffusion.unet.norm_num_groups=-8", r"^diffusion\.unet\.norm_num_groups: must be >= 1, got -8"),
        ("diffusion.unet.dropout=1", r"^diffusion\.unet\.dropout: must be in \[0, 1\), got 1"),
        ("diffusion.max_grad_norm=-1", r"^diffusion\.max_grad_norm: must be >= 0 \(0 = no gradient clipping\)"),
        ("distill.max_grad_norm=nan", r"^distill\.max_grad_norm: must be >= 0 .*got nan"),
        ("diffusion.warmup_steps=-1", r"^diffusion\.warmup_steps/weight_decay: must be >= 0, got -1, 0\.0"),
        ("student.kd_weight=-1", r"^student\.kd_weight/ce_weight: must be >= 0, got -1\.0, 1\.0"),
        ("distill.num_workers=-1", r"^distill\.checkpoint_every/num_workers: must be >= 0, got 0, -1"),
        ("experiment.sweep_ratios=[0]", r"^experiment\.ratio/sweep_ratios: must be > 0, got 2\.0, \[0\.0\]"),
        ("experiment.sweep_methods=[nosuch]", r"^experiment\.sweep_methods: 'nosuch' is not one of"),
        ("experiment.kd_weight_seeds=[-1]", r"^experiment\.kd_weight_seeds: seeds must be >= 0, got \[-1\]"),
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


def test_booleans_are_yaml_1_2s_true_and_false(tmp_path):
    """no, yes, on and off are strings (YAML 1.1 read them as booleans): mixed_precision: no is "no"."""
    p = tmp_path / "c.yaml"
    p.write_text("diffusion:\n  mixed_precision: no\ndata:\n  flip: False\n")
    cfg = load_config(p, ["student.mixed_precision=no", "distill.mixed_precision=no", "data.license=on"])
    assert (cfg.diffusion.mixed_precision, cfg.student.mixed_precision, cfg.distill.mixed_precision) == ("no",) * 3
    assert cfg.data.flip is False and cfg.data.license == "on"
    assert load_config(save_config(cfg, tmp_path / "saved")) == cfg  # safe_dump quotes 'no'


def test_a_jobs_flags_are_taken_as_given():
    """A string flag is the exact string (through YAML, `#` would start a comment), a number stays a number."""
    import argparse

    from dakter_scale.cli import config_from

    args = argparse.Namespace(config=None, overrides=["student.lr=0.1", "data.spec=synthetic:4"])
    cfg = config_from(args, {"data.spec": "osd:/data/run #2", "student.max_steps": 7, "student.ratio": None})
    assert (cfg.data.spec, cfg.student.max_steps, cfg.student.lr) == ("osd:/data/run #2", 7, 0.1)
    assert load_config(None, flags={"data.spec": "no", "student.ratio": float("inf")}).data.spec == "no"


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "-50%", "two"])
def test_a_bad_ratio_flag_is_a_flag_error(text):
    from dakter_scale.cli import FlagError, ratio_flag

    assert (ratio_flag("2"), ratio_flag("200%"), ratio_flag(None)) == (2.0, 2.0, None)
    with pytest.raises(FlagError, match=r"^--ratio must be"):
        ratio_flag(text)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("oil:3", r"^synthesis\.target\.spec: the share of 'oil' must be in \(0, 1\), got 3"),
        ("oil:3x,oil:2x", r"^synthesis\.target\.spec: class 'oil' is named twice"),
    ],
)
def test_a_study_refuses_a_bad_class_target_before_any_work(spec, match, tmp_path):
    from dakter_scale.experiment import check_before_work

    cfg = load_config(None, [f"synthesis.target.spec={spec}"])  # the model's classes are not known at load
    with pytest.raises(ConfigError, match=match):
        check_before_work(cfg, ["unet"])
    check_before_work(load_config(None, ["synthesis.target.spec=oil:3x,ship:0.05"]), ["unet"])


def test_a_study_refuses_mixed_precisions_that_differ():
    """A study trains every model in one process, and accelerate keeps the first mixed precision."""
    from dakter_scale.training import check_one_precision

    check_one_precision(load_config(None, ["diffusion.mixed_precision=bf16", "student.mixed_precision=bf16"]))
    check_one_precision(load_config(None, ["distill.mixed_precision=fp16"]))  # no dakter_distilled arm: not trained
    with pytest.raises(ConfigError, match=r"^diffusion\.mixed_precision=fp16, student\.mixed_precision=no: a study"):
        check_one_precision(load_config(None, ["diffusion.mixed_precision=fp16", "student.mixed_precision=no"]))
    arms = ["experiment.methods=[dakter,dakter_distilled]", "distill.mixed_precision=fp16"]
    with pytest.raises(ConfigError, match=r"distill\.mixed_precision=fp16: a study"):
        check_one_precision(load_config(None, ["diffusion.mixed_precision=no", "student.mixed_precision=no", *arms]))
