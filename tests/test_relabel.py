"""Relabelling: the label posterior given a finished image (diffusion/sample.py, label_posterior)
and the shard-set rewrite around it (synth/relabel.py, jobs/relabel.py): same keys, byte-identical
images, new soft labels and manifest, reuse, per-shard resume, and clear errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
import torch
import webdataset as wds

from conftest import job
from dakter_scale.config import ConfigError, SamplingConfig
from dakter_scale.data import shards
from dakter_scale.data.stream import GeneratedStream
from dakter_scale.diffusion.model import load_model_folder
from dakter_scale.diffusion.sample import label_posterior, sample_pairs
from dakter_scale.synth.relabel import RelabelError, relabel_shards
from test_filter import _members
from test_synth import _keep_torch_threads, cfg, model, synthesize  # noqa: F401 (fixtures: the session's tiny model, torch threads restored)

RELABEL = SamplingConfig(steps=4, relabel_repeats=2, relabel_start=0.5)


def test_label_posterior_is_a_distribution_and_each_pair_depends_on_its_seed_alone(model):
    m = load_model_folder(model)
    pairs = sample_pairs(m, [11, 12, 13], SamplingConfig(steps=4))
    q = label_posterior(m, pairs.images, pairs.q, [11, 12, 13], RELABEL)
    assert q.shape == pairs.q.shape and (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones_like(q[:, 0]))
    alone = label_posterior(m, pairs.images[1:2], pairs.q[1:2], [12], RELABEL)
    torch.testing.assert_close(alone, q[1:2], atol=1e-4, rtol=0)
    again = label_posterior(m, pairs.images, pairs.q, [11, 12, 13], RELABEL)
    torch.testing.assert_close(again, q, atol=0, rtol=0)
    other_seed = label_posterior(m, pairs.images[1:2], pairs.q[1:2], [99], RELABEL)
    assert not torch.allclose(other_seed, q[1:2])
    # one repeat is one of the runs averaged: two repeats differ from it
    one = label_posterior(m, pairs.images, pairs.q, [11, 12, 13], dataclasses.replace(RELABEL, relabel_repeats=1))
    assert not torch.allclose(one, q)


def test_sample_pairs_with_relabel_keeps_the_images_and_reads_new_labels(model):
    m = load_model_folder(model)
    plain = sample_pairs(m, [3, 4], SamplingConfig(steps=4))
    relabelled = sample_pairs(m, [3, 4], dataclasses.replace(RELABEL, steps=4))
    torch.testing.assert_close(relabelled.images, plain.images, atol=0, rtol=0)
    torch.testing.assert_close(relabelled.q, label_posterior(m, plain.images, plain.q, [3, 4], RELABEL), atol=0, rtol=0)
    assert not torch.allclose(relabelled.q, plain.q)


def test_relabel_start_below_every_step_and_bad_settings_fail_clearly(model):
    m = load_model_folder(model)
    pairs = sample_pairs(m, [1], SamplingConfig(steps=4))
    with pytest.raises(ValueError, match="relabel_start 0.01 leaves no ddim step"):
        label_posterior(m, pairs.images, pairs.q, [1], dataclasses.replace(RELABEL, relabel_start=0.01))
    with pytest.raises(ConfigError, match="sampling.relabel_start"):
        SamplingConfig(relabel_start=1.5).validate()
    with pytest.raises(ConfigError, match="sampling.relabel_repeats"):
        SamplingConfig(relabel_repeats=-1).validate()


def test_relabel_shards_same_keys_same_images_new_labels_reuse_and_resume(model, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    synthesize(model, src, cfg(n=7, samples_per_shard=3, batch_size=3))
    info = relabel_shards(str(src), str(dst), RELABEL, batch_size=2, progress=False)
    assert info["status"] == "complete" and info["count"] == 7 and info["relabel"]["repeats"] == 2 and info["relabel"]["start"] == 0.5
    assert info["generated_stats"]["pairs"] == 7 and "class_fraction_tv" in info["divergence"]
    source, out = _members(str(src)), _members(str(dst))
    assert sorted(out) == sorted(source)
    m = load_model_folder(model)
    for key, sample in out.items():
        image, q, meta = shards.decode_sample(sample)
        old_image, old_q, old_meta = shards.decode_sample(source[key])
        assert sample["image.png"] == source[key]["image.png"] and meta["seed"] == old_meta["seed"] and meta["relabel"] == info["relabel"]["fingerprint"]
        if key == "000001-000000":  # the stored label is label_posterior of the stored image, quantised
            from dakter_scale.data.real import normalise

            expect = label_posterior(m, normalise(image[None]).unsqueeze(1), torch.from_numpy(old_q[None]), [meta["seed"]], RELABEL)[0]
            torch.testing.assert_close(torch.from_numpy(q), expect, atol=2 / 255, rtol=0)
    assert any(sample["soft.png"] != source[key]["soft.png"] for key, sample in out.items())
    manifest = shards.read_manifest(str(dst))
    assert manifest.column("key").to_pylist() == sorted(source) and manifest.column("seed").to_pylist() == shards.read_manifest(str(src)).column("seed").to_pylist()
    tars = [i.tar for i in shards.done_shards(str(dst))]
    assert sum(1 for _ in wds.WebDataset(tars, shardshuffle=False)) == 7
    assert sum(1 for _ in GeneratedStream(str(dst), shuffle_buffer=1, passes=1)) == 7

    # a rerun with the same settings writes nothing
    before = {p.name: p.stat().st_mtime_ns for p in dst.iterdir()}
    assert relabel_shards(str(src), str(dst), RELABEL, batch_size=2, progress=False)["relabel"]["fingerprint"] == info["relabel"]["fingerprint"]
    assert before == {p.name: p.stat().st_mtime_ns for p in dst.iterdir()}

    # an interrupted run (one marker gone, dataset.json not complete) redoes only that shard, with the same bytes
    tar1 = (dst / shards.shard_name(1)).read_bytes()
    (dst / shards.shard_name(1, "json")).unlink()
    (dst / "dataset.json").write_text(json.dumps(dict(info, status="relabelling")))
    relabel_shards(str(src), str(dst), RELABEL, batch_size=2, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in dst.iterdir()}
    assert after[shards.shard_name(0)] == before[shards.shard_name(0)] and after[shards.shard_name(2)] == before[shards.shard_name(2)]
    assert after[shards.shard_name(1)] != before[shards.shard_name(1)] and (dst / shards.shard_name(1)).read_bytes() == tar1

    # other settings replace the output
    again = relabel_shards(str(src), str(dst), dataclasses.replace(RELABEL, relabel_repeats=1), batch_size=2, progress=False)
    assert again["relabel"]["fingerprint"] != info["relabel"]["fingerprint"] and len(_members(str(dst))) == 7


def test_relabel_errors_name_the_problem(model, tmp_path):
    src = tmp_path / "src"
    synthesize(model, src, cfg(n=2, samples_per_shard=2, batch_size=2))
    with pytest.raises(RelabelError, match="relabel_repeats must be >= 1"):
        relabel_shards(str(src), str(tmp_path / "a"), SamplingConfig(steps=4))
    with pytest.raises(RelabelError, match="is the source set itself"):
        relabel_shards(str(src), str(src) + "/", RELABEL)
    with pytest.raises(RelabelError, match="not a complete generated set"):
        relabel_shards(str(tmp_path / "missing"), str(tmp_path / "a"), RELABEL)
    with pytest.raises(RelabelError, match="its model folder .* is not here"):
        relabel_shards(str(src), str(tmp_path / "a"), RELABEL, model_dir=tmp_path / "no-model")


def test_relabel_job_cli(model, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    synthesize(model, src, cfg(n=3, samples_per_shard=3, batch_size=3))
    r = subprocess.run(job("relabel.py") + ["--shards", str(src), "--out", str(dst), "--steps", "4", "--start", "0.5", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "relabelled 3 pairs" in r.stdout and len(_members(str(dst))) == 3
    r = subprocess.run(job("relabel.py") + ["--shards", str(src), "--out", str(dst), "--start", "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--start must be in (0, 1]" in r.stderr
    r = subprocess.run(job("relabel.py") + ["--shards", str(tmp_path / "none"), "--out", str(dst)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "not a complete generated set" in r.stderr and "Traceback" not in r.stderr


def test_relabel_settings_enter_the_synthesis_fingerprint_only_when_on():
    from dakter_scale.config import to_dict
    from dakter_scale.synth.plan import fingerprint

    off = to_dict(SamplingConfig())
    before = {k: v for k, v in off.items() if not k.startswith("relabel_")}  # a set written before relabelling existed
    assert fingerprint("m", off, 0, 100, "f", 50) == fingerprint("m", before, 0, 100, "f", 50)
    assert fingerprint("m", dict(off, relabel_start=0.5), 0, 100, "f", 50) == fingerprint("m", off, 0, 100, "f", 50)
    assert fingerprint("m", to_dict(RELABEL), 0, 100, "f", 50) != fingerprint("m", dict(to_dict(RELABEL), relabel_repeats=0), 0, 100, "f", 50)


def test_relabel_from_and_to_s3(model, s3_bucket):
    src, dst = f"{s3_bucket}/gen", f"{s3_bucket}/gen_relabel"
    synthesize(model, src, cfg(n=5, samples_per_shard=3, batch_size=3))
    info = relabel_shards(src, dst, RELABEL, progress=False)
    assert info["status"] == "complete" and info["generated_stats"]["pairs"] == 5
    assert shards.read_manifest(dst).column("key").to_pylist() == shards.read_manifest(src).column("key").to_pylist()
    assert sum(1 for _ in GeneratedStream(dst, shuffle_buffer=1, passes=1)) == 5
    assert relabel_shards(src, dst, RELABEL, progress=False)["relabel"]["fingerprint"] == info["relabel"]["fingerprint"]  # reused
