"""A shard set written by synthesis, read by the stock tools (data/interop.py): webdataset's WebDataset and
Hugging Face datasets' webdataset builder, locally and on a real S3 API server (moto on loopback), give
the same images and probabilities as the toolkit's own reader; unfinished shards are never seen, and a
tar that disagrees with its marker is refused before anything is read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import webdataset as wds
from test_synth import SAMPLING, cfg

from dakter_scale.data import interop, shardset, storage, webdataset_pipeline
from dakter_scale.data.real import normalise
from dakter_scale.data.shardset import ShardError, ShardSet, decode_sample
from dakter_scale.synth import run as synth_run


@pytest.fixture
def hf_offline(monkeypatch):
    """datasets with no network: any Hub or remote access raises (OfflineModeIsEnabled)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def toolkit(url: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """key -> (image uint8, q float32) through the toolkit's reader (ShardSet.samples: every check)."""
    out = {}
    for sample in ShardSet(url).samples():
        image, q, _ = decode_sample(sample)
        out[sample["__key__"]] = (image, q)
    return out


def assert_same(reference: dict, decoded: list[dict], labels: str = "soft") -> None:
    assert sorted(d["__key__"] for d in decoded) == sorted(reference)
    for d in decoded:
        image, q = reference[d["__key__"]]
        assert torch.equal(d["image"], normalise(image)[None])  # the same bytes, the same decoder: exact
        if labels == "soft":
            assert d["soft"].dtype == torch.float32 and d["soft"].shape == q.shape
            assert torch.equal(d["soft"], torch.from_numpy(q))
            assert torch.allclose(d["soft"].sum(0), torch.ones(q.shape[1:]), atol=1e-5)
        else:
            assert torch.equal(d["mask"], torch.from_numpy(np.argmax(q, axis=0)))
        assert d["json"]["key"] == d["__key__"]


@pytest.fixture(scope="module")
def local_set(model, tmp_path_factory):
    url = str(tmp_path_factory.mktemp("interop") / "set")
    summary = synth_run.synthesize(model, url, cfg(n=10), SAMPLING, progress=False, use_ray=False)
    assert summary.ok and summary.pairs_written == 10
    return url


def test_webdataset_pipeline_reads_what_the_toolkit_reads(local_set):
    reference = toolkit(local_set)
    assert len(reference) == 10
    pipeline = webdataset_pipeline(local_set, labels="soft")
    assert isinstance(pipeline, wds.WebDataset)
    assert_same(reference, list(pipeline))
    assert_same(reference, list(webdataset_pipeline(local_set, labels="hard")), labels="hard")
    # a stock pipeline: batching works as on any WebDataset
    batch = next(iter(webdataset_pipeline(local_set).batched(4, collation_fn=None)))
    assert len(batch) == 4


def test_hf_datasets_recipe_reads_what_the_toolkit_reads(local_set, tmp_path, hf_offline):
    from datasets import Image, load_dataset

    reference = toolkit(local_set)
    # the README's recipe, step by step
    ds = load_dataset(
        "webdataset",
        data_files={"train": interop.finished_tars(local_set)},
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    ds = ds.cast_column("image.png", Image(decode=False)).cast_column("soft.png", Image(decode=False))
    ds = ds.with_transform(interop.hf_transform(local_set, labels="soft"))
    assert len(ds) == 10
    assert_same(reference, [ds[i] for i in range(len(ds))])
    streamed = interop.hf_dataset(local_set, labels="hard", streaming=True)
    assert_same(reference, list(streamed), labels="hard")


def test_unfinished_shards_are_never_seen(local_set, tmp_path):
    """A shard without its done marker (still being written, or its writer died) is not listed."""
    fs, root = storage.url_to_fs(local_set)
    copy = tmp_path / "copy"
    fs.copy(root, str(copy), recursive=True)
    (copy / shardset.shard_name(2, "json")).unlink()  # shard 2: tar and manifest there, no marker
    keys = [s["__key__"] for s in webdataset_pipeline(str(copy))]
    assert len(keys) == 8 and not any(k.startswith("000002-") for k in keys)
    assert not any("shard-000002" in u for u in interop.finished_tars(str(copy)))


def test_a_tar_that_disagrees_with_its_marker_is_refused_before_reading(local_set, tmp_path):
    fs, root = storage.url_to_fs(local_set)
    copy = tmp_path / "copy"
    fs.copy(root, str(copy), recursive=True)
    tar = copy / shardset.shard_name(1)
    data = bytearray(tar.read_bytes())
    tar.write_bytes(bytes(data[: len(data) // 2]))  # a torn upload: a shorter valid-looking tar
    with pytest.raises(ShardError, match="shard-000001.tar: marker present but the tar has"):
        webdataset_pipeline(str(copy))
    data[-2000] ^= 0xFF  # same size, other bytes: only the hash sees it
    tar.write_bytes(bytes(data))
    webdataset_pipeline(str(copy))  # verify="size" passes it
    with pytest.raises(ShardError, match="sha256 differs"):
        webdataset_pipeline(str(copy), verify="sha256")
    with pytest.raises(ShardError, match="no finished shard"):
        webdataset_pipeline(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="labels must be soft or hard"):
        webdataset_pipeline(local_set, labels="argmax")


def test_a_tar_cut_between_members_after_the_check_is_caught_by_the_checked_pipeline_only(local_set, tmp_path):
    """What README says of the stock readers, shown: a tar cut short after the pipeline was built (a
    replaced object), at a member boundary, reads as a valid shorter archive through webdataset's tar
    reader; checked_pipeline reads it with the toolkit's reader and raises, naming the shard."""
    import tarfile

    fs, root = storage.url_to_fs(local_set)
    copy = tmp_path / "copy"
    fs.copy(root, str(copy), recursive=True)
    stock, checked = webdataset_pipeline(str(copy)), interop.checked_pipeline(str(copy))
    assert_same(toolkit(str(copy)), list(checked))
    tar = copy / shardset.shard_name(1)
    with tarfile.open(tar) as t:
        cut = [m.offset for m in t.getmembers()][3 * 2]  # the header of sample 2's first member: samples 0 and 1 whole
    tar.write_bytes(tar.read_bytes()[:cut])
    keys = [s["__key__"] for s in stock]
    assert len(keys) == 8 and "000001-000002" not in keys  # two pairs lost without a word
    with pytest.raises(ShardError, match="shard-000001.tar: the tar has .* bytes, its marker records"):
        list(checked)


def test_s3_webdataset_pipeline_and_hf_recipe(model, s3_bucket, tmp_path, monkeypatch):
    """datasets' offline mode refuses every remote URL, s3:// included: it is lifted here, where the only
    endpoint is the moto server on loopback (AWS_ENDPOINT_URL)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    url = f"{s3_bucket}/set"
    assert synth_run.synthesize(model, url, cfg(n=10), SAMPLING, progress=False, use_ray=False).ok
    reference = toolkit(url)
    assert len(reference) == 10
    urls = interop.finished_tars(url)
    assert all(u.startswith("s3://") for u in urls)
    assert_same(reference, list(webdataset_pipeline(url, labels="soft", verify="sha256")))
    assert_same(reference, list(interop.checked_pipeline(url, labels="hard")), labels="hard")
    ds = interop.hf_dataset(url, labels="soft", cache_dir=str(tmp_path / "hf"))
    assert_same(reference, [ds[i] for i in range(len(ds))])
    # the set's card is beside its shards on the bucket too, and lists the same finished shards
    from huggingface_hub import DatasetCard

    fs, root = storage.url_to_fs(url)
    card = DatasetCard(fs.cat_file(storage.join(root, "README.md")).decode())
    assert card.data.to_dict()["configs"][0]["data_files"][0]["path"] == [u.rsplit("/", 1)[1] for u in urls]


def test_a_decoded_png_column_is_refused_in_one_line_naming_it(tmp_path):
    """hf_transform over a datasets column Pillow already decoded: one line naming the sample and the column."""
    from PIL import Image

    from shardgen import write_dataset

    url = str(tmp_path / "set")
    write_dataset(url, [1])
    (sample,) = ShardSet(url).samples()
    transform = interop.hf_transform(url)
    row = {"__key__": [sample["__key__"]], "image.png": [sample["image.png"]], "json": [sample["json"]]}
    assert transform(dict(row, **{"soft.png": [sample["soft.png"]]}))["__key__"] == [sample["__key__"]]
    with pytest.raises(TypeError) as e:
        transform(dict(row, **{"soft.png": [Image.new("L", (32, 160))]}))
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"sample {sample['__key__']}: column 'soft.png'")
    assert "Image(decode=False)" in message
