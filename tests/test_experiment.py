"""The experiment runner on a tiny config: every method runs, tables and figures are written, a rerun resumes."""

import json
import subprocess
from pathlib import Path

import pytest

from dakter_scale.config import ConfigError, load_config
from dakter_scale.experiment import Experiment
from dakter_scale.study.plan import Plan, Selection, student_of

from conftest import ROOT, job

TINY = [
    "data.spec=synthetic:6?size=32&test=3",
    "data.resolution=32",
    "diffusion.unet.block_out_channels=[8,16]",
    "diffusion.batch_size=4",
    "diffusion.max_steps=2",
    "sampling.steps=2",
    "synthesis.samples_per_shard=4",
    "synthesis.batch_size=6",
    "synthesis.actors=1",
    "student.batch_size=4",
    "student.max_steps=2",
    "student.shuffle_buffer=2",
    "student.encoder_depth=3",
    "experiment.archs=[unet]",
    "experiment.seeds=[0,1]",
    "experiment.ratio=1.0",
    "experiment.sweep_archs=[]",
    "experiment.quality_pairs=6",
    "experiment.figure_samples=2",
    "experiment.decode_study=[softmax:1]",
    "experiment.study_ratio=1.0",
]


def test_tiny_experiment_runs_and_resumes(tmp_path):
    # students checkpoint every step here, so that a finished one has checkpoints to drop
    cfg = load_config(
        None, TINY + ["experiment.filter_keep=0.5", "experiment.kd_weights=[unet:0.7]", "student.checkpoint_every=1"]
    )
    exp = Experiment(cfg, tmp_path, progress=False)
    assert exp.plan.gen_size() == 6  # ratio 1 x 6 training images
    path = exp.run()
    text = path.read_text()
    for name in ("no augmentation", "hard labels", "DAKTer (soft labels + KD)", "b = 1"):
        assert name in text
    assert (
        "| dakter − hard (soft against hard labels) | unet |" in text
    )  # the verdict: same-seed differences with their interval
    assert "KD weight λ = 1 (unet 0.7)" in text
    payload = json.loads((tmp_path / "results.json").read_text())
    assert len(payload["runs"]) == 2 * 4  # seeds x methods
    assert set(payload["quality"]) == {"b_cfg", "b_1", "b_cfg_all", "b_1_all"} and payload["b"]["b_1"] == 1.0
    # the filter drew 2 x 6 pairs per model and kept the 6 best-aligned, scored by the real-only unet
    for tag in ("b_cfg", "b_1"):
        drawn = json.loads((tmp_path / "generated" / f"{tag}_all" / "dataset.json").read_text())
        kept = json.loads((tmp_path / "generated" / tag / "dataset.json").read_text())
        assert drawn["count"] == 12 and kept["count"] == 6 and kept["filter"]["source_count"] == 12
        assert kept["filter"]["segmenter"].endswith("none-unet-r0-s0")
    assert "best-aligned of 12 drawn pairs" in text
    assert payload["studies"]["decode"][0]["variant"] == "softmax:1"
    for fig in ("per_class_iou.png", "samples_b_cfg.png", "samples_b_1.png"):
        assert (tmp_path / fig).stat().st_size > 1000
    student = json.loads((tmp_path / "students" / "hard-unet-r1-s0" / "student.json").read_text())
    assert student["labels"] == "hard" and student["ratio"] == 1.0
    # the per-student lambda reached the DAKTer students' config, not the hard-label ones
    for name, weight in (("dakter-unet-r1-s0", 0.7), ("dakter_b1-unet-r1-s1", 0.7), ("hard-unet-r1-s0", 1.0)):
        assert load_config(tmp_path / "students" / name / "config.yaml").student.kd_weight == weight
    # a finished student keeps its weights and scores, not the checkpoints that only a resume reads
    assert not list((tmp_path / "students").glob("*/checkpoints"))
    # A rerun finds every unit done: nothing is retrained.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "students").rglob("model.safetensors")}
    Experiment(cfg, tmp_path, progress=False).run()
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "students").rglob("model.safetensors")}
    assert before == after


def test_plan_sweep_seeds_and_generated_size():
    cfg = load_config(
        None,
        TINY + ["experiment.sweep_archs=[unet]", "experiment.sweep_ratios=[0.5,3.0]", "experiment.sweep_seeds=[1]"],
    )
    plan = Plan(cfg, n_train=6)
    sweep = plan.sweep_runs()
    assert {r.seed for r in sweep} == {1}  # sweep_seeds overrides seeds
    assert sorted({r.ratio for r in sweep}) == [0.5, 3.0]
    assert plan.gen_size() == 18  # the largest ratio (3.0) x 6 training images
    main = plan.main_runs()
    assert {r.seed for r in main} == {0, 1} and len(main) == 2 * 4  # 2 seeds x 4 methods
    assert {r.generated for r in main if r.method == "dakter_b1"} == {"b_1"}


def test_per_student_kd_weight_and_matched_control():

    cfg = load_config(
        None,
        TINY
        + [
            "experiment.archs=[unet,segformer]",
            "experiment.methods=[hard,hard_matched,dakter,dakter_b1]",
            "experiment.kd_weights=[unet:1.0]",
            "student.kd_weight=0.5",
        ],
    )
    plan = Plan(cfg, n_train=6)
    assert plan.kd_weight("unet") == 1.0 and plan.kd_weight("segformer") == 0.5
    runs = [r for r in plan.main_runs() if r.seed == 0]
    by = {(r.method, r.arch): r for r in runs}
    assert (
        by[("dakter", "unet")].weight == 1.0
        and by[("dakter_b1", "unet")].weight == 1.0
        and by[("dakter", "segformer")].weight == 0.5
    )
    # segformer: hard labels weighted 0.5 on generated pairs, the same pairs as hard
    matched = by[("hard_matched", "segformer")]
    assert (
        matched.labels == "hard"
        and matched.weight == 0.5
        and matched.generated == "b_cfg"
        and matched.name == "hard_matched-segformer-r1-s0"
    )
    assert by[("hard", "segformer")].weight is None
    # unet: lambda 1 is the hard baseline's own CE weight, so its control is the hard run itself
    assert ("hard_matched", "unet") not in by and plan.run("hard_matched", "unet", 1.0, 0) == by[("hard", "unet")]
    assert len({r.name for r in runs}) == 7
    with pytest.raises(ConfigError, match="experiment.kd_weights"):
        load_config(None, TINY + ["experiment.kd_weights=[unet]"])
    with pytest.raises(ConfigError, match="not a student of this experiment"):
        load_config(None, TINY + ["experiment.kd_weights=[Unet:1.0]"])


def test_more_seeds_train_after_every_students_seeds_and_count_in_that_students_verdicts():
    from dakter_scale.study.analyse import Results
    from dakter_scale.study.report import seed_counts

    more = ["experiment.archs=[unet,segformer]", "experiment.methods=[none,dakter]", "experiment.more_seeds=[unet:3]"]
    plan = Plan(load_config(None, TINY + more), n_train=6)
    order = [(r.arch, r.seed) for r in plan.main_runs()]
    assert order == [
        (a, s) for a, s in [("unet", 0), ("unet", 1), ("segformer", 0), ("segformer", 1), ("unet", 3)] for _ in (0, 1)
    ]
    assert plan.e.seeds_of("unet") == (0, 1, 3) and plan.e.seeds_of("segformer") == (0, 1)
    assert seed_counts(plan.e) == "2 seeds (unet: 3)"
    # unet's verdict is over its three seeds, segformer's over its two
    miou = {r.name: {"miou": 50.0 + r.seed + (2.0 if r.method == "dakter" else 0.0)} for r in plan.main_runs()}
    results = Results(miou, plan)
    assert results.differences("dakter", "none", "unet", plan.ratio("unet")) == [2.0, 2.0, 2.0]
    assert len(results.differences("dakter", "none", "segformer", plan.ratio("segformer"))) == 2
    for bad, said in (
        ("[unet:1]", "already one of experiment.seeds"),
        ("[deeplabv3plus:3]", "is not ARCH:SEED"),
        ("[unet:three]", "is not ARCH:SEED"),
        ("[unet:3,unet:3]", "given twice"),
    ):
        with pytest.raises(ConfigError, match=said):
            load_config(None, TINY + more[:2] + [f"experiment.more_seeds={bad}"])


