"""Synthesis without Ray: the plan and its seeds, the shard writer, exactly-once reruns, corruption
handling, --only-key regeneration, determinism, the CLI's checks, and object storage on a real S3 API
server (moto on loopback) through s3fs. The Ray strategy is in test_synth_ray.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image

from dakter_scale.config import SamplingConfig, SynthesisConfig, load_config
from dakter_scale.core.steps import derive_seed
from dakter_scale.data import shardset, storage
from dakter_scale.data.shardset import ShardSet
from dakter_scale.data.shardset import codec as shards
from dakter_scale.dist.driver import Outcome, Progress, drive
from dakter_scale.synth import regenerate as synth_regenerate
from dakter_scale.synth import run as synth_run
from dakter_scale.synth.plan import Plan, PlanError, batch_indices, pair_seed, parse_count
from dakter_scale.synth.regenerate import regenerate, regenerate_to
from dakter_scale.synth.worker import pipelined

from conftest import ROOT, job, synthesize_in_process
from shardgen import TINY_DIFFUSION, TINY_SAMPLING

TINY = TINY_DIFFUSION + TINY_SAMPLING
SAMPLING = SamplingConfig(steps=3)
# The sampler contract (byte-identical reruns, bit-identical regeneration) holds for every sampler;
# 4 steps give the order-3 solver a third-order step.
SAMPLERS = [
    SAMPLING,
    SamplingConfig(sampler="ddpm", steps=3),
    SamplingConfig(sampler="dpmsolver++", steps=4),
    SamplingConfig(sampler="dpmsolver++", steps=4, solver_order=3),
    SamplingConfig(sampler="unipc", steps=4),
]
SAMPLER_IDS = ["ddim", "ddpm", "dpmsolver++2", "dpmsolver++3", "unipc"]


def tiny_model(tmp_path_factory) -> str:
    """A 2-step model, trained once per session (shared with test_synth_ray.py through the base temp dir)."""
    out = tmp_path_factory.getbasetemp() / "synth-tiny-model"
    if not (out / "dakter.json").is_file():
        from dakter_scale.diffusion.train import train_diffusion

        threads = torch.get_num_threads()
        train_diffusion(load_config(None, TINY + ["diffusion.max_steps=2"]), out, progress=False)
        torch.set_num_threads(threads)
    return str(out)


def cfg(n=8, samples_per_shard=4, batch_size=3, seed=5, **kw) -> SynthesisConfig:
    return SynthesisConfig(n=n, samples_per_shard=samples_per_shard, batch_size=batch_size, seed=seed, **kw)


def synthesize(model, out, config=None, sampling=SAMPLING, **kw):
    return synth_run.synthesize(model, str(out), config or cfg(), sampling, progress=False, use_ray=False, **kw)


def synth_argv(
    model: str, out: str, n: int, samples_per_shard: int, batch_size: int, actors: int = 0, seed: int = 5
) -> list[str]:
    """jobs/synthesize.py's flags for a run of the tiny model."""
    return [
        *("--model", model, "--n", str(n), "--out", out),
        *("--samples-per-shard", str(samples_per_shard), "--batch-size", str(batch_size)),
        *("--seed", str(seed), "--actors", str(actors)),
    ]


def read_keys(urls: list[str]) -> list[str]:
    """Every sample key, through the stock webdataset reader."""
    return [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]


# -- the plan ---------------------------------------------------------------------------------------


