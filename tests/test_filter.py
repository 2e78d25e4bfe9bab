"""The label-alignment filter: per-pair scores, the top-n selection, byte-exact copies in the shard
layout the stock webdataset reader and the student stream read, reuse, and its errors."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds

from dakter_scale.data import shardset
from dakter_scale.data.osd import CLASSES
from dakter_scale.data.shardset import ShardSet
from dakter_scale.data.storage import overlaps
from dakter_scale.data.stream import GeneratedStream
from dakter_scale.student.models import build_student, save_student
from dakter_scale.synth.filter import SCORES_FILE, FilterError, filter_shards, pair_alignment
from tests.shardgen import write_dataset


def test_pair_alignment_values():
    t = np.zeros((3, 2, 2), dtype=np.int64)
    t[:, 0, 0] = 1  # class 1 at one pixel, class 0 elsewhere
    p = t.copy()
    p[1] = 0  # misses class 1: IoU 0 for class 1, 3/4 for class 0
    p[2] = 2  # nothing right: classes 0, 1, 2 present, all IoU 0
    np.testing.assert_allclose(pair_alignment(p, t, 5), [1.0, (0.75 + 0.0) / 2, 0.0])


@pytest.fixture
def segmenter(tmp_path):
    torch.manual_seed(0)
    model = build_student("unet", "resnet18", len(CLASSES), None, encoder_depth=3)
    return save_student(
        tmp_path / "seg", model, {"arch": "unet", "encoder": "resnet18", "classes": list(CLASSES), "encoder_depth": 3}
    )


def _members(url):
    return {s["__key__"]: s for s in ShardSet(url).samples()}


def test_filter_keeps_the_best_aligned_pairs_byte_for_byte(tmp_path, segmenter):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    write_dataset(src, [5, 4, 3], size=32)
    info = filter_shards(src, dst, segmenter, keep=7, samples_per_shard=3)
    assert info.count == 7 and info.num_shards == 3 and info.complete
    scores = pq.read_table(f"{dst}/{SCORES_FILE}").to_pydict()
    assert len(scores["key"]) == 12 and sum(scores["kept"]) == 7
    kept = [k for k, keep in zip(scores["key"], scores["kept"]) if keep]
    dropped = [a for a, keep in zip(scores["alignment"], scores["kept"]) if not keep]
    assert min(a for a, keep in zip(scores["alignment"], scores["kept"]) if keep) >= max(dropped)
    source, out = _members(src), _members(dst)
    assert sorted(out) == [shardset.sample_key(s, i) for s in range(3) for i in range(3)][:7]
    for new_key in sorted(out):  # original key order, members copied unchanged, provenance kept
        sample = out[new_key]
        meta = json.loads(sample["json"])
        old = source[meta["source_key"]]
        assert meta["source_key"] == kept[sorted(out).index(new_key)]
        assert sample["image.png"] == old["image.png"] and sample["soft.png"] == old["soft.png"]
        assert meta["key"] == new_key and meta["seed"] == json.loads(old["json"])["seed"]
        assert meta["alignment"] == pytest.approx(
            scores["alignment"][scores["key"].index(meta["source_key"])], abs=1e-5
        )
    # the stock webdataset reader and the student stream read the result
    tars = [i.tar for i in ShardSet(dst).done()]
    assert sum(1 for _ in wds.WebDataset(tars, shardshuffle=False)) == 7
    assert sum(1 for _ in GeneratedStream(dst, shuffle_buffer=1, passes=1)) == 7
    manifest = ShardSet(dst).manifest()
    assert len(manifest) == 7
    # the dataset statistics describe the kept pairs, not the source
    assert info.generated_stats["pairs"] == 7
    np.testing.assert_allclose(
        info.generated_stats["class_fractions"],
        np.mean(manifest.column("class_fractions").to_pylist(), axis=0),
        atol=1e-6,
    )
    # a rerun with the same source, segmenter and rule reuses the output
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dst").iterdir()}
    assert (
        filter_shards(src, dst, segmenter, keep=7, samples_per_shard=3).filter["fingerprint"]
        == info.filter["fingerprint"]
    )
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dst").iterdir()}
    # another rule replaces it
    again = filter_shards(src, dst, segmenter, min_alignment=info.filter["threshold"])
    assert again.count >= 7 and len(_members(dst)) == again.count


def test_filter_errors(tmp_path, segmenter):
    src = str(tmp_path / "src")
    write_dataset(src, [4], size=32)
    with pytest.raises(FilterError, match="exactly one"):
        filter_shards(src, str(tmp_path / "a"), segmenter)
    with pytest.raises(FilterError, match="fewer than the 9"):
        filter_shards(src, str(tmp_path / "a"), segmenter, keep=9)
    with pytest.raises(FilterError, match="min_alignment"):
        filter_shards(src, str(tmp_path / "a"), segmenter, min_alignment=1.5)
    with pytest.raises(FilterError, match="not a complete generated set"):
        filter_shards(str(tmp_path / "missing"), str(tmp_path / "a"), segmenter, keep=1)


@pytest.mark.slow  # three job start-ups (~13 s): the filter, its errors and refusals run in-process by default
def test_filter_job_cli(tmp_path, segmenter):
    import subprocess

    from conftest import job

    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    write_dataset(src, [6], size=32)
    r = subprocess.run(
        job("filter_generated.py") + ["--shards", src, "--segmenter", str(segmenter), "--out", dst, "--keep", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "kept 4 of 6 pairs" in r.stdout and len(_members(dst)) == 4
    r = subprocess.run(
        job("filter_generated.py")
        + ["--shards", str(tmp_path / "nothing"), "--segmenter", str(segmenter), "--out", dst, "--keep", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "not a complete generated set" in r.stderr and "Traceback" not in r.stderr
    before = _tree(tmp_path / "src")
    r = subprocess.run(
        job("filter_generated.py")
        + ["--shards", src, "--segmenter", str(segmenter), "--out", src + "/.", "--keep", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "lies inside --shards" in r.stderr
    assert _tree(tmp_path / "src") == before


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("spell", ["same", "dot", "inside", "parent", "symlink"])
def test_filter_refuses_an_out_that_overlaps_its_source(tmp_path, segmenter, spell):
    """--out equal to the source (spelled as is, with /., or through a symlink), inside it or a
    parent of it: one FilterError, and nothing in the tree changes (an unrelated file beside it too)."""
    src = tmp_path / "x" / "shards"
    write_dataset(str(src), [4], size=32)
    (tmp_path / "x" / "notes.txt").write_text("unrelated")
    (tmp_path / "link").symlink_to(src)
    out = {
        "same": src,
        "dot": f"{src}/.",
        "inside": src / "filtered",
        "parent": tmp_path / "x",
        "symlink": tmp_path / "link",
    }[spell]
    before = _tree(tmp_path / "x")
    with pytest.raises(FilterError, match="lies inside --shards"):
        filter_shards(str(src), str(out), segmenter, keep=2)
    assert _tree(tmp_path / "x") == before


def test_filter_refuses_an_overlapping_prefix_on_s3(s3_bucket, segmenter):
    import fsspec

    src = f"{s3_bucket}/gen/v1"
    write_dataset(src, [4], size=32)
    fs = fsspec.filesystem("s3")
    before = sorted(fs.find(s3_bucket))
    for out in (src, f"{src}/", f"{s3_bucket}//gen/./v1", f"{src}/kept", f"{s3_bucket}/gen"):
        with pytest.raises(FilterError, match="lies inside --shards"):
            filter_shards(src, out, segmenter, keep=2)
    fs.invalidate_cache()
    assert sorted(fs.find(s3_bucket)) == before
    assert not overlaps(f"{s3_bucket}/gen/v1", f"{s3_bucket}/gen/v10")  # a sibling with a common prefix is not inside


def test_filter_refuses_an_out_another_run_is_writing_and_touches_nothing(tmp_path, segmenter):
    from dakter_scale.data.lease import Lease, LeaseError

    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    write_dataset(src, [4, 4], size=32)
    other = Lease(dst, "synthesis of 8 pairs (seed 3)", heartbeat=False).acquire()
    before = sorted(p.name for p in (tmp_path / "dst").iterdir())
    with pytest.raises(LeaseError, match="being written by another run: synthesis of 8 pairs"):
        filter_shards(src, dst, segmenter, keep=3)
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == before
    other.release()
    assert filter_shards(src, dst, segmenter, keep=3).count == 3