def test_filter_keep_is_checked():

    with pytest.raises(ConfigError, match="experiment.filter_keep"):
        load_config(None, TINY + ["experiment.filter_keep=1.0"])


def test_sweep_table_has_same_seed_differences():
    """The sweep table counts every sweep seed, also one outside the main table's seeds, and gives
    the same-seed DAKTer - hard difference per ratio."""
    from dakter_scale.study.report import experiment_markdown

    cfg = load_config(
        None,
        TINY
        + [
            "experiment.methods=[none,hard,dakter]",
            "experiment.sweep_archs=[unet]",
            "experiment.sweep_methods=[hard,dakter]",
            "experiment.sweep_ratios=[1.0,3.0]",
            "experiment.sweep_seeds=[0,1,5]",
        ],
    )
    plan = Plan(cfg, n_train=6)
    classes = ["sea", "oil", "look-alike", "ship", "land"]
    runs = {}
    for r in plan.main_runs() + plan.sweep_runs():
        base = {"none": 0.50, "hard": 0.51, "dakter": 0.52}[r.method] + 0.01 * r.ratio + 0.001 * r.seed
        if r.method == "dakter" and r.seed == 5 and r.ratio == 3.0:
            base -= 0.05  # the one seed where hard labels lead
        runs[r.name] = {"miou": base, "mean_f1": base, "iou": [base] * len(classes)}
    text = experiment_markdown(
        {
            "runs": runs,
            "quality": {},
            "studies": {},
            "timings_s": {"total": 1.0},
            "b": {"b_cfg": 0.3},
            "generated_pairs": 18,
            "n_train": 6,
        },
        plan,
        classes,
    )
    sweep_section = text.split("## Augmentation ratio sweep")[1].split("##")[0]
    rows = {line.split("|")[2].strip(): line for line in sweep_section.splitlines() if line.startswith("| unet |")}
    sweep = rows["DAKTer − hard labels, same seeds (points; seeds ahead)"].split("|")[3:-1]
    assert [c.strip() for c in sweep] == ["–", "+1.00 [+1.00, +1.00] (3/3) ahead", "-0.67 [-7.84, +6.51] (2/3) tie"]
    # ratio 3: seeds 0, 1 and 5 of hard labels, 51 + 3 + (0, 0.1, 0.5) / 3 points
    assert rows["hard labels (DDPM / SatSynth style)"].split("|")[-2].strip().startswith("54.20")


def test_the_header_names_the_test_split_and_the_lengths_chosen_on_validation():
    """A study with a length grid says which length each student got, and results.json's test split
    is named in the header, not the data's own split."""
    from dakter_scale.study.report import header

    cfg = load_config(
        None,
        TINY
        + [
            "experiment.archs=[unet,segformer]",
            "experiment.steps_grid=[600,1200]",
            "experiment.ratio_grid=[2.0,4.0]",
            "experiment.validation_spec=synthetic:6?size=32&test=3&seed=7",
        ],
    )
    plan = Plan(cfg, n_train=6, chosen={"unet": (1.0, 2.0, 600), "segformer": (1.0, 4.0, 1200)})
    payload = {"n_train": 6, "b": {"b_cfg": 0.3}, "generated_pairs": 24}
    splits = {"test": {"spec": "synthetic:6?size=32&test=5&seed=43", "scenes": 5, "fingerprint": "x"}}
    text = "\n".join(header({**payload, "splits": splits}, plan))
    assert "scored on the test split `synthetic:6?size=32&test=5&seed=43` (5 scenes)" in text
    assert "students' steps of batch 4 chosen on the validation split: unet 600, segformer 1200" in text
    assert "students 2 steps" not in text
    assert "evaluated on the full test split" in "\n".join(header(payload, Plan(cfg, n_train=6)))


