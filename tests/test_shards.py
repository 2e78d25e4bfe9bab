"""The shard codec and schema: sample round trip, quantisation, deterministic tars, the stock webdataset reader."""

import io
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from dakter_scale.data import shardset, storage
from dakter_scale.data.shardset import ShardSet
from dakter_scale.data.shardset import codec as shards


def _pair(seed, k=5, h=12, w=10):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w), dtype=np.uint8)
    logits = torch.from_numpy(rng.normal(size=(k, h, w)) * 3)
    return image, torch.softmax(logits, dim=0).float()


def _meta(key, seed, k=5):
    """The JSON record fields every writer gives a pair (shardset.RECORD_FIELDS, less key and num_classes)."""
    shard, index = shardset.parse_key(key)
    return {
        "shard": shard,
        "index": index,
        "seed": seed,
        "class_fractions": [1 / k] * k,
        "mean_entropy": 0.5,
        "mean_confidence": 0.6,
    }


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 7), sharp=st.floats(0.1, 20))
def test_quantisation_sums_to_one_and_error_below_one_level(seed, k, sharp):
    rng = np.random.default_rng(seed)
    q = torch.softmax(torch.from_numpy(rng.normal(size=(k, 6, 5)) * sharp), dim=0)
    levels = shards.quantise(q)
    assert levels.dtype == np.uint8
    assert (levels.astype(int).sum(axis=0) == 255).all()
    back = shards.dequantise(levels)
    assert np.allclose(back.sum(axis=0), 1.0, atol=1e-6)
    assert np.abs(back - q.numpy()).max() < 1 / 255


def test_sample_round_trip():
    image, q = _pair(0)
    members = shardset.encode_sample("000001-000002", image, q, _meta("000001-000002", 7))
    assert set(members) == {"image.png", "soft.png", "json"}
    got_image, got_q, meta = shardset.decode_sample(dict(members, __key__="000001-000002"))
    assert np.array_equal(got_image, image)
    assert np.abs(got_q - q.numpy()).max() < 1 / 255
    assert meta["seed"] == 7 and meta["num_classes"] == 5 and meta["key"] == "000001-000002"


def test_encode_refuses_malformed_samples():
    image, q = _pair(1)
    with pytest.raises(shardset.ShardError, match="key"):
        shardset.encode_sample("bad.key", image, q, {})
    with pytest.raises(shardset.ShardError, match="000001-000001: image must be uint8"):
        shardset.encode_sample("000001-000001", image.astype(np.float32), q, {})
    with pytest.raises(shardset.ShardError, match="differ in size"):
        shardset.encode_sample("000001-000001", image[:5], q, {})
    with pytest.raises(shardset.ShardError, match="missing member 'soft.png'"):
        members = shardset.encode_sample("000001-000001", image, q, _meta("000001-000001", 0))
        del members["soft.png"]
        shardset.decode_sample(dict(members, __key__="000001-000001"))


def _write(path, n, seed=0):
    samples = []
    for i in range(n):
        image, q = _pair(seed + i)
        key = shardset.sample_key(3, i)
        samples.append((key, shardset.encode_sample(key, image, q, _meta(key, seed + i))))
    with open(path, "wb") as f:
        return shards.write_tar(f, samples)


def test_tars_are_byte_identical_and_sorted(tmp_path):
    n1, sha1 = _write(tmp_path / "a.tar", 4)
    n2, sha2 = _write(tmp_path / "b.tar", 4)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert sha1 == sha2 and n1 == n2 == (tmp_path / "a.tar").stat().st_size
    with tarfile.open(tmp_path / "a.tar") as tar:
        names = tar.getnames()
        assert names == sorted(names)
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())


def test_stock_webdataset_reads_a_project_shard(tmp_path):
    _write(tmp_path / "shard-000003.tar", 5)
    ds = wds.WebDataset(str(tmp_path / "shard-000003.tar"), shardshuffle=False).decode("l")
    samples = list(ds)
    assert [s["__key__"] for s in samples] == [shardset.sample_key(3, i) for i in range(5)]
    for i, s in enumerate(samples):
        image, q = _pair(i)
        assert np.array_equal(
            (s["image.png"] * 255).round().astype(np.uint8), image
        )  # "l" decodes to float gray in [0, 1]
        stacked = (s["soft.png"] * 255).round()
        assert stacked.shape == (5 * 12, 10)
        assert np.abs(stacked.reshape(5, 12, 10) / 255 - q.numpy()).max() < 1 / 255
        assert s["json"]["seed"] == i


def test_manifest_and_done_listing(tmp_path):
    fs, root = storage.url_to_fs(str(tmp_path))
    rows = [
        {
            "key": shardset.sample_key(0, i),
            "shard": 0,
            "index": i,
            "seed": 2**62 + i,
            "class_fractions": [0.5, 0.5],
            "mean_entropy": 0.1,
            "mean_confidence": 0.9,
        }
        for i in range(3)
    ]
    ShardSet(str(tmp_path)).write_parquet("shard-000000.parquet", shardset.manifest_table(rows))
    size, sha = _write(tmp_path / "shard-000000.tar", 3)
    _write(tmp_path / "shard-000001.tar", 3)  # no marker: not done, ignored
    assert ShardSet(str(tmp_path)).done() == []
    storage.write_json(fs, f"{root}/shard-000000.json", {"shard": 0, "count": 3, "tar_bytes": size, "sha256": sha})
    done = ShardSet(str(tmp_path)).done()
    assert [d.shard for d in done] == [0] and done[0].count == 3
    table = ShardSet(str(tmp_path)).manifest()
    assert table.num_rows == 3 and table.column("seed").to_pylist()[2] == 2**62 + 2
    assert pq.read_table(tmp_path / "shard-000000.parquet").schema.names == [
        "key",
        "shard",
        "index",
        "seed",
        "class_fractions",
        "mean_entropy",
        "mean_confidence",
    ]


def test_open_atomic_leaves_nothing_on_error(tmp_path):
    fs, root = storage.url_to_fs(str(tmp_path))
    with pytest.raises(RuntimeError):
        with storage.open_atomic(fs, f"{root}/x.tar") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_check_writable(tmp_path):
    storage.check_writable(str(tmp_path / "new"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        storage.check_writable(str(tmp_path / "file" / "sub"))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(1, 40), w=st.integers(1, 40), smooth=st.booleans())
def test_png_writer_is_a_real_png_and_the_fast_reader_matches_pillow(seed, h, w, smooth):
    from PIL import Image

    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if smooth:
        a = np.repeat(a[:, :1], w, axis=1)
    data = shards.encode_png(a)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), a)  # any PNG reader
    assert np.array_equal(shards.decode_png(data), a)  # the fast path
    assert shards.encode_png(a) == data  # deterministic
    assert shards.png_shape(data) == (h, w)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=True)  # adaptive filters: not the shard format's PNG
    if np.asarray(Image.open(io.BytesIO(buf.getvalue()))).shape == (h, w) and h > 1:
        try:
            assert np.array_equal(shards.decode_png(buf.getvalue()), a)  # Pillow chose filter None for every row
        except shards.ShardError as e:
            assert "filter other than None" in str(e) or "inflate" in str(e)


def test_corrupt_png_member_is_a_shard_error():
    image, q = _pair(2)
    members = shardset.encode_sample("000000-000001", image, q, _meta("000000-000001", 0))
    members["image.png"] = members["image.png"][:40] + b"garbage" + members["image.png"][47:]
    with pytest.raises(shardset.SampleError, match="sample 000000-000001: PNG holds no pixel data"):
        shardset.decode_sample(dict(members, __key__="000000-000001"))