def test_pair_seed_is_the_documented_rule_and_plan_covers_n_once():
    assert pair_seed(7, 3, 45) == derive_seed(7, 3, 45)
    expected = np.random.SeedSequence([7, 3, 45]).generate_state(2, dtype=np.uint32)
    assert pair_seed(7, 3, 45) == (int(expected[0]) | int(expected[1]) << 32) & (2**63 - 1)
    assert len({pair_seed(0, s, i) for s in range(20) for i in range(50)}) == 1000
    plan = Plan(2500, 1000, 0)
    assert plan.num_shards == 3 and [t.count for t in plan.tasks()] == [1000, 1000, 500]
    assert [t.start for t in plan.tasks()] == [0, 1000, 2000]
    assert batch_indices(8, 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert parse_count("1e6") == 10**6 and parse_count("1000") == 1000
    for bad in ("0", "-3", "abc", "1.5", "nan", "inf"):
        with pytest.raises(PlanError, match="--n must be a positive whole number"):
            parse_count(bad)


def test_fingerprint_of_the_default_plan_is_pinned():
    """Shard sets written before keep their identity: a rerun over them must find them done. Sets
    written with the earlier default (DDIM-50) keep theirs when the config names it."""
    import dataclasses

    from dakter_scale.config import Config, to_dict
    from dakter_scale.synth.plan import fingerprint

    c = Config()
    assert (c.sampling.sampler, c.sampling.steps) == ("dpmsolver++", 20)

    def fp(sampling):
        return fingerprint(
            "0" * 64,
            to_dict(sampling),
            c.synthesis.seed,
            c.synthesis.samples_per_shard,
            shardset.FORMAT,
            c.synthesis.batch_size,
        )

    assert fp(dataclasses.replace(c.sampling, sampler="ddim", steps=50)) == "a733d536e81beb42"
    assert fp(c.sampling) == "205982a9e9e4c549"


def test_pipelined_passes_items_in_order_and_raises_either_sides_error():
    got, waited = pipelined(iter(range(50)), lambda items: list(items), depth=2)
    assert got == list(range(50)) and isinstance(waited, float)  # seconds the consumer waited

    def bad_producer():
        yield 1
        raise OSError("sampler broke")

    seen = []
    with pytest.raises(OSError, match="sampler broke"):
        pipelined(bad_producer(), lambda items: seen.extend(items))

    def bad_consumer(items):
        next(items)
        raise ValueError("upload broke")

    with pytest.raises(ValueError, match="upload broke"):
        pipelined(iter(range(1000)), bad_consumer, depth=1)  # the producer must not block on a full queue


def test_progress_line_has_shards_pairs_rate_and_eta():
    progress = Progress(total_items=4000, total_tasks=4, bar=False, name="synthesize", units=("shards", "pairs"))
    progress.window[0] = (progress.window[0][0] - 10.0, 0)  # the first shard took 10 s
    progress.update(1000)
    line = progress.line()
    assert line.startswith("synthesize: shards 1/4, pairs 1000/4000, ")
    rate = float(line.split(", ")[2].split()[0])
    assert 90 < rate <= 100.5 and line.split("ETA ")[1] in ("00:00:29", "00:00:30")  # 3000 pairs at ~100/s


class ScriptedStrategy:
    """A strategy whose calls fail as scripted: {shard: [outcome kind per attempt]}, kinds "ok", "fail",
    "unstarted" (its worker died before starting it). Runs one call at a time."""

    def __init__(self, script):
        self.script, self.pending, self.calls = script, [], []

    def start(self, tasks):
        self.started = tasks

    def free(self):
        return 2 - len(self.pending)

    def submit(self, task):
        self.pending.append(task)

    def poll(self):
        task = self.pending.pop(0)
        self.calls.append((task.shard, task.attempt))
        kinds = self.script.get(task.shard)
        kind = kinds.pop(0) if kinds else "ok"
        if kind == "unstarted":
            return [Outcome(task, started=False)]
        return [
            Outcome(task, result={"shard": task.shard}) if kind == "ok" else Outcome(task, reason=f"boom {task.shard}")
        ]

    def close(self):
        return {"strategy": "scripted"}


def test_driver_loop_retries_failures_and_resubmits_unstarted_shards_uncharged():
    heard = []
    strategy = ScriptedStrategy({1: ["fail", "ok"], 2: ["unstarted", "fail", "fail", "fail"]})
    info = drive(
        Plan(12, 4, 0).tasks(),
        strategy,
        retries=2,
        on_result=lambda *a: heard.append((a[0].shard, a[0].attempt, a[1] is not None, a[3])),
    )
    assert info == {"strategy": "scripted"} and strategy.started == 3
    assert (2, 0) in strategy.calls and strategy.calls.count((2, 0)) == 2  # the unstarted call ran again as attempt 0
    assert sorted(heard) == [
        (0, 0, True, False),
        (1, 0, False, True),
        (1, 1, True, False),
        (2, 0, False, True),
        (2, 1, False, True),
        (2, 2, False, False),
    ]


def test_divergence_thresholds_by_hand():
    div, warnings = shardset.divergence(
        {"class_fractions": [0.7, 0.3], "mean_confidence": 0.9}, [0.9, 0.1], threshold=0.1
    )
    assert (
        div["class_fraction_tv"] == pytest.approx(0.2)
        and div["diverged"]
        and len(warnings) == 1
        and "0.200 > 0.1" in warnings[0]
    )
    div, warnings = shardset.divergence(
        {"class_fractions": [0.85, 0.15], "mean_confidence": 0.4}, [0.9, 0.1], threshold=0.1
    )
    assert div["class_fraction_tv"] == pytest.approx(0.05) and len(warnings) == 1 and "max-probability" in warnings[0]


NAMES = ["sea", "oil", "look-alike", "ship", "land"]
REAL = [0.78, 0.047, 0.0764, 0.003, 0.0936]  # the 64 px training data's shares, ship 0.30 %


def _with_ship(ship: float) -> list[float]:
    """REAL with ship at `ship`, the difference given to sea (a total variation of |0.003 - ship| only)."""
    return [REAL[0] + REAL[3] - ship, *REAL[1:3], ship, REAL[4]]


def test_rare_class_share_warns_when_a_class_vanishes_and_names_it():
    """Ship falling from 0.30 % to 0.03 % moves the total variation by 0.0027 only: the share check
    warns, naming the class; at 0.20 % (within a factor 3) nothing warns."""
    div, warnings = shardset.divergence(
        {"class_fractions": _with_ship(0.0003), "mean_confidence": 0.9}, REAL, 0.1, classes=NAMES
    )
    assert warnings == [
        "generated pairs hold ship at 0.03 % of pixels against 0.30 % in the training data (under a factor 3): "
        "the sampler is losing this class"
    ]
    assert div["diverged"] and div["class_fraction_tv"] == pytest.approx(0.0027)
    shares = div["class_shares"]
    assert shares["ratio_threshold"] == 3.0 and shares["floor"] == 0.001 and len(shares["checked"]) == 5
    assert shares["checked"][3] == {"class": 3, "name": "ship", "generated": 0.0003, "reference": 0.003}
    div, warnings = shardset.divergence({"class_fractions": _with_ship(0.002), "mean_confidence": 0.9}, REAL, 0.1)
    assert warnings == [] and not div["diverged"]
    _, warnings = shardset.divergence(  # a target's class mix, classes unnamed: the index
        {"class_fractions": _with_ship(0.0003), "mean_confidence": 0.9}, REAL, 0.1, against="the target's class mix"
    )
    assert len(warnings) == 1 and warnings[0].startswith("generated pairs hold class 3 at 0.03 %")
    assert "in the target's class mix (under a factor 3)" in warnings[0]
    _, warnings = shardset.divergence(  # the factor is the caller's
        {"class_fractions": _with_ship(0.002), "mean_confidence": 0.9}, REAL, 0.1, class_share_ratio=1.2, classes=NAMES
    )
    assert len(warnings) == 1 and "ship at 0.20 %" in warnings[0] and "a factor 1.2" in warnings[0]


def test_rare_class_share_ignores_classes_below_the_floor_and_over_production():
    """A class under the floor (0.1 % of the reference) never warns, even at zero; producing more of a
    rare class (what balancing and class targets do) never warns."""
    reference = [0.9, 0.0995, 0.0005]
    div, warnings = shardset.divergence(
        {"class_fractions": [0.9005, 0.0995, 0.0], "mean_confidence": 0.9}, reference, 0.1
    )
    assert warnings == [] and [c["class"] for c in div["class_shares"]["checked"]] == [0, 1]
    _, warnings = shardset.divergence({"class_fractions": _with_ship(0.03), "mean_confidence": 0.9}, REAL, 0.1)
    assert warnings == []
    div, warnings = shardset.divergence({"class_fractions": [1.0, 0.0], "mean_confidence": 0.9}, None, 0.1)
    assert warnings == [] and div["class_shares"]["checked"] == [] and "not checked" in div["class_shares"]["note"]


def test_rare_class_share_in_the_summary_lines():
    from dakter_scale.data.shardset import DatasetInfo

    generated = {"class_fractions": _with_ship(0.0003), "mean_confidence": 0.9, "pairs": 200}
    div, warnings = shardset.divergence(generated, REAL, 0.1, classes=NAMES)
    info = DatasetInfo(
        classes=NAMES,
        generated_stats=generated,
        train_stats={"class_fractions": REAL},
        divergence=div,
        warnings=warnings,
    )
    assert (
        "  class share ratio      ship 0.10: generated 0.03 %, reference 0.30 % of pixels "
        "(the lowest of the classes >= 0.1 %; warn < 1/3)"
    ) in info.summary_lines()


@pytest.mark.parametrize("value", ["1", "0.5", "-3"])
def test_class_share_ratio_threshold_is_validated(value):
    from dakter_scale.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(None, [f"synthesis.class_share_ratio_threshold={value}"])
    assert str(e.value) == f"synthesis.class_share_ratio_threshold: must be > 1 (a factor), got {float(value)}"
    assert load_config(None, ["synthesis.class_share_ratio_threshold=2.5"]).synthesis.class_share_ratio_threshold == 2.5


# -- the sampler contract ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", SAMPLERS, ids=SAMPLER_IDS)
def test_every_sampler_is_bounded_clipped_and_a_pair_depends_on_its_seed_only(model, monkeypatch, sampling):
    """Images in [-1, 1] and soft labels that are distributions; the scheduler steps on a clipped x0
    (or the eps consistent with it); pair i depends on seeds[i] only: the same pair alone or in
    another batch differs by float rounding at most, and the same batch twice is bit-identical."""
    from dakter_scale.diffusion import sample
    from dakter_scale.diffusion.model import load_model_folder

    m = load_model_folder(model)
    handed: list[torch.Tensor] = []
    make = sample.sampling_scheduler

    def recording(model_, cfg_):
        sched = make(model_, cfg_)
        step = sched.step

        def step_and_record(output, t, z, **kw):
            a = sched.alphas_cumprod[t]
            x0 = output if cfg_.sampler in ("dpmsolver++", "unipc") else (z - (1 - a).sqrt() * output) / a.sqrt()
            handed.append(x0)
            return step(output, t, z, **kw)

        sched.step = step_and_record
        return sched

    monkeypatch.setattr(sample, "sampling_scheduler", recording)
    out = sample.sample_pairs(m, [11, 12, 13], sampling)
    assert len(handed) == sampling.steps
    for x0 in handed:
        assert x0[:, 0].abs().max() <= 1 + 1e-4 and x0[:, 1:].abs().max() <= m.b + 1e-4
    assert out.images.abs().max() <= 1 and torch.isfinite(out.images).all()
    assert (out.q >= 0).all() and torch.allclose(out.q.sum(dim=1), torch.ones(1), atol=1e-5)
    again = sample.sample_pairs(m, [11, 12, 13], sampling)
    assert torch.equal(out.images, again.images) and torch.equal(out.q, again.q)
    alone = sample.sample_pairs(m, [12], sampling)
    other = sample.sample_pairs(m, [99, 12], sampling)
    for pair in (alone, other):
        j = len(pair.images) - 1
        assert torch.allclose(pair.images[j], out.images[1], atol=1e-4) and torch.allclose(
            pair.q[j], out.q[1], atol=1e-4
        )
    assert not torch.allclose(out.images[0], out.images[1], atol=1e-2)


# -- a local run ----------------------------------------------------------------------------------


def test_loading_the_model_in_many_threads_leaves_torch_as_it_was(model):
    """from_pretrained builds the UNet inside accelerate's init_empty_weights, which swaps
    nn.Module.register_parameter process-wide and restores what it found: two threads loading at
    once left it swapped, and every module built afterwards (students in later tests) was on the meta
    device. load_model_folder builds from the config instead."""
    from dakter_scale.diffusion.model import load_model_folder

    register = torch.nn.Module.register_parameter
    barrier, loaded = threading.Barrier(4), []

    def load() -> None:
        barrier.wait()
        loaded.append(load_model_folder(model))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loaded) == 4 and torch.nn.Module.register_parameter is register
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"
    first = dict(loaded[0].unet.state_dict())
    assert all(p.device.type == "cpu" for p in first.values())
    for other in loaded[1:]:
        assert all(torch.equal(first[k], v) for k, v in other.unet.state_dict().items())