@pytest.mark.parametrize(
    "layout", [pytest.param("osd", marks=pytest.mark.slow), pytest.param("sos", marks=pytest.mark.slow)]
)  # the readers test both layouts; the demo and test_tiny_experiment run the command by default
def test_experiment_command_on_a_folder_layout(tmp_path, layout):
    """The experiment command takes an OSD or SOS folder (JPEG scenes, PNG masks on disk) with no
    code change: the classes, the per-class table and b come from the folder."""
    import subprocess

    from dakter_scale.data import synthetic_sar as S

    from conftest import job

    root = tmp_path / layout
    if layout == "osd":
        S.write_osd_layout(root, n_train=6, n_test=3, height=40, width=72, seed=3, progress=False)
        classes = ["sea", "oil", "look-alike", "ship", "land"]
    else:
        S.write_sos_layout(root, n_train=6, n_test=3, size=48, seed=3, progress=False)
        classes = ["background", "oil"]
    overrides = [o for o in TINY if not o.startswith(("data.spec", "experiment.decode_study"))] + [
        "experiment.decode_study=[]",
        "experiment.seeds=[0]",
        "experiment.methods=[none,hard,dakter]",
    ]
    out = tmp_path / "exp"
    r = subprocess.run(
        job("experiment.py") + ["--data", f"{layout}:{root}", "--out", str(out)] + overrides,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    text = (out / "results.md").read_text()
    assert f"Data `{layout}:{root}`: 6 training images" in text
    assert "| student | method | " + " | ".join(classes) + " |" in text
    payload = json.loads((out / "results.json").read_text())
    assert len(payload["runs"]) == 3 and all(len(m["iou"]) == len(classes) for m in payload["runs"].values())
    info = json.loads((out / "models" / "b_cfg" / "dakter.json").read_text())
    assert info["classes"] == classes and info["channels"] == 1 + len(classes) and 0 < info["b"] < 1


def test_kd_weight_chosen_on_validation_then_rescored(tmp_path):
    """experiment.kd_weight_grid trains one DAKTer student per lambda, scores it on the validation
    split only, and the main table's students use the best lambda (the grid's student is reused, not
    retrained); --rescore scores every finished student on another split and tabulates them."""
    val = "synthetic:6?size=32&test=3&seed=7"
    cfg = load_config(
        None,
        TINY
        + [
            "experiment.seeds=[0]",
            "experiment.methods=[none,hard,hard_matched,dakter]",
            "experiment.decode_study=[]",
            "experiment.kd_weight_grid=[0.5,1.0]",
            f"experiment.validation_spec={val}",
        ],
    )
    exp = Experiment(cfg, tmp_path, progress=False)
    assert exp.plan.pending() and [student_of(u).name for u in exp.plan.units()[2:]] == [
        "dakter-unet-r1-s0-kd0.5",
        "dakter-unet-r1-s0-kd1",
        "none-unet-r0-s0",  # the students that no lambda changes: they need not wait for the grid
        "hard-unet-r1-s0",
    ]
    exp.run()
    payload = json.loads((tmp_path / "results.json").read_text())
    choice = payload["kd_weight_choice"]["unet"]
    scores = {
        w: json.loads((tmp_path / "students" / f"dakter-unet-r1-s0-kd{w}" / "metrics_validation.json").read_text())
        for w in ("0.5", "1")
    }
    assert (
        all(m["data"] == val for m in scores.values())
        and not (tmp_path / "students" / "dakter-unet-r1-s0-kd1" / "metrics.json").exists()
    )
    assert choice["miou"] == {w: {"0": m["miou"]} for w, m in scores.items()}
    chosen = choice["chosen"]
    assert chosen == (0.5 if scores["0.5"]["miou"] >= scores["1"]["miou"] else 1.0)
    main = tmp_path / "students" / "dakter-unet-r1-s0"
    assert load_config(main / "config.yaml").student.kd_weight == chosen
    twin = tmp_path / "students" / f"dakter-unet-r1-s0-kd{chosen:g}"
    assert (main / "model.safetensors").read_bytes() == (twin / "model.safetensors").read_bytes()
    # copied with its time stamp, not trained again (training is deterministic: equal bytes alone would not tell)
    assert (main / "model.safetensors").stat().st_mtime_ns == (twin / "model.safetensors").stat().st_mtime_ns
    # the control follows the chosen lambda: at 1.0 it is the hard run itself
    assert ("hard_matched-unet-r1-s0" in payload["runs"]) == (chosen != 1.0)
    assert "## KD weight λ, chosen on the validation split" in (tmp_path / "results.md").read_text()

    path = Experiment(cfg, tmp_path, progress=False).rescore("synthetic:6?size=32&test=5&seed=11", "test5")
    rescored = json.loads((tmp_path / "rescore_test5.json").read_text())
    assert set(rescored["runs"]) == set(payload["runs"]) and all(m["images"] == 5 for m in rescored["runs"].values())
    assert (tmp_path / "students" / "hard-unet-r1-s0" / "metrics_test5.json").is_file()
    assert "## Main comparison at ratio 1 (100 %)" in path.read_text()

    with pytest.raises(ConfigError, match="another tag"):
        Experiment(cfg, tmp_path, progress=False).rescore("synthetic:6?size=32&test=4&seed=12", "test5")
    # the same names with another setting behind one (lambda set by hand, not the grid's choice): the kept
    # scores are refused, naming what changed, instead of standing for a student that was never trained
    other = 1.0 if chosen == 0.5 else 0.5
    changed = load_config(
        None,
        [
            *TINY,
            "experiment.seeds=[0]",
            "experiment.methods=[none,hard,hard_matched,dakter]",
            "experiment.decode_study=[]",
            f"experiment.kd_weights=[unet:{other:g}]",
        ],
    )
    with pytest.raises(
        ConfigError,
        match=rf"dakter-unet-r1-s0/metrics\.json: kept for another run of dakter-unet-r1-s0 \(weight {chosen!r} now {other!r}\)",
    ):
        Experiment(changed, tmp_path, progress=False).run()


@pytest.mark.slow  # trains a tiny generator and 5 students (~2 min)
def test_ratio_chosen_on_validation(tmp_path):
    """experiment.ratio_grid: each main-table student's DAKTer students at every ratio of the grid are
    scored on the validation split only; the table's hard and DAKTer students run at the best ratio,
    and the generated set covers the largest ratio of the grid."""
    val = "synthetic:6?size=32&test=3&seed=7"
    cfg = load_config(
        None,
        TINY
        + [
            "experiment.seeds=[0]",
            "experiment.methods=[none,hard,dakter]",
            "experiment.decode_study=[]",
            "experiment.ratio_grid=[0.5,2.0]",
            f"experiment.validation_spec={val}",
        ],
    )
    exp = Experiment(cfg, tmp_path, progress=False)
    assert exp.plan.gen_size() == 12  # the grid's largest ratio, 2 x 6 training images
    assert exp.plan.pending() and [u.run.name for u in exp.plan.units() if isinstance(u, Selection)] == [
        "dakter-unet-r0.5-s0-kd1",
        "dakter-unet-r2-s0-kd1",
    ]
    exp.run()
    payload = json.loads((tmp_path / "results.json").read_text())
    choice = payload["kd_weight_choice"]["unet"]
    scores = {
        r: json.loads((tmp_path / "students" / f"dakter-unet-r{r}-s0-kd1" / "metrics_validation.json").read_text())[
            "miou"
        ]
        for r in ("0.5", "2")
    }
    assert choice["miou"] == {f"1@{r}": {"0": m} for r, m in scores.items()}
    ratio = 0.5 if scores["0.5"] >= scores["2"] else 2.0
    assert choice["chosen"] == 1.0 and choice["chosen_ratio"] == ratio
    assert set(payload["runs"]) == {"none-unet-r0-s0", f"hard-unet-r{ratio:g}-s0", f"dakter-unet-r{ratio:g}-s0"}
    main, twin = (
        tmp_path / "students" / f"dakter-unet-r{ratio:g}-s0",
        tmp_path / "students" / f"dakter-unet-r{ratio:g}-s0-kd1",
    )
    assert (main / "model.safetensors").read_bytes() == (
        twin / "model.safetensors"
    ).read_bytes()  # reused, not retrained
    text = (tmp_path / "results.md").read_text()
    assert (
        "## Augmentation ratio and KD weight λ, chosen on the validation split" in text
        and f"## Main comparison at the ratio chosen on the validation split (unet {ratio:g})" in text
    )
    # a rerun plans the same students and trains nothing
    again = Experiment(cfg, tmp_path, progress=False)
    again.choose()
    assert all(again.units.done(u) for u in again.plan.units())


@pytest.mark.parametrize("run", ["cpu", "evidence_64", "scarcity_10", "scarcity_20", "scarcity_40", "scarcity_100"])
def test_committed_results_regenerate(tmp_path, run):
    """The report code rebuilds each committed run's results.md byte for byte from its results.json."""
    import shutil

    from dakter_scale.experiment import write_report

    from conftest import ROOT

    shutil.copy(ROOT / "docs" / "results" / run / "results.json", tmp_path / "results.json")
    assert write_report(tmp_path).read_text() == (ROOT / "docs" / "results" / run / "results.md").read_text()
    assert (tmp_path / "per_class_iou.png").is_file()
    assert run != "cpu" or (tmp_path / "ratio_sweep_unet.png").is_file()


def test_sampler_frontier_plan_table_and_figure(tmp_path):
    """Sampler study entries SAMPLER:STEPS[:ORDER] become generated sets with those sampling settings;
    with study_seeds [] no student is planned, and the report shows generation quality, both rates
    and the frontier figure."""
    from dakter_scale.study.report import sampler_frontier_figure, study_tables

    cfg = load_config(
        None,
        TINY
        + [
            "experiment.sampler_study=[ddim:10,dpmsolver++:10,dpmsolver++:20:3,unipc:20]",
            "experiment.study_seeds=[]",
            "experiment.decode_study=[]",
        ],
    )
    plan = Plan(cfg, n_train=6)
    variants = plan.study_variants()
    assert [dict(v.generated.sampling) for v in variants] == [
        {"sampler": "ddim", "steps": 10},
        {"sampler": "dpmsolver++", "steps": 10},
        {"sampler": "dpmsolver++", "steps": 20, "solver_order": 3},
        {"sampler": "unipc", "steps": 20},
    ]
    assert [v.generated.name for v in variants][2] == "sampler_dpmsolver++_20_3" and all(v.runs == () for v in variants)
    for bad in ("ddim:20:3", "euler:10", "dpmsolver++:0", "unipc:10:4"):
        with pytest.raises(ConfigError, match="experiment.sampler_study"):
            load_config(None, TINY + [f"experiment.sampler_study=[{bad}]"])

    def quality(miou, enl):
        return {
            "label_alignment": {"miou": miou},
            "class_fraction_tv": 0.05,
            "mean_confidence": 0.9,
            "enl_generated": enl,
            "enl_real": 2.0,
            "histogram_distance": {"tv": 0.1, "w1": 3.0},
        }

    rows = [
        {
            "variant": v.entry,
            "sampling": dict(v.generated.sampling),
            "pairs_per_second": 1.0,
            "sampling_pairs_per_second": 2.0,
            "quality": quality(0.4 + 0.01 * i, 2.0 + i),
            "miou": [],
        }
        for i, v in enumerate(variants)
    ]
    text = "\n".join(study_tables({"studies": {"sampler": rows}}, plan))
    assert "generation quality only, no students" in text and "student mIoU" not in text
    assert "| dpmsolver++:20:3 | 1.00 / 2.00 | 42.00 | 0.050 | 0.900 | 4.00 / 2.00 | 0.100 / 3.0 |" in text
    assert sampler_frontier_figure({"studies": {"sampler": rows}}, tmp_path / "f.png").stat().st_size > 1000


@pytest.mark.slow  # a study with a targeted set (~17 s); the evidence study runs the arm itself, test_target.py its routes
def test_targeted_dakter_method_runs_on_a_tiny_config(tmp_path):
    """dakter_target: the same number of pairs as dakter from the same model, meeting the class target
    (here by the conditioned route); its students and the report carry it, and a rerun keeps it."""

    with pytest.raises(ConfigError, match="methods dakter_target need a class target"):
        load_config(None, TINY + ["experiment.methods=[dakter,dakter_target]"])
    overrides = [
        "experiment.methods=[none,dakter,dakter_target]",
        "experiment.seeds=[0]",
        "experiment.decode_study=[]",
        "synthesis.target.spec=oil:3x,ship:3x",
        "synthesis.target.route=conditioned",
    ]
    cfg = load_config(None, TINY + overrides)
    plan = Plan(cfg, n_train=6)
    sets = {s.name: s for s in plan.generated_sets()}
    assert (
        sets["b_cfg_target"].model == "b_cfg"
        and sets["b_cfg_target"].target == ("oil:3x,ship:3x", "conditioned")
        and plan.models() == ["b_cfg"]
    )
    run = Experiment(cfg, tmp_path, progress=False).run()
    payload = json.loads((tmp_path / "results.json").read_text())
    target = payload["generated"]["b_cfg_target"]["target"]
    assert target["route"] == "conditioned" and target["met"] and payload["generated"]["b_cfg"]["target"] is None
    assert payload["generated"]["b_cfg_target"]["count"] == payload["generated"]["b_cfg"]["count"] == 6
    assert "label_alignment" in payload["quality"]["b_cfg_target"]
    student = json.loads((tmp_path / "students" / "dakter_target-unet-r1-s0" / "student.json").read_text())
    assert student["synthetic"].endswith("b_cfg_target") and "DAKTer, class target" in run.read_text()
    before = (tmp_path / "generated" / "b_cfg_target" / "shard-000000.tar").stat().st_mtime_ns
    Experiment(cfg, tmp_path, progress=False).run()
    assert (tmp_path / "generated" / "b_cfg_target" / "shard-000000.tar").stat().st_mtime_ns == before


def test_the_verdict_is_worded_from_the_interval():
    """Constructed same-seed differences: an interval above 0 is "ahead", one holding 0 a "tie",
    one below 0 "behind"; comparisons whose methods did not run are left out."""
    from dakter_scale.study.analyse import Results, paired, t95
    from dakter_scale.study.report import verdict_table

    cfg = load_config(
        None,
        TINY
        + [
            "experiment.methods=[none,dakter]",
            "experiment.archs=[unet,deeplabv3plus,segformer]",
            "experiment.seeds=[0,1,2]",
        ],
    )
    plan = Plan(cfg, n_train=6)
    base = (0.60, 0.61, 0.62)
    # unet: +2, +3, +2.5 points (interval above 0); deeplabv3plus: +4, -3, +1 (holds 0); segformer: -2, -3, -2.5
    shift = {"unet": (0.02, 0.03, 0.025), "deeplabv3plus": (0.04, -0.03, 0.01), "segformer": (-0.02, -0.03, -0.025)}
    runs = {
        r.name: {"miou": base[r.seed] + (shift[r.arch][r.seed] if r.method == "dakter" else 0.0)}
        for r in plan.main_runs()
    }
    verdicts = Results(runs, plan).verdicts()
    assert {(v["a"], v["b"]) for v in verdicts} == {("dakter", "none")}
    by_arch = {v["arch"]: v for v in verdicts}
    assert by_arch["unet"]["verdict"] == "ahead" and by_arch["unet"]["low"] > 0 and by_arch["unet"]["ahead"] == 3
    assert by_arch["deeplabv3plus"]["verdict"] == "tie" and by_arch["deeplabv3plus"]["ahead"] == 2
    assert by_arch["segformer"]["verdict"] == "behind" and by_arch["segformer"]["high"] < 0
    # the interval is the t-interval of the mean: +2.5 +- t(2) * 0.5 / sqrt(3)
    v = paired([0.02, 0.03, 0.025])
    assert abs(v["low"] - (0.025 - t95(2) * 0.005 / 3**0.5)) < 1e-12 and t95(2) == 4.303
    assert paired([0.01])["verdict"] == "one seed" and paired([])["verdict"] == "not run"
    text = "\n".join(verdict_table(Results(runs, plan)))
    assert "| dakter − none (generated pairs against none) | unet | +2.50 |" in text
    from dakter_scale.study.report import answer_table

    answer = "\n".join(answer_table(Results(runs, plan)))
    assert "| a − b | unet | deeplabv3plus | segformer |" in answer
    assert (
        f"| dakter − none (generated pairs against none) | +2.50 [{100 * v['low']:+.2f}, {100 * v['high']:+.2f}] **ahead** |"
        in answer
    )
    assert "**tie** | -2.50 [" in answer and answer.rstrip().endswith("**behind** |")
    assert "| ahead |" in text and "| tie |" in text and "| behind |" in text
    # a score that is not a number is not a seed: one real difference is "one seed", not a zero-width "ahead";
    # two real of three give t(1) over those two
    nan = float("nan")
    assert paired([0.01, nan])["verdict"] == "one seed" and paired([0.01, None])["n"] == 1
    two = paired([0.01, 0.02, nan])
    assert two["n"] == 2 and abs(two["high"] - (0.015 + t95(1) * (0.005 * 2**0.5) / 2**0.5)) < 1e-12
    # ... also where a run's score is missing (None) or NaN: the seed drops out of its cell and every difference
    ratio = plan.ratio("unet")
    gaps = dict(runs, **{plan.run("dakter", "unet", ratio, 0).name: {"miou": None}})
    gaps[plan.run("none", "unet", ratio, 1).name] = {"miou": nan}
    assert Results(gaps, plan).differences("dakter", "none", "unet", ratio) == pytest.approx([0.025])
    assert Results(gaps, plan).cell("dakter", "unet", ratio, "miou")[0] == pytest.approx((0.64 + 0.645) / 2)
    # beyond 30 degrees of freedom, the quantile at 30 (wider than the normal's 1.96: errs toward a tie)
    assert t95(30) == t95(100) == 2.042
    # a bound that 2 decimals would show as +0.00 gets a third: "ahead" never reads [+0.00, ...]
    from dakter_scale.study.analyse import interval, points

    assert (points(0.0000466), points(-0.0000466), points(0.0), points(0.0123)) == (
        "+0.005",
        "-0.005",
        "+0.00",
        "+1.23",
    )
    assert interval({"low": 0.0000466, "high": 0.0122}) == "+0.005, +1.22" and interval({"low": None}) == ""
    # a comparison named exploratory is marked so, in results and in the table
    explored = load_config(None, TINY + ["experiment.methods=[none,dakter]", "experiment.exploratory=[dakter-none]"])
    marked = Results(runs, Plan(explored, n_train=6)).verdicts()
    assert all(v["exploratory"] for v in marked)
    assert "(exploratory) |" in "\n".join(verdict_table(Results(runs, Plan(explored, n_train=6))))
    with pytest.raises(ConfigError, match=r"experiment\.exploratory.*'dakter-hard' is not A-B"):
        load_config(None, TINY + ["experiment.methods=[none,dakter]", "experiment.exploratory=[dakter-hard]"])


def test_a_validation_setting_whose_scores_are_not_numbers_cannot_be_chosen():
    """NaN compares greater than nothing, so max() kept a NaN first setting: with scores [nan, .70, .71,
    .72] the grid chose the NaN one. Such a setting is passed over; a grid of no numbers is refused."""
    from dakter_scale.study.analyse import choose_settings
    from dakter_scale.study.plan import StudentRun

    def run(ratio, steps, seed=0):
        return StudentRun(
            "dakter", "unet", ratio, seed, variant=f"n{steps}", weight=1.0, overrides=(("student.max_steps", steps),)
        )

    runs = [run(2.0, 600), run(2.0, 1200), run(4.0, 600), run(4.0, 1200)]
    scores = {r.name: {"miou": m} for r, m in zip(runs, [float("nan"), 0.70, 0.71, 0.72])}
    chosen = choose_settings(runs, scores, ratio_grid=True, steps_grid=True)["unet"]
    assert (chosen["chosen_ratio"], chosen["chosen_steps"]) == (4.0, 1200)
    with pytest.raises(ValueError, match="no validation score of the grid is a number"):
        choose_settings(runs, {r.name: {"miou": float("nan")} for r in runs}, ratio_grid=True, steps_grid=True)


def test_one_set_of_students_is_one_arm_and_the_grid_seed_is_left_out_once_more():
    """hard_matched at lambda 1 is hard's students: one row of the tables (labelled with both) and one
    verdict, not a second control. Where the validation grid trains on a table seed, DAKTer's verdicts are
    given again without it (its winner is DAKTer's student there); a grid on its own seed adds nothing."""
    from dakter_scale.study.analyse import Results
    from dakter_scale.study.report import main_table, verdict_table

    extra = ["experiment.methods=[none,hard,hard_matched,dakter]", "experiment.seeds=[0,1,2]"]
    grid = ["experiment.steps_grid=[3,5]", "experiment.validation_spec=synthetic:6?size=32&test=3&seed=7"]
    cfg = load_config(None, TINY + extra + grid + ["experiment.kd_weight_seeds=[0]"])
    plan = Plan(cfg, 6, {"unet": (1.0, 1.0, 5)})
    shift = {"none": 0.0, "hard": 0.01, "dakter": 0.02}
    runs = {r.name: {"miou": 0.6 + 0.01 * r.seed + shift[r.method], "mean_f1": 0.7} for r in plan.main_runs()}
    r = Results(runs, plan)
    assert r.same_as("hard_matched") == "hard" and r.same_as("hard") is None
    assert r.methods() == ["none", "hard", "dakter"]
    assert [(v["a"], v["b"]) for v in r.verdicts()] == [("dakter", "none"), ("hard", "none"), ("dakter", "hard")]
    table = "\n".join(main_table(r))
    assert table.count("| hard labels") == 1 and "(= hard labels, weight λ (control): the same students)" in table
    text = "\n".join(verdict_table(r))
    assert "## DAKTer's verdicts without seed 0, the validation grid's" in text
    after = text.split("without seed 0")[1]
    assert "| dakter − none (generated pairs against none) | unet | +2.00 |" in after and "| 2/2 |" in after
    assert "hard − none" not in after  # only DAKTer's verdicts lean on the grid's seed
    apart = Plan(
        load_config(None, TINY + extra + grid + ["experiment.kd_weight_seeds=[100]"]), 6, {"unet": (1.0, 1.0, 5)}
    )
    assert apart.grid_seeds() == [100] and "without seed" not in "\n".join(verdict_table(Results(runs, apart)))


def test_a_study_that_would_choose_on_its_test_split_is_refused(tmp_path):
    """A validation split that shares scenes with the test split (the same spec, or the same simulator
    seed with more scenes) is refused in one line before any work; so is rescoring the test split."""

    for validation in ("synthetic:6?size=32&test=3", "synthetic:6?size=32&test=5"):
        cfg = load_config(None, TINY + ["experiment.ratio_grid=[1.0,2.0]", f"experiment.validation_spec={validation}"])
        with pytest.raises(ConfigError, match=r"shares \d+ scene\(s\) with the test split") as e:
            Experiment(cfg, tmp_path / "study", progress=False).run()
        assert "\n" not in str(e.value)
        assert not (tmp_path / "study").exists(), "refused before any work"
    r = subprocess.run(
        job("experiment.py")
        + ["--out", str(tmp_path / "job")]
        + TINY
        + ["experiment.ratio_grid=[1.0,2.0]", "experiment.validation_spec=synthetic:6?size=32&test=3"],
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 2
        and r.stderr.strip().splitlines()[-1].startswith("error: experiment.validation_spec")
        and "Traceback" not in r.stderr
    )
    # another seed's scenes are other scenes: accepted, and the splits are recorded with their fingerprints
    cfg = load_config(
        None,
        TINY
        + [
            "experiment.validation_spec=synthetic:6?size=32&test=3&seed=7",
            "experiment.test_spec=synthetic:6?size=32&test=4&seed=31",
        ],
    )
    splits = Experiment(cfg, tmp_path / "ok", progress=False).splits()
    assert (
        splits["test"]["spec"].endswith("seed=31")
        and splits["test"]["scenes"] == 4
        and len(splits["test"]["fingerprint"]) == 64
    )
    assert splits["validation"]["fingerprint"] != splits["test"]["fingerprint"]
    exp = Experiment(cfg, tmp_path / "ok", progress=False)
    with pytest.raises(ConfigError, match="scored on once"):
        exp.rescore("synthetic:6?size=32&test=4&seed=31", "again")
    # by scene, not by text: a larger split of the same seed, or the parameters reordered, holds the test scenes
    for spec in ("synthetic:6?size=32&test=9&seed=31", "synthetic:6?seed=31&test=4&size=32"):
        with pytest.raises(ConfigError, match=r"holds 4 scene\(s\) of this study's test split.*scored on once"):
            exp.rescore(spec, "again")


def test_a_study_whose_test_split_holds_a_training_scene_is_refused(tmp_path):
    """A test split that holds a copy of a training scene (an OSD folder with a scene in both) is refused
    in one line before any work, whatever its file name; the splits recorded in results.json include the
    training split's fingerprint."""
    import shutil

    from dakter_scale.data.synthetic_sar import write_osd_layout

    apart, shared = tmp_path / "apart", tmp_path / "shared"
    write_osd_layout(apart, 4, 3, height=32, width=32, progress=False)
    shutil.copytree(apart, shared)
    for kind in ("images", "labels", "labels_1D"):  # a training scene again in the test split, renamed
        ext = "jpg" if kind == "images" else "png"
        shutil.copy(shared / "train" / kind / f"00002.{ext}", shared / "test" / kind / f"00007.{ext}")
    splits = Experiment(load_config(None, TINY + [f"data.spec=osd:{apart}"]), tmp_path / "a", progress=False).splits()
    assert splits["training"]["scenes"] == 4 and splits["test"]["scenes"] == 3
    base = TINY + [f"data.spec=osd:{shared}"]
    with pytest.raises(
        ConfigError, match=r"^data\.spec osd:.*: its training split shares 1 scene\(s\) with the test split"
    ) as e:
        Experiment(load_config(None, base), tmp_path / "study", progress=False).run()
    assert "\n" not in str(e.value) and not (tmp_path / "study").exists()


def test_the_eight_arms_and_the_length_grid_in_the_plan():
    """copy_paste trains on real samples with copy-paste and no generated set; pasted_after pastes onto
    every generated pair and no real one; dakter_copy_paste pastes onto real samples beside DAKTer's
    pairs; a length grid gives every validation student a length and, once chosen, every table arm."""
    methods = "[none,copy_paste,hard,hard_matched,dakter,dakter_target,pasted_after,dakter_copy_paste]"
    extra = [
        f"experiment.methods={methods}",
        "synthesis.target.spec=oil:3x,ship:3x",
        "experiment.kd_weights=[unet:0.5]",
        "experiment.copy_paste_share=0.6",
    ]
    plan = Plan(load_config(None, TINY + extra), n_train=6)
    runs = {r.method: r for r in plan.main_runs() if r.seed == plan.e.seeds[0]}
    assert runs["copy_paste"].generated is None and runs["copy_paste"].ratio == 0
    assert dict(runs["copy_paste"].overrides) == {
        "student.copy_paste": "oil:3x,ship:3x",
        "student.copy_paste_real": 0.6,
        "student.copy_paste_generated": 0.0,
    }
    assert (
        runs["pasted_after"].generated == "b_cfg"
        and dict(runs["pasted_after"].overrides)["student.copy_paste_generated"] == 1.0
    )
    assert dict(runs["pasted_after"].overrides)["student.copy_paste_real"] == 0.0
    assert (
        runs["dakter_copy_paste"].generated == "b_cfg"
        and dict(runs["dakter_copy_paste"].overrides)["student.copy_paste_real"] == 0.6
    )
    assert runs["dakter_target"].generated == "b_cfg_target" and not runs["dakter"].overrides
    assert len({r.name for r in runs.values()}) == 8
    grid = Plan(
        load_config(
            None,
            TINY
            + extra
            + ["experiment.steps_grid=[3,5]", "experiment.validation_spec=synthetic:6?size=32&test=3&seed=7"],
        ),
        n_train=6,
    )
    assert {dict(r.overrides)["student.max_steps"] for r in grid.selection_runs()} == {3, 5} and grid.pending()
    chosen = Plan(grid.cfg, 6, {"unet": (0.5, 1.0, 5)})
    assert all(dict(r.overrides)["student.max_steps"] == 5 for r in chosen.main_runs())

    with pytest.raises(ConfigError, match="synthesis.target.spec"):
        load_config(None, TINY + ["experiment.methods=[none,copy_paste]"])


def test_the_class_target_is_one_key_for_the_job_and_the_study(tmp_path, caplog):
    """synthesis.target is what jobs/synthesize.py and the study runner both read. A config that still
    sets experiment.class_target (an old file, a model folder's saved config.yaml) is read with it moved
    and a warning naming the new key; a study saved with the old keys (its config.yaml, its
    results.json) reads back with them moved, defaults dropped."""
    import logging

    from dakter_scale.config import ConfigError, from_dict, to_dict
    from dakter_scale.experiment import saved_config

    cfg = load_config(None, TINY + ["experiment.methods=[dakter_target]", "synthesis.target.spec=ship:3x"])
    assert Plan(cfg, 6).generated_sets()[-1].target == ("ship:3x", "selection")
    with caplog.at_level(logging.WARNING, logger="dakter_scale"):
        moved = load_config(None, ["experiment.class_target=ship:3x", "experiment.target_route=selection"])
    assert (
        moved.synthesis.target.spec == "ship:3x"
        and "experiment.class_target is now synthesis.target.spec" in caplog.text
    )
    with pytest.raises(ConfigError, match=r"^experiment.class_target is now synthesis.target.spec"):
        from_dict({"experiment": {"class_target": "ship:3x"}})  # unmigrated: one line naming the new key
    old = to_dict(load_config(None, TINY))
    old["experiment"].update(class_target="oil:3x,ship:3x", target_route="pasted", max_draw_factor=20.0)
    moved = saved_config(old, "old results.json")
    assert (moved.synthesis.target.spec, moved.synthesis.target.route) == ("oil:3x,ship:3x", "pasted")
    assert moved.synthesis.target.max_draw_factor == 20.0 and "class_target" in old["experiment"]  # not mutated
    old["experiment"].update(class_target="", target_route="selection")
    old["synthesis"]["target"]["spec"] = "ship:3x"  # a default in the old place does not overwrite the new one
    assert saved_config(old, "old results.json").synthesis.target.spec == "ship:3x"


# a one-seed study of a real-only arm, copy-paste and DAKTer: the --records and --only tests' plan
RECORDS_STUDY = [
    "experiment.methods=[none,copy_paste,dakter]",
    "experiment.seeds=[0]",
    "experiment.decode_study=[]",
    "synthesis.target.spec=ship:3x",
]


def test_a_kept_copy_paste_student_of_another_paste_rule_is_refused(tmp_path):
    """A copy-paste student kept (--records) before student.json recorded the paste rule was pasted by
    rule 1: restored, its scores are refused in one line, as a run of other settings is; one of this
    rule, and a student without copy-paste, are scored as kept; --partial (any_rule) reads the old one."""
    from dakter_scale.config import to_dict
    from dakter_scale.data.storage import redact_url
    from dakter_scale.student.augment import PASTE_RULE
    from dakter_scale.study.folder import StudyFolder
    from dakter_scale.study.records import Records
    from dakter_scale.study.units import Units

    cfg = load_config(None, TINY + RECORDS_STUDY)
    plan = Plan(cfg, n_train=6)
    runs = {r.method: r for r in plan.table_runs()}
    block = {"target": "oil:3x,ship:3x", "real": 0.5, "generated": 0.0}

    def restored(study: str, kept: dict) -> Units:
        """A study folder with `kept` (run -> student.json's copy_paste) restored from its records."""
        for run, copy_paste in kept.items():
            folder = tmp_path / study / "records" / "students" / run.name
            folder.mkdir(parents=True)
            metrics = {"data": redact_url(cfg.data.spec), "run": to_dict(run), "miou": 0.5}
            (folder / "metrics.json").write_text(json.dumps(metrics))
            (folder / "student.json").write_text(json.dumps({"augment": "none", "copy_paste": copy_paste}))
        Records(tmp_path / study / "records", tmp_path / study / "out").restore()
        return Units(cfg, StudyFolder(tmp_path / study / "out"), plan, 6, cfg.data.spec, progress=False)

    units = restored("old", {runs["copy_paste"]: block})
    with pytest.raises(
        ConfigError, match=rf"copy-paste rule 1, this code pastes by rule {PASTE_RULE}; use another"
    ) as e:
        units.score(runs["copy_paste"], None)
    assert "\n" not in str(e.value) and runs["copy_paste"].name in str(e.value)
    assert units.score(runs["copy_paste"], None, any_rule=True)["miou"] == 0.5  # --partial reads it as kept
    units = restored("new", {runs["copy_paste"]: {**block, "rule": PASTE_RULE}, runs["none"]: None})
    assert units.score(runs["copy_paste"], None)["miou"] == units.score(runs["none"], None)["miou"] == 0.5


def test_records_carry_a_study_to_a_fresh_folder(tmp_path):
    """--records keeps each finished student's scores; a fresh study folder restores them and trains
    only what is missing, after checking that the rebuilt model and sets are the same bit for bit
    (training and sampling are deterministic). A kept identity that differs is refused in one line."""
    from dakter_scale.study.records import Records

    cfg = load_config(None, TINY + RECORDS_STUDY)
    records = tmp_path / "records"
    first = Experiment(cfg, tmp_path / "a", progress=False, records=records)
    first.run()
    kept = sorted(p.name for p in (records / "students").iterdir())
    assert kept == sorted(r.name for r in first.plan.table_runs())
    identity = json.loads((records / "identity.json").read_text())
    assert set(identity) == {"models", "generated", "machines"} and set(identity["generated"]) == {"b_cfg"}
    assert identity["machines"]["models/b_cfg"].startswith("torch ")  # what the bytes depend on beyond the code
    scores = {n: json.loads((records / "students" / n / "metrics.json").read_text())["miou"] for n in kept}
    # the finished study's answer is kept beside its students, figures as 256-colour PNGs
    for name in ("results.json", "results.md", "per_class_iou.png"):
        assert (records / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
    from PIL import Image

    assert Image.open(records / "per_class_iou.png").mode == "P"
    (records / "partial.md").write_text("the tables so far\n")

    second = Experiment(cfg, tmp_path / "b", progress=False, records=records)
    payload_path = second.run()
    assert not (records / "partial.md").exists()  # an unfinished study's tables are not the answer
    assert payload_path.is_file()
    segmenter = second.plan.real_only(
        "unet"
    ).name  # its weights score the generated pairs: trained again, to the same bytes
    for name in kept:  # restored, not retrained: no weights in the fresh folder
        assert (tmp_path / "b" / "students" / name / "model.safetensors").exists() == (name == segmenter)
    weights = "students/" + segmenter + "/model.safetensors"
    assert (tmp_path / "b" / weights).read_bytes() == (tmp_path / "a" / weights).read_bytes()
    payload = json.loads((tmp_path / "b" / "results.json").read_text())
    assert {n: r["miou"] for n, r in payload["runs"].items()} == {n: scores[n] for n in payload["runs"]}
    assert json.loads((records / "identity.json").read_text()) == identity  # the rebuilt model and set hashed the same

    Records(records, tmp_path / "c").check("models", "b_cfg", identity["models"]["b_cfg"])  # the same: accepted
    with pytest.raises(ConfigError, match="use another --records folder, or give --retrain-rebuilt") as e:
        Records(records, tmp_path / "c").check("models", "b_cfg", "0" * 64)
    assert "\n" not in str(e.value)

    # kept on another machine, whose generator summed to other bytes: --retrain-rebuilt drops the students
    # that read it and trains them again; the real-only students are kept
    other = {**identity, "models": {"b_cfg": "0" * 64}, "generated": {"b_cfg": "1" * 64}}
    (records / "identity.json").write_text(json.dumps(other))
    generated = [n for n in kept if n.startswith("dakter-")]
    for name in generated:  # a score no training here gives, to see that it is replaced
        metrics = records / "students" / name / "metrics.json"
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "miou": -1.0}))
    third = Experiment(cfg, tmp_path / "c", progress=False, records=records, retrain_rebuilt=True)
    third.run()
    assert json.loads((records / "identity.json").read_text())["models"] == identity["models"]
    assert json.loads((records / "identity.json").read_text())["generated"] == identity["generated"]
    for name in kept:
        trained = (tmp_path / "c" / "students" / name / "model.safetensors").exists()
        assert trained == (name in generated or name == segmenter), name
        assert json.loads((records / "students" / name / "metrics.json").read_text())["miou"] == scores[name]


