"""The study's arms of issue 30: instance_paste (copy-paste from an instance bank, one arm per bank size)
and pretrain_finetune (generated pairs alone, then real scenes with copy-paste, the same total steps)."""

from __future__ import annotations

import json

import pytest
import torch
from test_experiment import TINY

from dakter_scale.config import ConfigError, load_config
from dakter_scale.student import pretrain
from dakter_scale.student.pretrain import RECORD, phase_steps, pretrain_finetune, pretrain_folder
from dakter_scale.study.analyse import Results
from dakter_scale.study.plan import InstanceBank, Plan, method_name

ARMS = [
    "experiment.methods=[none,copy_paste,instance_paste,pretrain_finetune]",
    "synthesis.target.spec=oil:3x,ship:3x",
    "experiment.bank_sizes=[1000,10000]",
    "experiment.seeds=[0]",
    "experiment.decode_study=[]",
]


def test_the_new_arms_in_the_plan():
    plan = Plan(load_config(None, TINY + ARMS), n_train=6)
    runs = {r.method: r for r in plan.main_runs()}
    assert plan.methods() == ["none", "copy_paste", "instance_paste_1000", "instance_paste_10000", "pretrain_finetune"]
    for n in (1000, 10000):
        run = runs[f"instance_paste_{n}"]
        assert run.name == f"instance_paste_{n}-unet-r0-s0" and run.generated is None and run.ratio == 0
        assert dict(run.overrides) == {
            **dict(runs["copy_paste"].overrides),
            "student.instance_bank": "bank",
            "student.instance_bank_size": n,
        }
    finetune = runs["pretrain_finetune"]
    assert finetune.generated == "b_cfg" and finetune.ratio == 1.0 and finetune.labels == "soft"
    assert dict(finetune.overrides) == dict(runs["copy_paste"].overrides)  # the fine-tuning's copy-paste
    assert plan.banks() == [InstanceBank("bank", "b_cfg", 10000, "unet")]
    units = plan.units()
    assert units.index(plan.banks()[0]) < units.index(plan.main_runs()[0]), "the bank before the table"
    grid = Plan(
        load_config(
            None,
            TINY
            + ARMS
            + ["experiment.steps_grid=[3,5]", "experiment.validation_spec=synthetic:6?size=32&test=3&seed=7"],
        ),
        n_train=6,
    )
    assert grid.pending() and grid.banks()[0] not in grid.units(), "the bank waits for the judge's chosen length"
    assert method_name("instance_paste_10000") == "copy-paste of generated instances, bank of 10,000"
    # the verdicts hold each bank size against copy-paste, and pretraining against copy-paste
    runs_scores = {r.name: {"miou": 0.5} for r in plan.main_runs()}
    pairs = {(v["a"], v["b"]) for v in Results(runs_scores, plan).verdicts()}
    assert {("instance_paste_1000", "copy_paste"), ("instance_paste_10000", "copy_paste")} <= pairs
    assert ("pretrain_finetune", "copy_paste") in pairs
    with pytest.raises(ConfigError, match="experiment.bank_sizes"):
        load_config(None, TINY + ["experiment.methods=[instance_paste]", "synthesis.target.spec=ship:3x"])
    with pytest.raises(ConfigError, match="experiment.pretrain_share"):
        load_config(None, TINY + ARMS + ["experiment.pretrain_share=1.0"])


@pytest.mark.slow  # a study that trains a judge, draws pairs and cuts a bank (~40 s); the scarcity study runs it
def test_a_study_with_instance_paste_records_its_bank(tmp_path):
    """The instance_paste arms end to end: the judge, the bank grown from drawn pairs, one student per
    bank size, and the bank's counts in results.json and results.md; and a pretrain_finetune student."""
    from test_experiment import Experiment

    cfg = load_config(
        None,
        TINY
        + ARMS[3:]
        + [
            "experiment.methods=[none,copy_paste,instance_paste,pretrain_finetune]",
            "synthesis.target.spec=oil:3x",
            "experiment.bank_sizes=[2,4]",
            "synthesis.bank.classes=[oil]",
            "synthesis.bank.min_agreement=0.0",  # the 2-step judge agrees with nothing: keep every instance
            "synthesis.bank.max_pairs=48",
            "student.checkpoint_every=1",  # so that there are checkpoints to drop
        ],
    )
    report = Experiment(cfg, tmp_path, progress=False).run().read_text()
    payload = json.loads((tmp_path / "results.json").read_text())
    bank = payload["banks"]["bank"]
    kept = json.loads((tmp_path / "generated" / "bank" / "dataset.json").read_text())["instances"]
    assert bank["count"] == kept["count"] >= 4 and bank["by_class"] == {"oil": bank["count"]}
    assert bank["candidates"] == bank["count"] + bank["rejected"] and bank["judge_arch"] == "unet"
    assert {"instance_paste_2-unet-r0-s0", "instance_paste_4-unet-r0-s0"} <= set(payload["runs"])
    assert f"Instance bank `bank`: {bank['count']:,} instances (oil {bank['count']:,})" in report
    # finished students, the pretraining phase's included, keep no checkpoints
    assert (tmp_path / "students" / "pretrain_finetune-unet-r1-s0-pretrain" / "model.safetensors").is_file()
    assert not list((tmp_path / "students").glob("*/checkpoints"))