def test_a_model_folder_whose_weights_do_not_fit_its_config_is_one_error(model, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from dakter_scale.diffusion.model import ModelFolderError, load_model_folder

    broken = tmp_path / "m"
    shutil.copytree(model, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors.pop(next(iter(tensors)))
    save_file(tensors, weights)
    with pytest.raises(ModelFolderError, match="does not fit"):
        load_model_folder(broken)


def test_local_run_layout_manifest_and_dataset_json(model, tmp_path):
    out = tmp_path / "shards"
    summary = synthesize(model, out, cfg(n=10))
    assert summary.ok and sorted(summary.written) == [0, 1, 2] and summary.pairs_written == 10
    keys = read_keys([str(out / shardset.shard_name(s)) for s in range(3)])
    assert len(keys) == len(set(keys)) == 10 and keys[0] == "000000-000000" and keys[-1] == "000002-000001"
    manifest = ShardSet(str(out)).manifest()
    assert manifest.num_rows == 10 and manifest.column_names == [
        "key",
        "shard",
        "index",
        "seed",
        "class_fractions",
        "mean_entropy",
        "mean_confidence",
    ]
    assert manifest.column("seed").to_pylist()[5] == pair_seed(5, 1, 1)
    assert all(abs(sum(f) - 1) < 1e-5 for f in manifest.column("class_fractions").to_pylist())
    info = json.loads((out / "dataset.json").read_text())
    for key in (
        "model_hash",
        "b",
        "classes",
        "sampler",
        "steps",
        "seed",
        "count",
        "code_version",
        "generated_stats",
        "train_stats",
        "divergence",
        "warnings",
    ):
        assert key in info, key
    assert info["count"] == 10 and info["status"] == "complete" and info["seed"] == 5 and info["batch_size"] == 3
    assert len(info["generated_stats"]["class_fractions"]) == 5 and len(info["train_stats"]["class_fractions"]) == 5
    assert info["divergence"]["threshold"] == 0.1 and "class_fraction_tv" in info["divergence"]
    for s in range(3):  # the marker is written last and describes the tar exactly
        marker = json.loads((out / shardset.shard_name(s, "json")).read_text())
        tar = out / shardset.shard_name(s)
        assert (
            marker["tar_bytes"] == tar.stat().st_size
            and marker["sha256"] == hashlib.sha256(tar.read_bytes()).hexdigest()
        )
        assert (
            (out / shardset.shard_name(s, "json")).stat().st_mtime_ns
            >= (out / shardset.shard_name(s, "parquet")).stat().st_mtime_ns
            >= tar.stat().st_mtime_ns
        )
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_rerun_writes_nothing_and_reports_every_shard_done(model, tmp_path):
    out = tmp_path / "shards"
    torch.set_num_threads(3)
    synthesize(model, out)
    assert torch.get_num_threads() == 3  # the in-process writer ran with its own thread count, then gave ours back
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.startswith("shard-")}
    again = synthesize(model, out)
    assert again.ok and again.written == [] and sorted(again.skipped) == [0, 1] and again.pairs_written == 0
    assert any("skipped as already done: 2 shards" in line for line in again.lines())
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.startswith("shard-")}