def test_a_runner_plans_again_when_another_runner_dropped_the_students_it_planned_from(tmp_path):
    """The second runner's side, its state set by hand: where the identity it planned from (identity_seen)
    has since been replaced by another runner (--retrain-rebuilt), its check raises Rebuilt, so that it
    plans again rather than training the rest of the old plan; a mismatch it finds itself is refused
    without the flag, naming it."""
    from dakter_scale.study.plan import Model
    from dakter_scale.study.records import Rebuilt

    records = tmp_path / "records"
    records.mkdir()
    (records / "identity.json").write_text(json.dumps({"models": {"b_cfg": "new"}}))
    runner = Experiment(load_config(None, TINY + RECORDS_STUDY), tmp_path / "out", progress=False, records=records)
    runner.identity_seen = {"models": {"b_cfg": "old"}}  # what it planned from
    with pytest.raises(Rebuilt, match="rebuilt by another runner"):
        runner.check_identity(Model("b_cfg"), "models", "b_cfg", "new")
    runner.identity_seen = {"models": {"b_cfg": "new"}}
    runner.check_identity(Model("b_cfg"), "models", "b_cfg", "new")  # the same bytes: nothing to do
    with pytest.raises(ConfigError, match="give --retrain-rebuilt"):
        runner.check_identity(Model("b_cfg"), "models", "b_cfg", "other")


