"""The student's streaming input (data/stream.py) with real shards, real DataLoader workers and a
real S3 API server: the split across ranks x workers, the ratio, exact continuation, bad shards."""

from __future__ import annotations

import contextlib
import math
import signal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dakter_scale.data import stream
from dakter_scale.data.real import open_source, patch_dataset
from dakter_scale.data.stream import (
    BAD_SHARDS,
    GeneratedStream,
    MixedBatches,
    RealStream,
    StreamError,
    assign_shards,
    consumed,
    generated_count,
    stream_loader,
)

from shardgen import remove_shard_tar, truncate_shard, write_dataset

COUNTS = [7, 5, 6, 4, 8]  # unequal shards, 30 samples


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: a stream that blocks forever is a bug these tests must report."""

    def expired(*_):
        raise TimeoutError(f"no result within {seconds} s: the stream hangs")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen") / "shards"
    keys = write_dataset(str(root), COUNTS, size=32, confidences=[0.9, 0.5])
    return str(root), keys


def read_one_pass(url: str, rank: int, world: int, workers: int, **kw) -> tuple[list[dict], list[str]]:
    """Every item one rank reads in one pass through a real DataLoader; (samples, bad-shard notices)."""
    ds = GeneratedStream(url, rank, world, seed=3, shuffle_buffer=3, passes=1, **kw)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=stream._identity)
    items, notices = [], []
    with deadline(120):
        for item in loader:
            notices += item.get(BAD_SHARDS, [])
            if item["key"] is not None:
                items.append(item)
    return items, notices


# -- the split across ranks x workers ------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=12), st.integers(1, 16))
def test_assignment_reads_every_sample_once_and_feeds_every_slot(counts, slots):
    """Per pass: each (shard, index) goes to exactly one slot; a slot is empty only where
    check_slots refuses the layout (few shards smaller than the number of slots sharing them)."""
    owner: dict[tuple[int, int], int] = {}
    per_slot = [0] * slots
    for slot in range(slots):
        for a in assign_shards(len(counts), slots, slot):
            for index in range(counts[a.shard]):
                if index % a.stride == a.offset:
                    assert (a.shard, index) not in owner
                    owner[(a.shard, index)] = slot
                    per_slot[slot] += 1
    assert len(owner) == sum(counts)
    refused = len(counts) < slots and min(counts) < math.ceil(slots / len(counts))
    assert refused or min(per_slot) > 0


@pytest.mark.parametrize("counts", [COUNTS, [9, 8, 7]], ids=["5 shards > 4 slots", "3 shards < 4 slots"])
def test_two_ranks_two_workers_read_disjoint_sets_covering_the_dataset(tmp_path, counts):
    url = str(tmp_path / "shards")
    keys = write_dataset(url, counts, size=32)
    seen: list[str] = []
    slots_used = set()
    for rank in range(2):
        items, notices = read_one_pass(url, rank, 2, workers=2)
        assert notices == []
        seen += [it["key"] for it in items]
        slots_used |= {it["slot"] for it in items}
    assert len(seen) == len(set(seen)), "a sample was read twice within one pass"
    assert sorted(seen) == sorted(keys), "a sample was skipped"
    assert slots_used == {0, 1, 2, 3}, "a rank x worker slot got no data"


@pytest.mark.parametrize("max_samples", [1, 9, 13, 24, 100])
def test_max_samples_uses_the_first_pairs_in_key_order(tmp_path, max_samples):
    url = str(tmp_path / "shards")
    keys = write_dataset(url, [9, 8, 7], size=16)  # 24 pairs
    seen = []
    for rank in range(2):
        items, notices = read_one_pass(url, rank, 2, workers=0, max_samples=max_samples)
        assert notices == []
        seen += [it["key"] for it in items]
    assert sorted(seen) == sorted(keys)[: min(max_samples, len(keys))]


def test_too_few_samples_for_the_readers_is_refused_up_front(tmp_path):
    url = str(tmp_path / "shards")
    write_dataset(url, [2, 1], size=32)
    ds = GeneratedStream(url, 0, 2)
    ds.check_slots(1)  # 2 shards, 2 slots: fine
    with pytest.raises(StreamError, match=r"cannot feed 6 readers"):
        ds.check_slots(3)


def test_min_confidence_filters_on_the_manifest_statistic(shards_dir):
    url, keys = shards_dir
    items, _ = read_one_pass(url, 0, 1, workers=0, min_confidence=0.7)
    # write_dataset gives every other sample confidence 0.9, the rest 0.5.
    assert sorted(it["key"] for it in items) == sorted(keys[0::2])
    assert all(it["confidence"] >= 0.7 for it in items)


# -- the ratio -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.25, 1.0, 2.0, 7.0, 100.0])
@pytest.mark.parametrize("batch_size", [4, 16])
def test_generated_share_per_batch_matches_the_ratio(ratio, batch_size):
    """Stated tolerance: each batch within 1 / B of rho = R / (1 + R); the first n batches within 1 / (nB)."""
    rho = ratio / (1 + ratio)
    total = 0
    for i in range(500):
        n = generated_count(i, batch_size, ratio)
        assert abs(n / batch_size - rho) < 1 / batch_size
        total += n
        assert abs(total / ((i + 1) * batch_size) - rho) < 1 / ((i + 1) * batch_size)
        assert consumed(i + 1, batch_size, ratio) == ((i + 1) * batch_size - total, total)


def test_mixed_batches_from_real_streams_at_10000_percent(shards_dir):
    """Ratio 100 (10,000 %) from a real generated stream (2 workers) and real patches: the measured share."""
    url, _ = shards_dir
    source = open_source("synthetic:8?size=32&test=4")
    real = stream_loader(RealStream(patch_dataset(source, _data_cfg(), "train"), seed=1), 0)
    gen = stream_loader(GeneratedStream(url, seed=1, shuffle_buffer=4), 2)
    batches = MixedBatches(real, gen, 8, 100.0, source.num_classes)
    with deadline(120):
        shares = [float(next(batches)["generated"].float().mean()) for _ in range(20)]
    batches.close()
    rho = 100 / 101
    assert all(abs(s - rho) < 1 / 8 for s in shares)
    assert abs(sum(shares) / len(shares) - rho) < 1 / (20 * 8)


def _data_cfg():
    from dakter_scale.config import DataConfig

    return DataConfig(spec="synthetic:8?size=32&test=4", resolution=32)


# -- exact continuation --------------------------------------------------------------------------


def _mixed(url: str, workers: int, start_batch: int = 0, positions=None) -> MixedBatches:
    source = open_source("synthetic:8?size=32&test=4")
    real_used, gen_used = consumed(start_batch, 4, 1.5)
    real = stream_loader(
        RealStream(patch_dataset(source, _data_cfg(), "train", seed=2), seed=2, skip=real_used),
        workers,
        consumed=real_used,
    )
    gen = stream_loader(GeneratedStream(url, seed=2, shuffle_buffer=3, start=positions), workers, consumed=gen_used)
    return MixedBatches(real, gen, 4, 1.5, source.num_classes, start_batch=start_batch, positions=positions)


def test_resumed_streams_continue_exactly_with_workers(shards_dir):
    """Stop after 3 batches (9 generated samples consumed: an odd number, so the next one comes from
    worker 1), rebuild the streams from the recorded positions, and get the same batches, across a
    pass boundary (30 samples)."""
    url, _ = shards_dir
    with deadline(180):
        whole = _mixed(url, workers=2)
        reference = [next(whole)["keys"] for _ in range(16)]
        whole.close()
        first = _mixed(url, workers=2)
        head = [next(first)["keys"] for _ in range(3)]
        positions = dict(first.positions)
        first.close()
        resumed = _mixed(url, workers=2, start_batch=3, positions=positions)
        tail = [next(resumed)["keys"] for _ in range(13)]
        resumed.close()
    assert consumed(3, 4, 1.5)[1] % 2 == 1
    assert head + tail == reference


# -- bad shards --------------------------------------------------------------------------------------


@pytest.fixture
def damaged(tmp_path):
    url = str(tmp_path / "shards")
    keys = write_dataset(url, [4, 4, 4, 4], size=32)
    remove_shard_tar(url, 1)  # a missing object
    truncate_shard(url, 2, 0.5)  # a torn upload: the marker says 4, the tar holds less
    return url, keys


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_shards_are_skipped_counted_and_named_under_warn(damaged, workers):
    url, keys = damaged
    items, notices = read_one_pass(url, 0, 1, workers=workers, on_bad_shard="warn")
    got = {it["key"] for it in items}
    assert {k for k in keys if k.startswith(("000000", "000003"))} <= got
    assert not any(k.startswith("000001") for k in got)
    assert len([k for k in got if k.startswith("000002")]) < 4
    assert sorted(n.split(":")[0] for n in notices) == [
        f"shard {url}/shard-000001.tar",
        f"shard {url}/shard-000002.tar",
    ]


def test_a_bad_shard_stops_the_stream_naming_it_under_raise(damaged):
    url, _ = damaged
    with pytest.raises(StreamError, match=r"shard-00000[12]\.tar") as e:
        read_one_pass(url, 0, 1, workers=0, on_bad_shard="raise")
    # said once: the error raised inside the reader was wrapped again by its own handler
    assert str(e.value).count("student.on_bad_shard=raise") == 1 and "StreamError:" not in str(e.value)


def test_a_tar_cut_at_a_member_boundary_is_caught(tmp_path):
    """tarfile reads a tar that ends exactly between members as a valid, shorter tar. The marker's
    tar size refuses it before reading; with a marker that records the cut size as well, the
    stream's reader misses the end-of-archive block (and the marker's count would tell too)."""
    import io
    import json
    import tarfile

    url = str(tmp_path / "shards")
    write_dataset(url, [4, 4], size=32)
    path = tmp_path / "shards" / "shard-000001.tar"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    cut = members[6].offset  # sample 2's first member: samples 0 and 1 stay whole
    path.write_bytes(path.read_bytes()[:cut])
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
        assert len(tar.getmembers()) == 6
    items, notices = read_one_pass(url, 0, 1, workers=0)
    assert len(items) == 4 and notices == [f"shard {path}: the tar has {cut} bytes, its marker records 20480"]
    marker = tmp_path / "shards" / "shard-000001.json"
    marker.write_text(json.dumps(dict(json.loads(marker.read_text()), tar_bytes=cut)))
    items, notices = read_one_pass(url, 0, 1, workers=0)
    assert len(items) == 6 and len(notices) == 1 and "tar ends without its end-of-archive block" in notices[0]


def test_a_shard_with_fewer_samples_than_its_marker_records_is_bad(tmp_path):
    import json

    url = str(tmp_path / "shards")
    write_dataset(url, [3, 3], size=32)
    marker = tmp_path / "shards" / "shard-000000.json"
    marker.write_text(json.dumps(dict(json.loads(marker.read_text()), count=5)))
    items, notices = read_one_pass(url, 0, 1, workers=0)
    assert len(items) == 6 and notices == [f"shard {url}/shard-000000.tar: holds 3 samples, its marker records 5"]


# -- the tar reader and the class argmax ----------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a.png", "json", "soft.png", "x.cls"]), st.binary(max_size=1500)),
        min_size=1,
        max_size=12,
    ),
    st.booleans(),
)
def test_tar_reader_groups_members_as_webdataset_does(members, long_names):
    """Against the stock webdataset reader, on tars written by the schema's own writer; long
    (GNU / PAX) names too."""
    import io

    from webdataset.tariterators import group_by_keys, tar_file_expander  # the reference: stock webdataset

    from dakter_scale.data.shardset import codec as shards

    prefix = "d" * 120 + "/" if long_names else ""
    samples = [(f"{prefix}{i // 2:06d}-{i:06d}", dict([m])) for i, m in enumerate(members)]
    buf = io.BytesIO()
    if long_names:
        import tarfile

        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for key, files in samples:
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    else:
        shards.write_tar(buf, samples)
    ours = [{k: v for k, v in s.items() if k != "__url__"} for s in shards.read_tar(io.BytesIO(buf.getvalue()), "u")]
    stock = [
        {k: v for k, v in s.items() if k != "__url__"}
        for s in group_by_keys(tar_file_expander([{"url": "u", "stream": io.BytesIO(buf.getvalue())}]))
    ]
    assert ours == stock


def test_tar_reader_refuses_a_corrupt_header():
    import io

    from dakter_scale.data.shardset import codec as shards

    buf = io.BytesIO()
    shards.write_tar(buf, [("000000-000000", {"json": b"{}"})])
    data = bytearray(buf.getvalue())
    data[10] ^= 0x20  # a bit flip in the first member's name
    with pytest.raises(shards.ShardError, match="checksum"):
        list(shards.read_tar(io.BytesIO(bytes(data)), "u"))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_class_argmax_equals_numpy_argmax_including_ties(k, h, w, seed):
    import numpy as np

    from dakter_scale.data.stream import class_argmax

    q = np.random.default_rng(seed).integers(0, 3, size=(k, h, w)).astype(np.float32)  # many ties
    assert np.array_equal(class_argmax(q), q.argmax(axis=0))


def test_a_bad_shard_in_a_worker_stops_the_trainer_with_its_own_one_line_message(damaged):
    url, _ = damaged
    gen = stream_loader(GeneratedStream(url, on_bad_shard="raise"), 2)
    with deadline(60), pytest.raises(StreamError) as caught:
        for _ in range(20):
            next(gen)
    gen.close()
    message = str(caught.value)
    assert message.startswith(f"shard {url}/shard-00000") and "Caught" not in message and "\n" not in message


@pytest.mark.parametrize("workers", [0, 2])
def test_a_reader_whose_shards_are_all_bad_fails_instead_of_spinning(tmp_path, workers):
    url = str(tmp_path / "shards")
    write_dataset(url, [3], size=32)
    remove_shard_tar(url, 0)
    gen = stream_loader(GeneratedStream(url), workers)
    with deadline(60), pytest.raises(StreamError, match=r"^.*found no usable sample in 8 passes in a row"):
        next(gen)
    gen.close()


# -- object storage -----------------------------------------------------------------------------------


def test_streams_shards_from_s3_with_workers_and_a_missing_object(s3_bucket):
    url = f"{s3_bucket}/gen"
    keys = write_dataset(url, [5, 4, 6], size=32)
    items, notices = read_one_pass(url, 0, 1, workers=2)
    assert sorted(it["key"] for it in items) == sorted(keys) and notices == []
    x, q = items[0]["x"], items[0]["q"]
    assert x.shape == (1, 32, 32) and q.shape == (5, 32, 32) and torch.allclose(q.sum(0), torch.ones(32, 32))

    remove_shard_tar(url, 1)
    items, notices = read_one_pass(url, 0, 1, workers=2)
    assert (
        len(items) == 11
        and len(notices) == 1
        and "shard-000001.tar" in notices[0]
        and notices[0].startswith(f"shard {url}/")
    )


def test_one_bad_shard_of_two_never_ends_an_endless_reader(tmp_path):
    """Two shards, one corrupt, two ranks: each pass a reader draws one shard, the bad one half the time,
    so 8 empty passes in a row come by chance (after about 150 items here, before it was fixed). The
    reader goes on while the other shard last gave it samples."""
    import logging

    url = str(tmp_path / "shards")
    write_dataset(url, [4, 4], size=16)
    path = tmp_path / "shards" / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[:100] = b"\x01" * 100  # the same size: the marker's size check passes, reading fails
    path.write_bytes(bytes(data))
    logging.disable(logging.WARNING)
    try:
        for rank in range(2):
            stream = iter(GeneratedStream(url, rank=rank, world=2, seed=0, shuffle_buffer=2, on_bad_shard="warn"))
            with deadline(60):
                assert sum(1 for _ in zip(range(1500), stream)) == 1500
    finally:
        logging.disable(logging.NOTSET)


def _undecodable_dataset(url: str, counts: list[int], size: int = 16) -> None:
    """Shards whose samples pass read_checked (record, sizes, PNG headers) but fail decoding: the soft
    labels' levels sum to 0, not 255, at every pixel."""
    import numpy as np

    from dakter_scale.data import shardset
    from dakter_scale.data.osd import CLASSES
    from dakter_scale.data.shardset import DatasetInfo, ShardSet
    from dakter_scale.data.shardset.codec import encode_png
    from dakter_scale.data.shardset.records import COMPLETE
    from dakter_scale.data.synthetic_sar import simulate_scene

    from shardgen import pair_record, soft_label

    out = ShardSet(url)
    out.fs.makedirs(out.root, exist_ok=True)
    for shard, count in enumerate(counts):
        rows, samples = [], []
        for index in range(count):
            image, mask = simulate_scene(shard * 100 + index, size, size)
            key = shardset.sample_key(shard, index)
            row, (key, sample) = pair_record(key, shard, index, index, image, soft_label(mask, len(CLASSES), 0.9))
            sample[shardset.SOFT] = encode_png(np.zeros((len(CLASSES) * size, size), np.uint8))
            rows.append(row)
            samples.append((key, sample))
        out.write_shard(shard, samples, rows, "test-0")
    out.write_info(
        DatasetInfo(classes=list(CLASSES), resolution=size, count=sum(counts), status=COMPLETE, fingerprint="test-0")
    )