@pytest.mark.parametrize("sampling", SAMPLERS, ids=SAMPLER_IDS)
def test_same_plan_model_and_seed_give_byte_identical_tars(model, tmp_path, sampling):
    synthesize(model, tmp_path / "a", sampling=sampling)
    synthesize(model, tmp_path / "b", sampling=sampling)
    for s in range(2):
        assert (tmp_path / "a" / shardset.shard_name(s)).read_bytes() == (
            tmp_path / "b" / shardset.shard_name(s)
        ).read_bytes()
    synthesize(model, tmp_path / "c", cfg(seed=6), sampling=sampling)
    assert (tmp_path / "a" / shardset.shard_name(0)).read_bytes() != (
        tmp_path / "c" / shardset.shard_name(0)
    ).read_bytes()


def test_growing_n_reuses_full_shards_and_rewrites_the_partial_one(model, tmp_path):
    out = tmp_path / "shards"
    synthesize(model, out, cfg(n=6))  # shards of 4 and 2
    first = (out / shardset.shard_name(0)).read_bytes()
    grown = synthesize(model, out, cfg(n=8))
    assert grown.skipped == [0] and grown.written == [1] and (out / shardset.shard_name(0)).read_bytes() == first
    keys = read_keys([str(out / shardset.shard_name(s)) for s in range(2)])
    assert sorted(keys) == [shardset.sample_key(s, i) for s in range(2) for i in range(4)]
    with pytest.raises(PlanError, match="plans only 1.*--overwrite"):
        synthesize(model, out, cfg(n=3))


def test_a_smaller_n_is_a_conflict_that_overwrite_clears(model, tmp_path):
    """The fingerprint leaves out n: shards beyond a smaller --n are a conflict, so the --overwrite the
    refusal suggests deletes them and writes this plan, instead of refusing again."""
    out = tmp_path / "shards"
    synthesize(model, out, cfg(n=8))
    assert "plans only 1" in synth_run.dry_run(model, str(out), cfg(n=3), SAMPLING)["conflict"]
    shrunk = synthesize(model, out, cfg(n=3), overwrite=True)
    assert shrunk.ok and shrunk.written == [0] and not (out / shardset.shard_name(1)).exists()
    assert ShardSet(str(out)).info().complete