def test_students_every_grid_outcome_trains_alike_do_not_wait_for_it():
    """With a ratio grid alone, the real-only arms (but copy_paste_matched, whose paste share follows the
    ratio) and the bank with its judge are planned before the choice, as the students the choice then
    plans; with a length grid every student waits."""
    from dakter_scale.study.plan import StudentRun

    val = "experiment.validation_spec=synthetic:6?size=32&test=3&seed=7"
    arms = [
        "experiment.methods=[none,copy_paste,copy_paste_matched,dakter,instance_paste]",
        "experiment.ratio_grid=[1.0,2.0]",
    ]
    cfg = load_config(None, TINY + ARMS[1:] + arms + [val])
    plan = Plan(cfg, n_train=6)
    early = [u for u in plan.units() if isinstance(u, StudentRun)]
    assert plan.pending() and [r.name for r in early] == [
        "none-unet-r0-s0",
        "copy_paste-unet-r0-s0",
        "instance_paste_1000-unet-r0-s0",
        "instance_paste_10000-unet-r0-s0",
    ]
    assert plan.banks()[0] in plan.units()
    for ratio in (1.0, 2.0):
        chosen = Plan(cfg, n_train=6, chosen={"unet": (1.0, ratio, None)})
        assert set(early) < set(chosen.units()), "the same students, settings and all, after either choice"
    lengths = Plan(load_config(None, TINY + ARMS[1:] + arms + [val, "experiment.steps_grid=[3,5]"]), n_train=6)
    assert not [u for u in lengths.units() if isinstance(u, StudentRun)] and lengths.banks()[0] not in lengths.units()


def test_the_matched_copy_paste_control_pastes_as_often_as_pasted_after():
    arms = ["experiment.methods=[copy_paste,pasted_after,copy_paste_matched]", "experiment.ratio=2.0"]
    plan = Plan(load_config(None, TINY + ARMS[1:] + arms), n_train=6)
    runs = {r.method: r for r in plan.main_runs()}
    matched, after = dict(runs["copy_paste_matched"].overrides), dict(runs["pasted_after"].overrides)
    assert runs["copy_paste_matched"].generated is None and runs["copy_paste_matched"].ratio == 0
    # pasted_after's batches are r / (1 + r) generated, every one pasted: the control pastes that share of real ones
    assert matched["student.copy_paste_real"] == pytest.approx(2 / 3) and after["student.copy_paste_generated"] == 1.0
    assert matched["student.copy_paste"] == after["student.copy_paste"] == "oil:3x,ship:3x"
    pairs = {(v["a"], v["b"]) for v in Results({}, plan).verdicts()}
    assert ("pasted_after", "copy_paste_matched") in pairs and ("pasted_after", "copy_paste") in pairs


def test_phase_steps_add_up_to_the_total():
    for total in (2, 3, 7, 600, 1200):
        for share in (0.01, 0.25, 0.5, 0.99):
            pre, fine = phase_steps(total, share)
            assert pre + fine == total and pre >= 1 and fine >= 1
    assert phase_steps(1200, 0.5) == (600, 600)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from shardgen import write_dataset

    url = str(tmp_path_factory.mktemp("gen") / "set")
    write_dataset(url, [4, 4], size=32)
    return url


def student_cfg(*extra):
    return load_config(
        None,
        TINY
        + [
            "student.max_steps=5",
            "student.checkpoint_every=1",
            "student.max_generated=6",
            "student.copy_paste=oil:3x",
            "student.augment=d4",
            *extra,
        ],
    )