def test_what_is_drawn_from_the_generator_is_named_whatever_the_grid_chooses():
    """Plan.drawn_from: a model's sets, its bank and the models trained from it (the distilled one), so
    that --retrain-rebuilt drops every student that read any of them, the grid's choice made or not."""
    from dakter_scale.study.plan import GeneratedSet, Model

    scarcity = Plan(load_config(ROOT / "configs" / "scarcity.yaml", []), 20)
    assert scarcity.pending()  # no choice yet: the table's students are not among the plan's units
    assert scarcity.drawn_from(Model("b_cfg")) == {"b_cfg", "b_cfg_target", "bank"}
    assert scarcity.drawn_from(GeneratedSet("b_cfg_target", "b_cfg", 200)) == {"b_cfg_target"}
    evidence = Plan(load_config(ROOT / "configs" / "evidence_64.yaml", []), 100)
    assert {"b_cfg_distilled", "b_cfg_target"} <= evidence.drawn_from(Model("b_cfg"))


def test_a_rebuilt_generator_drops_the_students_that_read_it_in_every_study_folder(tmp_path):
    """Records.check with drawn (--retrain-rebuilt): the kept students whose run read a set or bank drawn
    from the rebuilt model are dropped from the records and this study folder, the real-only ones stay,
    and a study folder of another runner that restored them sheds their scores at its next restore
    (not the folder: it may be training them again), but not a student trained again since."""
    from dakter_scale.study.records import Rebuilt, Records

    records, ours, theirs = tmp_path / "records", tmp_path / "ours", tmp_path / "theirs"
    runs = {
        "none-unet-r0-s0": {"method": "none", "generated": None, "overrides": []},
        "dakter_target-unet-r10-s0": {"method": "dakter_target", "generated": "b_cfg_target", "overrides": []},
        "instance_paste_1000-unet-r0-s0": {
            "method": "instance_paste_1000",
            "generated": None,
            "overrides": [["student.instance_bank", "bank"]],
        },
    }
    for name, run in runs.items():
        (records / "students" / name).mkdir(parents=True)
        (records / "students" / name / "metrics.json").write_text(json.dumps({"miou": 0.5, "run": run}))
        (records / "students" / name / "student.json").write_text(json.dumps({"old": name}))
    (records / "identity.json").write_text(json.dumps({"models": {"b_cfg": "old"}}))
    assert Records(records, theirs).restore() == sorted(runs)
    Records(records, ours).restore()
    with pytest.raises(Rebuilt, match="2 kept students that read it are dropped"):
        Records(records, ours).check("models", "b_cfg", "new", "old", {"b_cfg", "b_cfg_target", "bank"})
    assert sorted(p.name for p in (records / "students").iterdir()) == ["none-unet-r0-s0"]
    assert sorted(p.name for p in (ours / "students").iterdir()) == ["none-unet-r0-s0"]
    identity = json.loads((records / "identity.json").read_text())
    assert identity["models"]["b_cfg"] == "new" and set(identity["dropped"]) == set(runs) - {"none-unet-r0-s0"}

    # the other runner's folder: one student trained again there since (another record), one stale
    (theirs / "students" / "dakter_target-unet-r10-s0" / "student.json").write_text(json.dumps({"new": 1}))
    Records(records, theirs).restore()
    assert (theirs / "students" / "dakter_target-unet-r10-s0" / "metrics.json").is_file()
    assert list((theirs / "students" / "instance_paste_1000-unet-r0-s0").iterdir()) == []
    with pytest.raises(Rebuilt, match="rebuilt by another runner"):  # it planned from the old bytes
        Records(records, theirs).check("models", "b_cfg", "new", "old")