def test_an_output_that_cannot_be_listed_is_named_without_its_password(model, monkeypatch):
    secret = "hunter2secretpassword"
    url = f"memory://alice:{secret}@host/gen"

    def refuse(self):
        raise OSError("x" * 170 + f" {url}: 403\nsecond line")  # a cut at 200 falls inside the password

    monkeypatch.setattr(ShardSet, "listing", refuse)
    with pytest.raises(storage.StorageError, match=r"memory://\*\*\*@host/gen cannot be listed") as e:
        synth_run.inspect_output(model, url, cfg(), SAMPLING)
    assert secret[:7] not in str(e.value)


@pytest.mark.parametrize("sampling", SAMPLERS, ids=SAMPLER_IDS)
def test_only_key_regenerates_the_pair_in_the_shard_bitwise(model, tmp_path, sampling):
    """The pair is rebuilt by re-running its batch (plan.batch_indices): bit-identical on the same CPU."""
    out = tmp_path / "shards"
    synthesize(model, out, cfg(n=8, samples_per_shard=8, batch_size=3), sampling=sampling)
    samples = {s["__key__"]: s for s in wds.WebDataset(str(out / shardset.shard_name(0)), shardshuffle=False)}
    for index in (4, 7):  # the middle of a full batch, and the last, partial batch [6, 7]
        key = shardset.sample_key(0, index)
        image, soft, meta = shardset.decode_sample(samples[key])
        regen_image, regen_q, record = regenerate(model, key, 5, sampling, batch_size=3, shard_count=8)
        assert np.array_equal(regen_image, image)
        assert np.array_equal(shards.quantise(torch.from_numpy(regen_q)), (soft * 255).round().astype(np.uint8))
        assert record["seed"] == meta["seed"] == pair_seed(5, 0, index)
        assert record["mean_confidence"] == pytest.approx(meta["mean_confidence"], abs=1e-7)

    written = regenerate_to(model, "000000-000004", cfg(n=8, samples_per_shard=8, batch_size=3), sampling, str(out))
    folder = out / "regenerated"
    with Image.open(folder / "000000-000004.image.png") as im:
        assert np.array_equal(np.asarray(im), shardset.decode_sample(samples["000000-000004"])[0])
    assert np.load(folder / "000000-000004.soft.npy").dtype == np.float32 and written["written_to"] == str(folder)
    with pytest.raises(PlanError, match="other settings"):
        regenerate_to(model, "000000-000004", cfg(n=8, samples_per_shard=8, batch_size=4), sampling, str(out))
    assert synthesize(model, out, cfg(n=8, samples_per_shard=8, batch_size=3), sampling=sampling).skipped == [
        0
    ]  # regenerated/ is ignored


def test_only_key_takes_the_shards_size_from_its_marker(model, tmp_path, monkeypatch):
    """Without dataset.json and with another --n, the shard's own marker gives its size, so the last,
    partial batch is made up as the writer made it; the batch re-run is the writer's ([6], not [6, 7])."""
    out = tmp_path / "shards"
    synthesize(model, out, cfg(n=7, samples_per_shard=8, batch_size=3))
    (out / "dataset.json").unlink()
    stored = {s["__key__"]: s for s in wds.WebDataset(str(out / shardset.shard_name(0)), shardshuffle=False)}
    seen = []
    real = synth_regenerate.sample_pairs
    monkeypatch.setattr(
        synth_regenerate, "sample_pairs", lambda m, seeds, *a: seen.append(len(seeds)) or real(m, seeds, *a)
    )
    regenerate_to(model, "000000-000006", cfg(n=16, samples_per_shard=8, batch_size=3), SAMPLING, str(out))
    with Image.open(out / "regenerated" / "000000-000006.image.png") as im:
        assert np.array_equal(np.asarray(im), shardset.decode_sample(stored["000000-000006"])[0])
    assert seen == [1]


# -- broken shards and other datasets ----------------------------------------------------------------