def test_pretrain_finetune_uses_the_same_total_steps_and_resumes_exactly(generated, tmp_path, monkeypatch):
    cfg = student_cfg()
    whole = pretrain_finetune(cfg, tmp_path / "whole", generated, 0.4, progress=False)
    first = json.loads((pretrain_folder(whole) / "student.json").read_text())
    second = json.loads((whole / "student.json").read_text())
    record = json.loads((whole / RECORD).read_text())
    assert first["steps"] + second["steps"] == cfg.student.max_steps == record["total_steps"] == 5  # asserted total
    assert (first["steps"], second["steps"]) == (2, 3)
    assert first["ratio"] == "inf" and first["generated_share"] == 1.0 and first["copy_paste"] is None
    assert second["ratio"] == 0 and second["init"] == str(pretrain_folder(whole))
    assert second["copy_paste"]["target"] == "oil:3x" and second["generated_share"] == 0.0

    # killed during the fine-tuning (after its second step's checkpoint), then run again: the same bytes
    calls = {"n": 0}
    real_loss = pretrain.train_student.__globals__["mixed_loss"]

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # 2 pretraining steps, then the fine-tuning's third
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setitem(pretrain.train_student.__globals__, "mixed_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        pretrain_finetune(cfg, tmp_path / "killed", generated, 0.4, progress=False)
    monkeypatch.setitem(pretrain.train_student.__globals__, "mixed_loss", real_loss)
    assert not (tmp_path / "killed" / "student.json").exists()
    assert json.loads((tmp_path / "killed" / RECORD).read_text())["finetune_steps"] == 3  # the record comes first
    resumed = pretrain_finetune(cfg, tmp_path / "killed", generated, 0.4, progress=False)
    for folder in (pretrain_folder, lambda d: d):
        a, b = folder(whole) / "model.safetensors", folder(resumed) / "model.safetensors"
        assert a.read_bytes() == b.read_bytes()
    from safetensors.torch import load_file

    assert not torch.equal(
        load_file(str(pretrain_folder(whole) / "model.safetensors"))[
            next(iter(load_file(str(whole / "model.safetensors"))))
        ],
        load_file(str(whole / "model.safetensors"))[next(iter(load_file(str(whole / "model.safetensors"))))],
    ), "the fine-tuning moved the pretrained weights"

    # both phases finished: a rerun trains nothing; a time budget is split between them as the steps are
    def no_training(cfg, out, **kwargs):
        raise AssertionError(f"{out} trained again")

    monkeypatch.setattr(pretrain, "train_student", no_training)
    assert pretrain_finetune(cfg, whole, generated, 0.4, progress=False) == whole
    minutes = []

    def budgeted(c, out, **kwargs):
        minutes.append(c.student.max_minutes)
        out.mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(pretrain, "train_student", budgeted)
    pretrain_finetune(cfg.replace(**{"student.max_minutes": 10.0}), tmp_path / "budget", generated, 0.4, progress=False)
    assert minutes == [pytest.approx(4.0), pytest.approx(6.0)]


def test_init_from_another_architecture_is_one_clear_error(generated, tmp_path):
    from dakter_scale.student.models import StudentError
    from dakter_scale.student.train import train_student

    first = train_student(student_cfg("student.max_steps=1", "student.copy_paste=''"), tmp_path / "a", progress=False)
    with pytest.raises(StudentError, match=r"^student.init .* is unet / .*, this student segformer"):
        train_student(
            student_cfg(
                "student.max_steps=1", "student.copy_paste=''", "student.arch=segformer", f"student.init={first}"
            ),
            tmp_path / "b",
            progress=False,
        )


@pytest.mark.slow  # a study that distils and draws (~17 s); the evidence study runs the arm itself
def test_the_distilled_arm_draws_its_pairs_with_the_distilled_sampler(tmp_path):
    """dakter_distilled (issue 31): b_cfg's sampler distilled by the distill section into
    models/b_cfg_distilled, its pairs drawn with that sampler, its students paired against dakter's."""
    from test_experiment import Experiment

    cfg = load_config(
        None,
        TINY
        + [
            "experiment.methods=[dakter,dakter_distilled]",
            "experiment.decode_study=[]",
            "distill.steps=1",
            "distill.max_steps=2",
            "distill.batch_size=2",
            "distill.checkpoint_every=1",  # checkpoints for the study to drop once each model is done
            "diffusion.checkpoint_every=1",
        ],
    )
    plan = Plan(cfg, n_train=6)
    sets = {s.name: s for s in plan.generated_sets()}
    assert plan.models() == ["b_cfg", "b_cfg_distilled"]
    assert dict(sets["b_cfg_distilled"].sampling) == {"sampler": "distilled", "steps": 1}
    assert {r.generated for r in plan.main_runs() if r.method == "dakter_distilled"} == {"b_cfg_distilled"}
    run = Experiment(cfg, tmp_path, progress=False).run()
    info = json.loads((tmp_path / "models" / "b_cfg_distilled" / "dakter.json").read_text())
    assert info["distilled"]["evaluations_per_pair"] == 1 and info["sampling"]["sampler"] == "distilled"
    drawn = json.loads((tmp_path / "generated" / "b_cfg_distilled" / "dataset.json").read_text())
    assert drawn["count"] == 6 and drawn["sampling"]["sampler"] == "distilled" and drawn["sampling"]["steps"] == 1
    student = json.loads((tmp_path / "students" / "dakter_distilled-unet-r1-s0" / "student.json").read_text())
    assert student["synthetic"].endswith("b_cfg_distilled")
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["steps"]["distillation_rounds"] == {"b_cfg_distilled": [2]}
    assert set(payload["quality"]) == {"b_cfg", "b_cfg_distilled"}
    assert "| dakter_distilled − dakter (the distilled sampler against sampling.*) | unet |" in run.read_text()
    assert (tmp_path / "models" / "b_cfg" / "unet").is_dir() and not list(tmp_path.glob("models/*/checkpoints"))
    # a kept distilled folder of another generator (or step count) is refused in one line
    path = tmp_path / "models" / "b_cfg_distilled" / "dakter.json"
    path.write_text(json.dumps(dict(info, distilled=dict(info["distilled"], undistilled_model_hash="0" * 64))))
    with pytest.raises(ConfigError, match=r"from model 000000000000\.\.\.'s DDIM-2 to 1 steps, not from models/b_cfg"):
        Experiment(cfg, tmp_path, progress=False).run()
    path.write_text(json.dumps(info))  # the same model and steps, another first teacher
    with pytest.raises(ConfigError, match=r"DDIM-2 to 1 steps, not from models/b_cfg \(\w+\.\.\.\)'s DDIM-4 to 1"):
        Experiment(cfg.replace(**{"distill.teacher_steps": 4}), tmp_path, progress=False).run()
    with pytest.raises(ConfigError, match=r"progressive-distilled, not by consistency \(distill.method\)"):
        Experiment(cfg.replace(**{"distill.method": "consistency"}), tmp_path, progress=False).run()


def test_only_keeps_the_matching_students_and_what_they_read():
    from dakter_scale.study.plan import GeneratedSet, Model, StudentRun

    arms = ["experiment.methods=[none,copy_paste,dakter,dakter_target,instance_paste]", "experiment.ratio=1.0"]
    plan = Plan(load_config(None, TINY + ARMS[1:] + arms), n_train=6)
    units = plan.units()

    def kinds(selected):
        return sorted(
            (type(u).__name__, u.tag if isinstance(u, Model) else u.name)
            for u in selected
            if not isinstance(u, StudentRun)
        ), sorted(u.name for u in selected if isinstance(u, StudentRun))

    assert kinds(plan.only(units, ["none-*", "copy_paste-*"])) == ([], ["copy_paste-unet-r0-s0", "none-unet-r0-s0"])
    support, students = kinds(plan.only(units, ["dakter_target-*"]))
    assert support == [("GeneratedSet", "b_cfg_target"), ("Model", "b_cfg")] and students == [
        "dakter_target-unet-r1-s0"
    ]
    support, students = kinds(plan.only(units, ["instance_paste_1000-*"]))
    assert support == [("InstanceBank", "bank"), ("Model", "b_cfg")]
    assert students == ["instance_paste_1000-unet-r0-s0", plan.real_only("unet").name]  # the bank's judge
    assert plan.only(units, ["nothing-*"]) == []
    kept = plan.only(units, ["dakter-*", "none-*"])
    assert kept == [u for u in units if u in kept]  # the plan's order
    assert any(isinstance(u, GeneratedSet) and u.name == "b_cfg" for u in kept)
