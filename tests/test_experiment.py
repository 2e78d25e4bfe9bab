"""The experiment runner on a tiny config: every method runs, tables and figures are written, a rerun resumes."""

import json

from dakter_scale.config import load_config
from dakter_scale.experiment import Experiment

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
    cfg = load_config(None, TINY)
    exp = Experiment(cfg, tmp_path, progress=False)
    assert exp.gen_size() == 6  # ratio 1 x 6 training images
    path = exp.run()
    text = path.read_text()
    for name in ("no augmentation", "hard labels", "DAKTer (soft labels + KD)", "b = 1"):
        assert name in text
    assert "DAKTer > hard > none in mean mIoU for" in text
    payload = json.loads((tmp_path / "results.json").read_text())
    assert len(payload["runs"]) == 2 * 4  # seeds x methods
    assert set(payload["quality"]) == {"b_cfg", "b_1"} and payload["b"]["b_1"] == 1.0
    assert payload["studies"]["decode"][0]["variant"] == "softmax:1"
    for fig in ("per_class_iou.png", "samples_b_cfg.png", "samples_b_1.png"):
        assert (tmp_path / fig).stat().st_size > 1000
    student = json.loads((tmp_path / "students" / "hard-unet-r1-s0" / "student.json").read_text())
    assert student["labels"] == "hard" and student["ratio"] == 1.0
    # A rerun finds every unit done: nothing is retrained.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "students").rglob("model.safetensors")}
    Experiment(cfg, tmp_path, progress=False).run()
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "students").rglob("model.safetensors")}
    assert before == after