def test_a_study_students_card_carries_its_test_score(tmp_path):
    """The runner scores each student on the test split once and writes that score into its card."""
    from huggingface_hub import ModelCard

    cfg = load_config(None, TINY + ["experiment.methods=[none]", "experiment.seeds=[0]", "experiment.decode_study=[]"])
    exp = Experiment(cfg, tmp_path, progress=False)
    run = exp.plan.real_only("unet")
    metrics = exp.units.student(run)
    card = ModelCard.load(tmp_path / "students" / run.name / "README.md")
    evaluation = card.data.to_dict()["dakter"]["evaluation"]
    assert evaluation["data"] == cfg.data.spec and abs(evaluation["miou"] - metrics["miou"]) < 1e-4


def test_partial_tables_come_from_the_students_finished_so_far(tmp_path):
    """--partial writes OUT/partial.md over the scored students alone and trains nothing: constructed
    scores for two of three seeds of one arm give that arm's cells and a verdict over two seeds. At lambda 1
    hard_matched is the run hard is, so it is counted once."""
    cfg = load_config(
        None,
        TINY
        + [
            "experiment.methods=[none,hard,hard_matched,dakter]",
            "experiment.seeds=[0,1,2]",
            "experiment.kd_weights=[unet:1.0]",
        ],
    )
    exp = Experiment(cfg, tmp_path, progress=False)
    scores = {("none", 0): 0.50, ("none", 1): 0.52, ("none", 2): 0.51, ("dakter", 0): 0.60, ("dakter", 1): 0.61}
    for (method, seed), miou in scores.items():
        run = exp.plan.run(method, "unet", exp.plan.ratio("unet"), seed)
        path = exp.folder.metrics(run.name, None)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"miou": miou, "mean_f1": miou, "iou": [miou] * 5, "data": cfg.data.spec}))
    text = exp.partial().read_text()
    assert "5 of 9 table students" in text and "The table's students wait" not in text
    verdict = next(line for line in text.splitlines() if line.startswith("| dakter − none") and "| unet |" in line)
    assert "+9.50" in verdict and "2/2" in verdict and verdict.endswith("| ahead |")  # seeds 0 and 1: (10 + 9) / 2
    assert not list((tmp_path / "models").glob("*")) and not (tmp_path / "generated").exists()
    # a kept score made on another split is refused, as the run refuses it, not tabled

    path.write_text(json.dumps({"miou": 0.9, "mean_f1": 0.9, "iou": [0.9] * 5, "data": "synthetic:6?seed=5"}))
    with pytest.raises(ConfigError, match="holds scores on synthetic:6\\?seed=5, not "):
        exp.partial()