def test_truncated_tar_without_marker_is_rewritten(model, tmp_path):
    out = tmp_path / "shards"
    synthesize(model, out)
    good = (out / shardset.shard_name(1)).read_bytes()
    (out / shardset.shard_name(1)).write_bytes(good[: len(good) // 3])  # a writer that died; no marker
    (out / shardset.shard_name(1, "json")).unlink()
    assert [d.shard for d in ShardSet(str(out)).done()] == [0]  # readers ignore it
    again = synthesize(model, out)
    assert again.written == [1] and again.skipped == [0] and again.corrupt == {}
    assert (out / shardset.shard_name(1)).read_bytes() == good


def test_marker_with_corrupt_tar_is_reported_and_rewritten(model, tmp_path, caplog):
    out = tmp_path / "shards"
    synthesize(model, out)
    good = (out / shardset.shard_name(1)).read_bytes()
    (out / shardset.shard_name(1)).write_bytes(good[:1000])  # marker kept
    again = synthesize(model, out)
    assert "tar has 1000 bytes, the marker records" in again.corrupt[1]
    assert "shard 1 is corrupt" in caplog.text and any("found corrupt" in line for line in again.lines())
    assert again.written == [1] and (out / shardset.shard_name(1)).read_bytes() == good

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # same size: only the sha256 check sees it
    (out / shardset.shard_name(1)).write_bytes(bytes(flipped))
    assert synthesize(model, out).skipped == [0, 1]  # verify=size (the default) cannot tell
    checked = synthesize(model, out, cfg(verify="sha256"))
    assert checked.corrupt == {
        1: "marker present but the tar's sha256 differs from the marker's"
    } and checked.written == [1]
    assert (out / shardset.shard_name(1)).read_bytes() == good


def test_a_marker_with_sums_of_another_class_count_is_rewritten_at_the_start(model, tmp_path):
    """A marker whose class-fraction sums the set's statistics cannot read (one per class of another
    class count) is found when the run plans, and its shard rewritten; it used to be skipped as done
    and stop the run at its end, with every shard written and dataset.json left in progress."""
    out = tmp_path / "shards"
    synthesize(model, out)
    marker_path = out / shardset.shard_name(1, "json")
    marker = json.loads(marker_path.read_text())
    marker_path.write_text(json.dumps(dict(marker, sum_class_fractions=marker["sum_class_fractions"][:2])))
    again = synthesize(model, out)
    assert again.ok and again.written == [1] and again.skipped == [0]
    assert "sum_class_fractions has 2 values, not one per class" in again.corrupt[1]
    untimed = lambda m: {k: v for k, v in m.items() if not k.endswith("seconds")}  # noqa: E731 (timings differ run to run)
    rewritten = untimed(json.loads(marker_path.read_text()))
    assert rewritten == untimed(marker) and ShardSet(str(out)).info().complete


def test_a_shard_another_writer_replaced_during_the_run_fails_the_run(model, tmp_path, monkeypatch):
    """A shard whose marker changed under the run (another writer finished it between this run's write
    and its end) is not counted, and the run says so: not ok, the shard among the failures, the set
    incomplete. It used to end ok with the set incomplete."""
    out = tmp_path / "shards"
    read_back = synth_run._own_markers

    def another_writer(shards, markers, fp):
        path = out / shardset.shard_name(1, "json")
        path.write_text(json.dumps(dict(json.loads(path.read_text()), sha256="0" * 64)))
        return read_back(shards, markers, fp)

    monkeypatch.setattr(synth_run, "_own_markers", another_writer)
    summary = synthesize(model, out)
    assert not summary.ok and list(summary.failed) == [1] and "changed under this run" in summary.failed[1]
    assert not ShardSet(str(out)).info().complete


def test_overwrite_deletes_nothing_once_the_run_has_lost_its_lease(model, tmp_path):
    """--overwrite's delete is a write: planning that outlasted the lease (check raises) leaves the other
    dataset whole."""
    from dakter_scale.data.lease import LeaseError

    out = tmp_path / "shards"
    synthesize(model, out)
    before = sorted(p.name for p in out.iterdir())

    def lost():
        raise LeaseError("lost")

    with pytest.raises(LeaseError):
        synth_run.prepare(model, str(out), cfg(seed=6), SAMPLING, overwrite=True, check=lost)
    assert sorted(p.name for p in out.iterdir()) == before


def test_another_dataset_in_the_prefix_is_refused_unless_overwrite(model, tmp_path):
    out = tmp_path / "shards"
    synthesize(model, out)
    with pytest.raises(PlanError, match=r"differs in seed .*--overwrite"):
        synthesize(model, out, cfg(seed=6))
    plan = synth_run.dry_run(model, str(out), cfg(seed=6), SAMPLING, overwrite=True)
    assert plan["would_refuse"] is False and "differs in seed" in plan["conflict"]
    assert json.loads((out / "dataset.json").read_text())["seed"] == 5  # a dry run deletes nothing
    replaced = synthesize(model, out, cfg(seed=6), overwrite=True)
    assert (
        replaced.ok
        and sorted(replaced.written) == [0, 1]
        and json.loads((out / "dataset.json").read_text())["seed"] == 6
    )


def test_dry_run_plans_without_writing(model, tmp_path):
    out = tmp_path / "never"
    plan = synth_run.dry_run(model, str(out), cfg(n=10**6, samples_per_shard=1000), SAMPLING)
    assert plan["shards"] == 1000 and plan["pairs"] == 10**6 and plan["shards_to_write"] == 1000
    assert plan["estimated_bytes"] == plan["estimated_bytes_per_pair"] * 10**6 > 0
    assert not out.exists()


# -- the CLI's checks -----------------------------------------------------------------------------


def cli(argv, capsys, monkeypatch):
    """Run jobs/synthesize.py in this process; no worker may start. Returns (exit status, stderr)."""
    code, out = synthesize_in_process(argv, capsys, monkeypatch)
    return code, out.err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--n", "0"], "--n must be a positive whole number like 1000 or 1e6, got '0'"),
        (["--n", "-5"], "--n must be a positive whole number like 1000 or 1e6, got '-5'"),
        (["--n", "lots"], "--n must be a positive whole number like 1000 or 1e6, got 'lots'"),
        (["--n", "8", "--samples-per-shard", "0"], "--samples-per-shard must be >= 1, got 0"),
        (["--n", "8", "--samples-per-shard", "-2"], "--samples-per-shard must be >= 1, got -2"),
        (["--n", "8", "--actors", "many"], "--actors must be auto or a number >= 0, got 'many'"),
        (
            ["--n", "8", "--sampler", "euler"],
            "sampling.sampler: 'euler' is not one of ddim, ddpm, dpmsolver++, unipc, distilled",
        ),
        (
            ["--n", "8", "--sampler", "dpmsolver++", "--solver-order", "4"],
            "sampling.solver_order: must be 1, 2 or 3, got 4",
        ),
        (["--n", "8", "--steps", "1001"], "sampling.steps: 1001 is more than the model's 1000 training timesteps"),
        (
            ["--n", "8", "--steps", "1001", "--dry-run"],
            "sampling.steps: 1001 is more than the model's 1000 training timesteps",
        ),
    ],
)
def test_bad_flags_fail_with_one_line_before_any_worker(model, tmp_path, capsys, monkeypatch, args, message):
    code, err = cli(["--model", model, "--out", str(tmp_path / "o"), *args], capsys, monkeypatch)
    assert code == 2 and err == f"error: {message}\n"