def test_a_set_whose_every_sample_fails_decoding_stops_instead_of_spinning(tmp_path):
    """read_checked yields these samples (it does not inflate the PNGs); only decoding refuses them. The
    reader counted them as read and their shards as usable, so it looped forever without an item."""
    import logging

    url = str(tmp_path / "shards")
    _undecodable_dataset(url, [3, 2])
    logging.disable(logging.WARNING)
    try:
        with deadline(60), pytest.raises(StreamError, match=r"found no usable sample in 8 passes in a row"):
            next(iter(GeneratedStream(url, shuffle_buffer=2, on_bad_shard="warn")))
    finally:
        logging.disable(logging.NOTSET)


def test_a_failed_read_names_the_shard_without_the_credentials_in_its_error(tmp_path, monkeypatch):
    from dakter_scale.data.shardset import ShardSet

    url = str(tmp_path / "shards")
    write_dataset(url, [3], size=16)

    def refused(self, info):
        raise OSError("GET https://AKIAKEY:s3cr3t/pass@store.example/b/shard-000000.tar: 403\nrequest id ...")

    monkeypatch.setattr(ShardSet, "_open_tar", refused)
    _, notices = read_one_pass(url, 0, 1, workers=0, on_bad_shard="warn")
    assert len(notices) == 1 and "s3cr3t" not in notices[0] and "AKIAKEY" not in notices[0]
    assert "store.example" in notices[0] and "\n" not in notices[0]