@pytest.mark.slow  # trains a generator and a student past a checkpoint (~12 s): the default suite's time limit
def test_a_study_generator_checkpoints_when_the_config_does_not(tmp_path, monkeypatch):
    """diffusion.checkpoint_every 0 (the default): a study's generator and students still checkpoint, every tenth of
    its steps and at least every 100, so that a stopped study resumes within the model; once finished,
    the checkpoints go (the model and student folders hold the weights)."""
    from dakter_scale import training

    exp = Experiment(
        load_config(None, TINY + ["diffusion.max_steps=150", "student.max_steps=150", "experiment.methods=[none]"]),
        tmp_path,
        progress=False,
    )
    seen = []

    def look_then_drop(out):  # what a stopped study would have resumed from
        seen.append((out.name, [step for step, _ in training.list_checkpoints(out)]))
        training.drop_checkpoints(out)

    monkeypatch.setattr("dakter_scale.study.units.drop_checkpoints", look_then_drop)
    exp.units.model("b_cfg")
    exp.units.student(exp.plan.main_runs()[0])  # and so does a student
    assert seen == [("b_cfg", [100]), ("none-unet-r0-s0", [100])]
    assert not list(tmp_path.glob("*/*/checkpoints"))


@pytest.mark.slow  # ~17 s; test_a_runner_waits_for_the_grid_that_another_runner_trains runs two runners on one records folder by default
def test_two_runners_share_a_study_through_only_and_one_records_folder(tmp_path):
    """--only: each runner trains its students and what they need, into its own OUT; the records folder
    gathers both, and a third runner on a fresh OUT restores every student and trains none."""
    cfg = load_config(None, TINY + RECORDS_STUDY)
    records = tmp_path / "records"
    real = Experiment(cfg, tmp_path / "real", progress=False, records=records, only=["none-*", "copy_paste-*"])
    assert real.run() == tmp_path / "real" / "partial.md"
    assert not (tmp_path / "real" / "models").exists() and not (tmp_path / "real" / "generated").exists()
    assert sorted(p.name for p in (records / "students").iterdir()) == ["copy_paste-unet-r0-s0", "none-unet-r0-s0"]

    generated = Experiment(cfg, tmp_path / "gen", progress=False, records=records, only=["dakter-*"])
    generated.run()
    assert (tmp_path / "gen" / "models" / "b_cfg").is_dir()
    assert not (tmp_path / "gen" / "students" / "none-unet-r0-s0" / "model.safetensors").exists()  # the other's
    assert len(list((records / "students").iterdir())) == 3

    whole = Experiment(cfg, tmp_path / "whole", progress=False, records=records)
    whole.run()
    payload = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert set(payload["runs"]) == {"none-unet-r0-s0", "copy_paste-unet-r0-s0", "dakter-unet-r1-s0"}


