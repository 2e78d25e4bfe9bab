"""Cards (dakter_scale/cards.py) beside every artefact, parsed offline by huggingface_hub's ModelCard and
DatasetCard, carrying the run's own numbers; and the trainers' --report-to tensorboard, whose event files
TensorBoard's own reader parses."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from test_synth import SAMPLING, cfg

from dakter_scale.cards import CARD_FILE, write_dataset_card
from dakter_scale.data import shardset, storage
from dakter_scale.data.shardset import ShardSet
from dakter_scale.synth import run as synth_run

from conftest import job, job_in_process
from shardgen import TINY_DIFFUSION, TINY_STUDENT, job_env


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch):
    """huggingface_hub with no network: a card is parsed from its text, never fetched."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a TensorBoard log folder, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def run_job(name: str, args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(job(name) + args, capture_output=True, text=True, env=job_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # two job runs (~20 s): the default suite runs near CI's 10-minute budget
def test_a_resumed_run_logs_each_step_once(tmp_path):
    """Killed after step 3 (its last checkpoint at 2), resumed to 4: TensorBoard holds steps 1-4 once each
    (the stopped run's step 3 is purged, not shown twice)."""
    model = tmp_path / "model"
    argv = job("train_diffusion.py") + ["--out", str(model), "--max-steps", "4", "--report-to", "tensorboard"]
    argv += [*TINY_DIFFUSION, "diffusion.checkpoint_every=2"]
    killed = subprocess.run(argv, capture_output=True, text=True, env=job_env(DAKTER_KILL_AFTER_STEP="3"), timeout=600)
    assert killed.returncode != 0 and [s for s, _ in scalars(model / "logs" / "diffusion")["loss"]] == [1, 2, 3]
    resumed = subprocess.run(argv + ["--resume", "latest"], capture_output=True, text=True, env=job_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [step for step, _ in scalars(model / "logs" / "diffusion")["loss"]] == [1, 2, 3, 4]


def test_tracked_settings_hold_no_credentials(tmp_path):
    from accelerate import Accelerator

    from dakter_scale.training import start_trackers

    accelerator = Accelerator(cpu=True, log_with="tensorboard", project_dir=str(tmp_path))
    start_trackers(accelerator, "student", {"init": "https://alice:hunter2@models.example/student", "steps": 4}, 0)
    accelerator.end_training()
    written = b"".join(f.read_bytes() for f in tmp_path.rglob("*") if f.is_file())
    assert b"models.example" in written and b"hunter2" not in written


def test_trainers_report_to_tensorboard_and_write_cards(tmp_path):
    from huggingface_hub import ModelCard

    model, student = tmp_path / "model", tmp_path / "student"
    run_job(
        "train_diffusion.py", ["--out", str(model), "--max-steps", "2", "--report-to", "tensorboard", *TINY_DIFFUSION]
    )
    run_job(
        "train_student.py",
        [
            "--out",
            str(student),
            "--max-steps",
            "2",
            "--report-to",
            "tensorboard",
            "--evaluate",
            "test",
            *TINY_STUDENT,
            "student.ratio=0",
            "data.license=cc-by-4.0",
        ],
    )

    # the generator: TensorBoard events of loss, learning rate and steps/s at both steps
    record = json.loads((model / "logs" / "train.json").read_text())
    series = scalars(model / "logs" / "diffusion")
    assert {"loss", "lr", "steps_per_second"} <= series.keys()
    assert [s for s, _ in series["loss"]] == [1, 2] and all(v > 0 for _, v in series["steps_per_second"])
    assert series["loss"][-1][1] == pytest.approx(record["last_log"]["loss"], rel=1e-6)

    # its card: diffusers, its classes, b and last loss from dakter.json and train.json
    info = json.loads((model / "dakter.json").read_text())
    card = ModelCard.load(model / CARD_FILE)
    meta = card.data.to_dict()
    assert card.data.library_name == "diffusers" and "sar" in card.data.tags
    assert meta["dakter"]["classes"] == info["classes"] and meta["dakter"]["b"] == pytest.approx(info["b"], abs=1e-6)
    assert meta["dakter"]["training"] == {
        "steps": 2,
        "last_loss": pytest.approx(record["last_log"]["loss"], abs=1e-6),
        "processes": 1,
    }
    assert meta["dakter"]["data"]["class_shares"] == pytest.approx(
        dict(zip(info["classes"], info["train_stats"]["class_fractions"])), abs=1e-4
    )
    assert (
        meta["dakter"]["evaluations_per_pair"] == info["sampling"]["steps"]
        and "train_diffusion.py" in meta["dakter"]["command"]
    )
    assert "Trained on simulated scenes" in card.text
    # no data.license: the Hub's "other", named as the training data's terms, and said in the limits
    assert (meta["license"], meta["license_name"]) == ("other", "training-data-terms") and "data_license" not in info
    assert "Licence: not stated" in card.text

    # the student: its evaluation in the tracker, eval.json and the card's model-index, the same numbers
    evaluation = json.loads((student / "logs" / "eval.json").read_text())
    series = scalars(student / "logs" / "student")
    assert {"loss", "lr", "steps_per_second", "eval/miou", "eval/iou_sea"} <= series.keys()
    assert series["eval/miou"] == [(2, pytest.approx(evaluation["miou"], rel=1e-6))]
    card = ModelCard.load(student / CARD_FILE)
    assert card.data.library_name == "segmentation-models-pytorch"
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results["mIoU"] == pytest.approx(evaluation["miou"], abs=1e-6) and results["IoU sea"] == pytest.approx(
        evaluation["iou"][0], abs=1e-6
    )
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    # data.license stated: the student's card carries it, and student.json records it
    assert card.data.license == "cc-by-4.0" and "license_name" not in card.data.to_dict()
    assert json.loads((student / "student.json").read_text())["data_license"] == "cc-by-4.0"


def test_trackers_are_off_by_default_and_a_missing_one_is_one_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "model"
    run_job("train_diffusion.py", ["--out", str(out), "--max-steps", "1", *TINY_DIFFUSION])
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["ranks.json", "train.json"]  # no tracker folder
    assert (out / CARD_FILE).is_file()
    argv = ["--out", str(tmp_path / "m2"), "--max-steps", "1", "--report-to", "mlflow", *TINY_DIFFUSION]
    code, captured = job_in_process("train_diffusion.py", argv, capsys, monkeypatch)
    try:
        import mlflow  # noqa: F401
    except ImportError:
        assert (
            code == 2
            and captured.err.strip().splitlines()[-1]
            == "error: --report-to mlflow: mlflow is not installed (pip install mlflow)"
        )
    else:  # installed: the run reports to it and ends well
        assert code == 0, captured.err[-2000:]


def _hashes(url: str) -> dict[str, str]:
    fs, root = storage.url_to_fs(url)
    return {
        name: hashlib.sha256(fs.cat_file(storage.join(root, name))).hexdigest()
        for name in storage.list_dir(fs, root)
        if name != CARD_FILE
    }


def test_shard_set_card_lists_finished_shards_and_changes_nothing_else(model, tmp_path):
    from huggingface_hub import DatasetCard

    url = str(tmp_path / "set")
    assert synth_run.synthesize(model, url, cfg(n=10), SAMPLING, progress=False, use_ray=False).ok
    shards = ShardSet(url)
    info = shards.info()
    card = DatasetCard.load(Path(url) / CARD_FILE)
    meta = card.data.to_dict()
    assert meta["configs"] == [
        {
            "config_name": "default",
            "data_files": [{"split": "train", "path": [shardset.shard_name(s) for s in range(3)]}],
        }
    ]
    d = meta["dakter"]
    assert d["pairs"] == info.count == 10 and d["shards"] == 3 and d["classes"] == info.classes
    assert d["class_shares"] == pytest.approx(
        dict(zip(info.classes, info.generated_stats["class_fractions"])), abs=1e-4
    )
    assert d["mean_confidence"] == pytest.approx(info.generated_stats["mean_confidence"], abs=1e-4)
    assert (d["sampler"], d["evaluations_per_pair"], d["b"]) == (
        SAMPLING.sampler,
        SAMPLING.steps,
        pytest.approx(info.b, abs=1e-6),
    )
    assert d["model_data"].startswith("synthetic:") and "trained on simulated scenes" in card.text
    # the card is no shard and no stray file to the shard tools: listed, read and checked as before
    assert [i.shard for i in shards.done()] == [0, 1, 2] and shards.read_markers()[1] == {}
    assert sum(1 for _ in shards.samples()) == 10
    # writing it again changes no other byte, and an unchanged set gets the same card
    before, text = _hashes(url), (Path(url) / CARD_FILE).read_bytes()
    write_dataset_card(url, command=d["command"])
    assert _hashes(url) == before and (Path(url) / CARD_FILE).read_bytes() == text
    # a rerun that finds every shard done skips them and leaves the same card
    again = synth_run.synthesize(model, url, cfg(n=10), SAMPLING, progress=False, use_ray=False)
    assert again.written == [] and (Path(url) / CARD_FILE).read_bytes() == text


def test_a_set_with_an_unfinished_shard_lists_only_the_finished_ones(tmp_path):
    from huggingface_hub import DatasetCard

    from shardgen import write_dataset

    url = str(tmp_path / "set")
    write_dataset(url, [3, 3, 2])
    (tmp_path / "set" / shardset.shard_name(1, "json")).unlink()
    write_dataset_card(url, command="python make.py")
    meta = DatasetCard.load(tmp_path / "set" / CARD_FILE).data.to_dict()
    assert meta["configs"][0]["data_files"][0]["path"] == ["shard-000000.tar", "shard-000002.tar"]
    assert meta["dakter"]["command"] == "python make.py"


def test_the_command_is_written_as_typed_from_the_root_without_credentials():
    from dakter_scale.cards import command_line

    assert (
        command_line(["/elsewhere/checkout/jobs/synthesize.py", "--out", "s3://AKIA:secret@bucket/x"])
        == "python jobs/synthesize.py --out 's3://***@bucket/x'"  # quoted: * is a shell pattern
    )
    assert (
        command_line(["jobs/train_student.py", "--out", "runs/a b"]) == "python jobs/train_student.py --out 'runs/a b'"
    )
    # a secret parameter in a quoted argument keeps its closing quote: the line still splits as typed
    line = command_line(["jobs/synthesize.py", "--data", "https://host/x y?token=abc", "--out", "runs/x"])
    assert "abc" not in line and shlex.split(line)[-2:] == ["--out", "runs/x"]
    # absolute local paths, also after --flag=, relative to the working folder: no /home/NAME in a card
    here = os.getcwd()
    line = command_line(["jobs/synthesize.py", "--model", os.path.join(here, "runs", "m"), f"--out={here}/runs/x"])
    assert line == "python jobs/synthesize.py --model runs/m --out=runs/x"


# The Hub's size_categories values, as huggingface_hub's DatasetCardData lists them.
HUB_SIZE_CATEGORIES = {
    "n<1K",
    "1K<n<10K",
    "10K<n<100K",
    "100K<n<1M",
    "1M<n<10M",
    "10M<n<100M",
    "100M<n<1B",
    "1B<n<10B",
    "10B<n<100B",
    "100B<n<1T",
    "n>1T",
}


def test_a_large_set_gets_one_of_the_hubs_size_categories():
    from huggingface_hub import DatasetCard

    from dakter_scale.cards import _size_category, dataset_card
    from dakter_scale.data.shardset import DatasetInfo

    expected = {0: "n<1K", 999: "n<1K", 1_000: "1K<n<10K", 9_999_999: "1M<n<10M", 10_000_000: "10M<n<100M"}
    expected |= {250_000_000: "100M<n<1B", 10**13: "n>1T"}
    assert {n: _size_category(n) for n in expected} == expected
    assert {_size_category(10**k) for k in range(14)} <= HUB_SIZE_CATEGORIES
    card = DatasetCard(dataset_card(DatasetInfo(classes=["sea", "oil"], resolution=32, count=12_000_000), [0]))
    assert card.data.size_categories == ["10M<n<100M"]


def test_a_student_card_carries_no_nan_metric_into_the_model_index():
    """An evaluation whose means are undefined (NaN: an empty split, a class absent from truth and
    prediction) puts no .nan into the model-index the Hub reads; the finite ones stay."""
    from huggingface_hub import ModelCard

    from dakter_scale.cards import student_card

    info = {"classes": ["sea", "oil"], "arch": "Unet", "encoder": "resnet18", "labels": "soft", "real": "osd:/d"}
    nan = float("nan")
    evaluation = {"data": "osd:/d", "split": "test", "images": 0, "miou": nan, "mean_f1": nan, "pixel_accuracy": nan}
    card = ModelCard(student_card(info, None, dict(evaluation, iou=[None, None]), "python x"))
    assert "model-index" not in card.data.to_dict() and not card.data.eval_results and ".nan" not in str(card)
    evaluation |= {"images": 4, "miou": 0.5, "iou": [1.0, None]}
    card = ModelCard(student_card(info, None, evaluation, "python x", name="s"))
    assert {(r.metric_name, r.metric_value) for r in card.data.eval_results} == {("mIoU", 0.5), ("IoU sea", 1.0)}
    assert card.data.model_name == "s" and ".nan" not in str(card)


def test_a_set_with_no_finished_shard_is_no_dataset_to_load_dataset(tmp_path, monkeypatch):
    """No finished shard: the card's default config lists no file, so datasets' load_dataset(THE_SET) finds
    no data instead of guessing the files (it read the unfinished shards' parquet manifests as the set)."""
    datasets = pytest.importorskip("datasets")
    from huggingface_hub import DatasetCard

    from shardgen import write_dataset

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    url = tmp_path / "set"
    write_dataset(str(url), [2, 2])
    for shard in (0, 1):
        (url / shardset.shard_name(shard, "json")).unlink()
    write_dataset_card(str(url), command="python make.py")
    meta = DatasetCard.load(url / CARD_FILE).data.to_dict()
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": []}]}]
    with pytest.raises(datasets.exceptions.DataFilesNotFoundError):
        datasets.load_dataset(str(url), cache_dir=str(tmp_path / "hf"))


def test_load_dataset_of_the_set_reads_its_finished_shards_through_the_card(tmp_path, monkeypatch):
    """datasets' load_dataset(THE_SET) follows the card's configs: the finished shards' pairs, not the
    unfinished shard's nor the parquet manifests."""
    datasets = pytest.importorskip("datasets")
    from shardgen import write_dataset

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    url = tmp_path / "set"
    keys = write_dataset(str(url), [3, 3, 2])
    (url / shardset.shard_name(1, "json")).unlink()
    write_dataset_card(str(url), command="python make.py")
    ds = datasets.load_dataset(str(url), split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(ds["__key__"]) == [k for k in keys if not k.startswith("000001-")]
    assert {"image.png", "soft.png", "json"} <= set(ds.column_names)


def test_a_set_carries_its_models_data_licence_and_a_bad_licence_is_refused():
    from huggingface_hub import DatasetCard

    from dakter_scale.cards import dataset_card
    from dakter_scale.config import Config, ConfigError
    from dakter_scale.data.shardset import DatasetInfo

    info = DatasetInfo(classes=["sea", "oil"], resolution=32, count=10)
    card = DatasetCard(dataset_card(info, [0], "python x", "osd:/d", "cc-by-sa-4.0"))
    assert card.data.license == "cc-by-sa-4.0" and "`cc-by-sa-4.0`" in card.text
    card = DatasetCard(dataset_card(info, [0], "python x"))
    assert card.data.license == "other" and "made from its model's training data" in card.text
    for bad in ("CC BY 4.0", "mit\nlicense_name: x", "-x"):
        with pytest.raises(ConfigError, match="data.license"):
            Config().replace(**{"data.license": bad}).validate()
    Config().replace(**{"data.license": "apache-2.0"}).validate()
