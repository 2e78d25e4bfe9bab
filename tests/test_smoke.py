"""One tiny end-to-end run through the job CLIs: train 2 steps -> synthesize 8 pairs (Ray) ->
train a student 2 steps -> evaluate; plus each job's --help and one-line errors."""

import json
import subprocess

import pytest
import webdataset as wds

from conftest import job, job_in_process
from shardgen import TINY_PIPELINE

TINY = TINY_PIPELINE


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)


def test_end_to_end_smoke(tmp_path):
    model, shards_dir, student = tmp_path / "model", tmp_path / "shards", tmp_path / "student"
    r = run(job("train_diffusion.py") + ["--out", str(model), "--max-steps", "2"] + TINY)
    assert r.returncode == 0, r.stderr
    info = json.loads((model / "dakter.json").read_text())
    assert info["classes"] == ["sea", "oil", "look-alike", "ship", "land"] and 0 < info["b"] < 1
    assert (model / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    r = run(
        job("synthesize.py")
        + [
            "--model",
            str(model),
            "--n",
            "8",
            "--out",
            str(shards_dir),
            "--samples-per-shard",
            "4",
            "--batch-size",
            "4",
            "--actors",
            "2",
            "--json",
        ]
        + TINY
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["ok"] and summary["pairs_written"] == 8 and sorted(summary["written"]) == [0, 1]
    assert summary["strategy"]["strategy"] == "ray"  # two actors of a local Ray cluster, not the in-process fallback
    keys = [s["__key__"] for s in wds.WebDataset(str(shards_dir / "shard-{000000..000001}.tar"), shardshuffle=False)]
    assert sorted(keys) == [f"{s:06d}-{i:06d}" for s in range(2) for i in range(4)]
    dataset = json.loads((shards_dir / "dataset.json").read_text())
    assert dataset["count"] == 8 and dataset["status"] == "complete" and dataset["b"] == info["b"]

    r = run(
        job("train_student.py")
        + [
            "--out",
            str(student),
            "--synthetic",
            str(shards_dir),
            "--ratio",
            "100%",
            "--labels",
            "soft",
            "--max-steps",
            "2",
        ]
        + TINY
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((student / "student.json").read_text())["ratio"] == 1.0

    r = run(job("evaluate.py") + ["--student", str(student), "--data", TINY[0].split("=", 1)[1], "--json"])
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert 0 <= metrics["miou"] <= 1 and metrics["images"] == 4 and len(metrics["iou"]) == 5
    assert sum(map(sum, metrics["confusion_matrix"])) == 4 * 32 * 32


@pytest.mark.parametrize(
    "name",
    [
        "inspect_data.py",
        "train_diffusion.py",
        "synthesize.py",
        "train_student.py",
        "evaluate.py",
        "demo.py",
        "write_synthetic.py",
        "filter_generated.py",
        "experiment.py",
    ],
)
def test_every_job_has_help(name):
    r = run(job(name) + ["--help"])
    assert r.returncode == 0 and "usage:" in r.stdout and len(r.stdout) > 300


@pytest.mark.parametrize("flag", ["--data", "--real"])
def test_every_training_job_takes_its_data_as_data(flag, tmp_path, capsys, monkeypatch):
    """--data names the real data in every job that reads it; the student's --real stays as its alias."""
    code, captured = job_in_process(
        "train_student.py", [flag, "synthetic:7?size=32", "--out", str(tmp_path), "--print-config"], capsys, monkeypatch
    )
    assert code == 0 and "spec: synthetic:7?size=32" in captured.out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["inspect_data.py", "osd:/no/such/folder"], "is not a folder"),
        (["train_diffusion.py", "--out", "/tmp/x", "student.lrr=1"], "unknown config key student.lrr"),
        (["train_student.py", "--out", "/tmp/x", "--ratio", "lots"], "--ratio must be a number"),
        (["train_student.py", "--out", "/tmp/x", "--ratio", "2"], "needs --synthetic"),
        (["evaluate.py", "--student", "/no/student", "--data", "synthetic:4"], "has no student.json"),
    ],
)
def test_bad_input_is_one_line(argv, message):
    r = run(job(argv[0]) + argv[1:])
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ")