def test_a_runner_waits_for_the_grid_that_another_runner_trains(tmp_path, caplog):
    """Where a validation grid sets every student's length, a runner whose --only holds none of the grid
    trains nothing and says why in one warning; with --wait it looks in the records until the other
    runner has kept the grid's students, then trains its own at the chosen length. --wait without --only
    and --records is refused."""
    import logging
    import threading

    grid = ["experiment.steps_grid=[2,3]", "experiment.validation_spec=synthetic:6?size=32&test=3&seed=7"]
    cfg = load_config(None, TINY + RECORDS_STUDY + grid)
    records = tmp_path / "records"
    real = Experiment(cfg, tmp_path / "real", progress=False, records=records, only=["none-*"])
    with caplog.at_level(logging.WARNING, logger="dakter_scale"):
        assert real.run() == tmp_path / "real" / "partial.md"
    assert "the validation grid is unfinished (0 of 2 students scored)" in caplog.text
    assert not (tmp_path / "real" / "students").exists() and not (records / "students").exists()
    with pytest.raises(ConfigError, match="^--wait needs --only and --records"):
        Experiment(cfg, tmp_path / "whole", progress=False).run(wait=0.05)

    waiter = threading.Thread(target=real.run, kwargs={"wait": 0.05})
    waiter.start()
    Experiment(cfg, tmp_path / "grid", progress=False, records=records, only=["*-kd*"]).run()  # the grid alone
    waiter.join(timeout=300)
    assert not waiter.is_alive()
    chosen = real.plan.chosen["unet"][2]
    assert chosen in (2, 3)
    trained = json.loads((tmp_path / "real" / "students" / "none-unet-r0-s0" / "student.json").read_text())
    assert trained["steps"] == chosen and (records / "students" / "none-unet-r0-s0" / "metrics.json").is_file()


def test_a_runner_whose_grid_is_scored_trains_the_chosen_students_while_another_holds_the_rest(tmp_path):
    """Where every unit left before the grid's choice is held by another runner (here a real-only student;
    in the scarcity study the instance bank, for half an hour), a runner whose grid is scored chooses and
    trains the students the choice sets meanwhile; it used to wait for the held unit first."""
    import threading
    import time

    from dakter_scale.study.claims import Claim
    from dakter_scale.study.folder import StudyFolder

    grid = ["experiment.kd_weight_grid=[0.5,1.0]", "experiment.validation_spec=synthetic:6?size=32&test=3&seed=7"]
    cfg = load_config(None, TINY + RECORDS_STUDY + grid)
    out = tmp_path / "out"
    other = Claim(StudyFolder(out).claim("student-none-unet-r0-s0"), "another runner")
    assert other.take()
    runner = Experiment(cfg, out, progress=False)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    try:
        while not runner.plan.chosen and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.5)
        table = runner.plan.run("dakter", "unet", runner.plan.ratio("unet"), 0).name
        chosen = out / "students" / table / "metrics.json"
        while not chosen.is_file() and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.5)
        assert chosen.is_file(), "the chosen student was not trained while a unit of the first pass was held"
        assert not (out / "students" / "none-unet-r0-s0" / "metrics.json").exists()
    finally:
        other.release()
    thread.join(timeout=300)
    assert not thread.is_alive() and (out / "results.json").is_file()


def test_two_runners_share_one_study_folder(tmp_path):
    """Two runners started at once on one OUT: each unit is built by exactly one of them (its claim,
    OUT/claims/KEY), the students are split between them, and both write the same results.json."""
    from shardgen import job_env

    out = tmp_path / "out"
    argv = job("experiment.py") + ["--out", str(out), *TINY, *RECORDS_STUDY, "experiment.seeds=[0,1,2]"]
    argv += ["student.max_steps=30"]  # a few seconds a student: long enough for the second runner to join
    runners = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=job_env())
        for _ in range(2)
    ]
    logs = [r.communicate(timeout=900)[0] for r in runners]
    assert [r.returncode for r in runners] == [0, 0], logs
    written = [
        [line.split("student written to ")[1].split()[0] for line in log.splitlines() if "student written to " in line]
        for log in logs
    ]
    trained = sorted(Path(p).name for w in written for p in w)
    students = sorted(p.name for p in (out / "students").iterdir() if p.is_dir())
    assert trained == students and len(students) == 3 * 3, logs  # every student once, by one runner
    assert all(written), f"one runner trained every student: {[len(w) for w in written]}"
    assert sum("training the diffusion model b_cfg" in log for log in logs) == 1
    payload = json.loads((out / "results.json").read_text())
    assert set(payload["runs"]) == set(students)
    assert set(json.loads((out / "timings.json").read_text())) >= {f"student_{s}" for s in students}


def test_a_runner_builds_what_does_not_wait_on_a_unit_another_runner_holds(tmp_path):
    """While another runner holds the model's claim, a runner trains the students that do not read the
    model (the real-only arms), then waits; once the claim is free it builds the model itself (the other
    runner died, or gave it back) and finishes the study."""
    import threading
    import time

    from dakter_scale.study.claims import Claim
    from dakter_scale.study.folder import StudyFolder

    cfg = load_config(None, TINY + RECORDS_STUDY)
    out = tmp_path / "out"
    other = Claim(StudyFolder(out).claim("model-b_cfg"), "another runner")
    assert other.take() and not Claim(other.path, "this runner").take()  # a lock per open file, even in one process
    runner = Experiment(cfg, out, progress=False)
    thread = threading.Thread(target=runner.run, daemon=True)  # daemon: a failing test does not hang on it
    thread.start()
    real_only = [out / "students" / name / "metrics.json" for name in ("none-unet-r0-s0", "copy_paste-unet-r0-s0")]
    deadline = time.monotonic() + 300
    try:
        while not all(p.is_file() for p in real_only) and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.5)
        assert all(p.is_file() for p in real_only), "the real-only students were not trained while the model was held"
        assert thread.is_alive() and not (out / "models" / "b_cfg").exists()  # it waits; it left the model alone
    finally:
        other.release()
    thread.join(timeout=300)
    assert not thread.is_alive()
    payload = json.loads((out / "results.json").read_text())
    assert set(payload["runs"]) == {"none-unet-r0-s0", "copy_paste-unet-r0-s0", "dakter-unet-r1-s0"}


def test_the_jobs_help_lists_every_method_the_config_accepts(capsys, monkeypatch):
    """jobs/experiment.py --help lists study/plan.py's registry, which is what experiment.methods accepts."""
    import re

    from dakter_scale.study.plan import METHODS

    from conftest import job_in_process

    code, captured = job_in_process("experiment.py", ["--help"], capsys, monkeypatch)
    assert code == 0
    listed = captured.out.split("Methods (experiment.methods):", 1)[1].split("\n\n", 1)[0]
    assert re.findall(r"^  (\w+) ", listed, re.M) == list(METHODS)
    with pytest.raises(ConfigError) as refused:
        load_config(None, ["experiment.methods=[nope]"])
    accepted = set(re.findall(r"'(\w+)'", str(refused.value))) - {"nope"}
    assert accepted == set(METHODS)