def test_bad_shard_reasons_are_capped_and_counted_per_shard():
    """A set with many bad samples: the checkpoint keeps the first MAX_BAD_REASONS reasons and a count per
    shard, not every reason (state.json and student.json stay small); a reason met again counts once."""
    from dakter_scale.data.stream import MAX_BAD_REASONS

    reasons = [f"shard /d/shard-{i % 3:06d}.tar: sample {i:06d}: levels sum to 0" for i in range(90)]
    real = iter(
        lambda: {
            "key": "r",
            "x": torch.zeros(1, 4, 4),
            "mask": torch.zeros(4, 4, dtype=torch.long),
            "q": None,
            "generated": False,
        },
        None,
    )

    def generated():
        for reason in reasons + reasons[:10]:  # the next pass meets the first ten again
            yield {"key": None, BAD_SHARDS: [reason]}
        while True:
            yield {
                "key": "g",
                "slot": 0,
                "pass": 1,
                "index": 1,
                "x": torch.zeros(1, 4, 4),
                "mask": torch.zeros(4, 4, dtype=torch.long),
                "q": None,
                "generated": True,
            }

    batches = MixedBatches(real, generated(), 4, 1.0, 5)
    next(batches)
    assert len(batches.bad_shards) == MAX_BAD_REASONS and batches.bad_shards <= set(reasons)
    assert batches.bad_counts == {"shard-000000": 30, "shard-000001": 30, "shard-000002": 30}
    resumed = MixedBatches(real, generated(), 4, 1.0, 5, bad_shards=set(reasons), bad_counts=batches.bad_counts)
    assert len(resumed.bad_shards) == MAX_BAD_REASONS


def test_generated_pairs_given_at_ratio_0_are_not_read_and_the_log_says_so(caplog):
    """--synthetic without --ratio (student.ratio 0) trains on real data only: a warning, once (rank 0),
    naming the set without its credentials."""
    import logging

    from dakter_scale.config import load_config
    from dakter_scale.student.train import generated_stream

    cfg = load_config(None, ["student.ratio=0"])
    url = "s3://user:secret@bucket/gen"
    with caplog.at_level(logging.WARNING, logger="dakter_scale"):
        assert generated_stream(cfg, url, ["sea", "oil"], 1, 2) == (None, None)
        assert not caplog.records
        assert generated_stream(cfg, url, ["sea", "oil"], 0, 2) == (None, None)
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING
    assert "are not read: student.ratio is 0" in caplog.text and "give --ratio" in caplog.text
    assert "secret" not in caplog.text