def test_bad_model_folder_fails_with_one_line(model, tmp_path, capsys, monkeypatch):
    import shutil

    broken = tmp_path / "no-weights"
    shutil.copytree(model, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    code, err = cli(["--model", str(broken), "--n", "8", "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert (
        code == 2
        and err
        == f"error: model folder {broken} has no unet/diffusion_pytorch_model.safetensors; train one with jobs/train_diffusion.py\n"
    )
    (broken / "dakter.json").unlink()
    code, err = cli(["--model", str(broken), "--n", "8", "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert (
        code == 2
        and err == f"error: model folder {broken} has no dakter.json; train one with jobs/train_diffusion.py\n"
    )


def test_unwritable_output_fails_with_one_line(model, tmp_path, capsys, monkeypatch, s3_server):
    (tmp_path / "file").write_text("x")
    code, err = cli(
        ["--model", model, "--n", "8", "--out", str(tmp_path / "file" / "sub"), "--actors", "2"], capsys, monkeypatch
    )
    assert (
        code == 2
        and err.startswith(f"error: output {tmp_path / 'file' / 'sub'} is not writable: ")
        and err.count("\n") == 1
    )
    code, err = cli(
        ["--model", model, "--n", "8", "--out", "s3://no-such-bucket-dakter/run1", "--actors", "2"], capsys, monkeypatch
    )
    assert (
        code == 2
        and err.startswith("error: output s3://no-such-bucket-dakter/run1 is not writable: ")
        and err.count("\n") == 1
    )
    assert "testing" not in err  # the credentials are never echoed


def test_cli_json_dry_run(model, tmp_path):
    """The real CLI in a subprocess: --dry-run --json prints one JSON object and starts nothing."""
    r = subprocess.run(
        job("synthesize.py") + ["--model", model, "--n", "1e6", "--out", str(tmp_path / "o"), "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["pairs"] == 10**6 and plan["shards"] == 1000 and not (tmp_path / "o").exists()


# -- object storage: a real S3 API server on loopback ----------------------------------------------


def presigned(url: str, count: int) -> list[str]:
    """HTTP URLs of the tars, as a reader outside the cluster would get them (the stock reader uses curl)."""
    fs, root = storage.url_to_fs(url)
    return [fs.url(storage.join(root, shardset.shard_name(s)), expires=600) for s in range(count)]


def test_s3_run_exactly_n_pairs_and_rerun_writes_nothing(model, s3_bucket):
    url = f"{s3_bucket}/run"
    summary = synthesize(model, url, cfg(n=10))
    assert summary.ok and summary.pairs_written == 10
    keys = read_keys(presigned(url, 3))
    assert len(keys) == len(set(keys)) == 10
    assert ShardSet(url).manifest().num_rows == 10 and ShardSet(url).info().count == 10
    again = synthesize(model, url, cfg(n=10))  # same process: the s3fs listing cache must not hide the shards
    assert again.written == [] and sorted(again.skipped) == [0, 1, 2]


def test_s3_killed_writer_leaves_no_visible_partial_shard(model, s3_bucket, tmp_path):
    url = f"{s3_bucket}/run"
    fault = tmp_path / "fault.json"
    fault.write_text(json.dumps({"shard": 1, "after": 3}))
    args = synth_argv(model, url, 12, 4, 3) + TINY
    r = subprocess.run(
        job("synthesize.py") + args,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, DAKTER_FAULT_FILE=str(fault)),
    )
    assert r.returncode == 17, r.stderr  # died in the middle of shard 1
    fs, root = storage.url_to_fs(url)
    names = set(storage.list_dir(fs, root))
    assert {shardset.shard_name(0, e) for e in ("tar", "parquet", "json")} <= names
    assert not [n for n in names if n.startswith("shard-000001") or n.startswith("shard-000002")]
    assert [d.shard for d in ShardSet(url).done()] == [0]
    # the killed run's lock holds for its lease (data/lease.py: a pid decides nothing): the operator who
    # knows the run is dead takes the prefix with --break-lock
    resumed = synth_run.synthesize(
        model,
        url,
        cfg(n=12, samples_per_shard=4, batch_size=3),
        SAMPLING,
        progress=False,
        use_ray=False,
        break_lock=True,
    )
    assert resumed.skipped == [0] and sorted(resumed.written) == [1, 2]
    keys = read_keys(presigned(url, 3))
    assert len(keys) == len(set(keys)) == 12


def test_s3_unfinished_multipart_upload_is_invisible(s3_bucket):
    """A writer killed after its first 5 MiB part leaves no object, only an incomplete multipart upload
    (which a bucket lifecycle rule should abort: docs/synthesis.md)."""
    code = textwrap.dedent(
        f"""
        import os
        from dakter_scale.data import storage
        fs, path = storage.url_to_fs("{s3_bucket}/big.tar")
        with storage.open_atomic(fs, path) as f:
            f.write(os.urandom(6 * 2**20))
            f.flush()  # the first part is uploaded here
            os._exit(17)
        """
    )
    env = dict(os.environ, FSSPEC_S3=json.dumps({"default_block_size": 5 * 2**20}))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 17, r.stderr
    fs, root = storage.url_to_fs(s3_bucket)
    assert storage.list_dir(fs, root) == {}
    uploads = fs.call_s3("list_multipart_uploads", Bucket=root).get("Uploads", [])
    assert [u["Key"] for u in uploads] == ["big.tar"]


def test_tar_members_are_sorted_with_fixed_metadata(model, tmp_path):
    synthesize(model, tmp_path / "a", cfg(n=4))
    with tarfile.open(tmp_path / "a" / shardset.shard_name(0)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members][:3] == ["000000-000000.image.png", "000000-000000.json", "000000-000000.soft.png"]
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
    table = pq.read_table(io.BytesIO((tmp_path / "a" / shardset.shard_name(0, "parquet")).read_bytes()))
    assert table.column("key").to_pylist() == [shardset.sample_key(0, i) for i in range(4)]


def test_encoder_pool_writes_the_same_bytes(model, tmp_path):
    """GPU writers encode a batch on a thread pool; the tar must not change."""
    from concurrent.futures import ThreadPoolExecutor

    from dakter_scale.synth.worker import ShardWriter

    args = synth_run.writer_args(model, str(tmp_path / "a"), cfg(n=6, samples_per_shard=6), SAMPLING, "fp")
    task = Plan(6, 6, 5).task(0)
    serial = ShardWriter(**args, device="cpu")(task)
    pooled = ShardWriter(**dict(args, out_url=str(tmp_path / "b")), device="cpu")
    pooled._pool = ThreadPoolExecutor(3)
    assert pooled(task)["sha256"] == serial["sha256"]
    assert (tmp_path / "a" / shardset.shard_name(0)).read_bytes() == (
        tmp_path / "b" / shardset.shard_name(0)
    ).read_bytes()


def test_only_temporaries_nothing_writes_to_are_removed_after_a_run(model, tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    dead = out / "shard-000001.tar.tmp-0123456789ab"  # a killed local writer's, from before this run
    dead.write_bytes(b"half a shard")
    other = out / "notes.txt.tmp-0123456789ab"  # not a name this tool writes
    other.write_bytes(b"x")
    live = out / "shard-000003.tar.tmp-ba9876543210"  # a writer streaming into it during the run
    stop = threading.Event()

    def writer() -> None:
        with open(live, "ab") as f:
            while not stop.wait(0.02):
                f.write(b"more")
                f.flush()
                os.utime(live)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.1)
        synthesize(model, out)
    finally:
        stop.set()
        thread.join()
    assert sorted(p.name for p in out.iterdir() if ".tmp-" in p.name) == sorted([live.name, other.name])
    assert ShardSet(str(out)).info().complete


def test_ray_cluster_yaml_is_a_valid_autoscaler_config_with_token_auth():
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(raw))  # Ray's own schema; no cloud is contacted
    assert raw["provider"]["type"] == "aws" and raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # the project with every extra, so the nodes get pyproject's floors (Ray, s3fs, botocore), not the image's
    assert [c for c in raw["setup_commands"] if "pip install" in c and "dakter-scale" in c] == [
        'python3 -m pip install -q "$HOME/dakter-scale[all]"'
    ]
    starts = [c for c in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert "--dashboard-host=127.0.0.1" in raw["head_start_ray_commands"][-1]
    # nodes on private IPs, in a group made beforehand (Ray's own would open SSH to 0.0.0.0/0); only code copied
    assert raw["provider"]["use_internal_ips"] is True and "0.0.0.0/0" not in yaml.safe_dump(raw)
    assert all(node["node_config"].get("SecurityGroupIds") for node in raw["available_node_types"].values())
    assert "." not in raw["file_mounts"].values() and "./" not in raw["file_mounts"].values()
    assert {"./dakter_scale", "./jobs", "./pyproject.toml"} <= set(raw["file_mounts"].values())


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmsolver++", "unipc"])
def test_every_sampler_starts_at_the_last_training_timestep_for_a_scheduler_built_in_memory(sampler):
    """timestep_spacing="trailing" went in as a key of the scheduler's config, which from_config drops for
    a scheduler built in memory (it lists the key as defaulted): DDIM and DDPM then ran "leading" (950
    ... 0) and the solvers "linspace". Only models loaded from a folder started at 999."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from dakter_scale.diffusion.sample import sampling_scheduler

    model = SimpleNamespace(scheduler=DDPMScheduler(num_train_timesteps=1000))
    sched = sampling_scheduler(model, SamplingConfig(sampler=sampler, steps=20))
    assert (
        sched.timesteps[0].item() == 999
        and sched.timesteps[-1].item() == 49
        and not sched.config.get("clip_sample", False)
    )


def test_zero_terminal_snr_with_an_epsilon_prediction_is_refused():
    from dakter_scale.config import ConfigError

    with pytest.raises(ConfigError, match=r"diffusion\.rescale_zero_terminal_snr: needs v_prediction or sample"):
        load_config(None, ["diffusion.rescale_zero_terminal_snr=true"])
    with pytest.raises(ConfigError, match=r"rescale_zero_terminal_snr"):
        load_config(
            None,
            [
                "diffusion.rescale_zero_terminal_snr=true",
                "diffusion.prediction_type=v_prediction",
                "diffusion.label_prediction_type=epsilon",
            ],
        )
    load_config(None, ["diffusion.rescale_zero_terminal_snr=true", "diffusion.prediction_type=v_prediction"])


def test_a_run_stopped_by_an_error_closes_its_progress_bar(model, tmp_path, monkeypatch):
    closed = []
    monkeypatch.setattr(Progress, "close", lambda self: closed.append(True))

    def fails(*a, **k):
        raise RuntimeError("no actor could start")

    monkeypatch.setattr(synth_run, "run_tasks", fails)
    with pytest.raises(RuntimeError, match="no actor could start"):
        synthesize(model, tmp_path / "shards")
    assert closed == [True]