@pytest.mark.slow  # 40 s; the runner's resume is in the default suite (test_experiment.py::test_tiny_experiment_runs_and_resumes)
def test_demo_resumes_after_an_interrupt(tmp_path):
    """jobs/demo.py is the experiment runner on configs/demo.yaml: interrupted (Ctrl-C) once its
    diffusion model is written, the same command continues from the finished units and writes
    report.md; a third run finds every unit done and retrains nothing."""
    import os
    import signal
    import time

    from shardgen import job_env

    out = tmp_path / "demo"
    extra = [
        "diffusion.max_steps=2",
        "student.max_steps=2",
        "synthesis.samples_per_shard=4",
        "synthesis.batch_size=4",
        "synthesis.actors=1",
        "experiment.quality_pairs=8",
        "experiment.figure_samples=2",
    ]
    argv = job("demo.py") + ["--out", str(out)] + TINY + extra
    model = out / "models" / "b_cfg"
    # SIGINT at its default in the job, whatever this test inherited: a shell starts background jobs
    # with SIGINT ignored, and Python then never raises KeyboardInterrupt (a CI started with `&` failed so)
    proc = subprocess.Popen(
        argv,
        env=job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 300
        while not (model / "dakter.json").is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert (model / "dakter.json").is_file(), proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and not (out / "report.md").exists(), err[-3000:]
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    written = weights.stat().st_mtime_ns

    r = run(argv, env=job_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert weights.stat().st_mtime_ns == written  # the model was kept, not retrained
    assert "]: model b_cfg" not in r.stderr  # no "experiment [k/N]: model b_cfg" line: it was not to run
    assert "finished earlier" in r.stderr and r.stdout.strip().endswith("report.md")
    text = (out / "report.md").read_text()
    for section in (
        "## Balancing factor",
        "## Generated samples",
        "8 pairs in 2 shards",
        "## Students (unet",
        "| DAKTer (soft labels + KD) |",
        "## Time per stage (s)",
    ):
        assert section in text
    assert (out / "samples_b_cfg.png").stat().st_size > 1000
    payload = json.loads((out / "results.json").read_text())
    assert (
        set(payload["runs"]) == {"none-unet-r0-s0", "hard-unet-r1-s0", "dakter-unet-r1-s0"}
        and payload["preset"] == "demo"
    )
    assert payload["generated"]["b_cfg"]["count"] == 8 == payload["generated_pairs"]  # ratio 1 x 8 training images

    students = {p: p.stat().st_mtime_ns for p in (out / "students").rglob("model.safetensors")}
    r = run(argv, env=job_env())
    assert r.returncode == 0 and "5 units planned, 5 finished earlier, 0 to run" in r.stderr, r.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "students").rglob("model.safetensors")} == students


def test_the_readme_recipe_trains_the_studied_pasted_after_arm(tmp_path, capsys, monkeypatch):
    """README's recommended student command resolves to the settings of the studies' pasted_after arm
    (the arm whose verdicts it cites): real instances pasted onto every generated sample, none onto real
    ones, soft labels, the studied config's target."""
    import re
    import shlex

    import yaml

    from dakter_scale.config import load_config
    from dakter_scale.study.plan import Plan

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    recipe = readme.split("## The recipe the evidence supports", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    command = re.search(r"python jobs/train_student\.py .*?(?=\n(?:python|$))", recipe, re.S).group(0)
    argv = shlex.split(command.replace("\\\n", " "), comments=True)[2:]
    argv[argv.index("--data") + 1] = "synthetic:7?size=32"
    argv[argv.index("--out") + 1] = str(tmp_path)
    code, captured = job_in_process("train_student.py", [*argv, "--print-config"], capsys, monkeypatch)
    assert code == 0, captured.err
    student = yaml.safe_load(captured.out)["student"]

    config = argv[argv.index("--config") + 1]
    plan = Plan(load_config(str(ROOT / config)), n_train=10)
    arms = [r for r in plan.table_runs() if r.method == "pasted_after" and r.arch == student["arch"]]
    pasting = {(k, v) for r in arms for k, v in r.overrides if k.startswith("student.copy_paste")}
    assert arms and len(pasting) == 3  # every seed pastes alike: target, real share, generated share
    for key, value in pasting:
        assert student[key.removeprefix("student.")] == value, key
    assert {r.labels for r in arms} == {student["labels"]} == {"soft"} and "--synthetic" in argv
