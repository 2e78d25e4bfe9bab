"""The shard set (data/shardset.py): sets written by the previous code read unchanged, the dataset.json
schema, the marker pattern, a shard read back with its checks, and derive (resumable per shard).

tests/fixtures/shardset-v1 is a set written by jobs/synthesize.py before the shard set had an owner
(3 pairs in shards of 2, 32 px, seed 7); tests/fixtures/filtered-v1 is what jobs/filter_generated.py
of that code made of it (--keep 2). Both are the old code's bytes, committed as they were written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dakter_scale.data import shardset
from dakter_scale.data.shardset import DatasetInfo, ShardError, ShardSet
from dakter_scale.data.shardset.health import marker_stats
from dakter_scale.data.shardset.records import COMPLETE, MARKER_RE
from dakter_scale.data.stream import GeneratedStream

from shardgen import write_dataset

FIXTURES = Path(__file__).parent / "fixtures"
OLD, OLD_FILTERED = FIXTURES / "shardset-v1", FIXTURES / "filtered-v1"


def test_a_set_written_by_the_previous_code_reads_unchanged():
    old = ShardSet(str(OLD))
    raw = json.loads((OLD / "dataset.json").read_text())
    info = old.info()
    assert info.to_json() == raw and info.extra == {}  # every key known, written back as it was
    assert info.complete and info.count == 3 and info.samples_per_shard == 2 and info.classes == raw["classes"]
    done = old.done()
    assert [(d.shard, d.count) for d in done] == [(0, 2), (1, 1)]
    listing = old.listing()
    assert [old.check(d, listing, info.fingerprint, verify="sha256") for d in done] == [None, None]
    stats = marker_stats({d.shard: d.marker for d in done}, len(info.classes))
    assert stats == info.generated_stats  # the same sums, the same order: exactly
    samples = list(old.samples())
    assert [s["__key__"] for s in samples] == ["000000-000000", "000000-000001", "000001-000000"]
    for sample, row in zip(samples, old.manifest().to_pylist()):
        image, q, meta = shardset.decode_sample(sample)
        assert image.shape == (32, 32) and q.shape == (5, 32, 32) and np.allclose(q.sum(axis=0), 1, atol=1e-6)
        assert meta["seed"] == row["seed"] and meta["key"] == row["key"]
    assert sum(1 for _ in GeneratedStream(str(OLD), shuffle_buffer=1, passes=1)) == 3


def test_an_old_filtered_header_and_unknown_keys_round_trip():
    raw = json.loads((OLD_FILTERED / "dataset.json").read_text())
    info = DatasetInfo.from_json(raw)
    assert info.to_json() == raw and info.filter["kept"] == 2
    relabelled = dict(raw, status="relabelling", relabel={"fingerprint": "abc"})  # a key this version does not know
    info = DatasetInfo.from_json(relabelled)
    assert info.extra == {"relabel": {"fingerprint": "abc"}} and info.to_json() == relabelled
    minimal = {"classes": ["sea", "oil"], "count": 4, "status": "complete"}  # no format, no plan: read as it is
    assert DatasetInfo.from_json(minimal).to_json() == minimal


def test_dataset_json_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(ShardError, match=r"x\.json: shard format 'dakter-shards/2' is not 'dakter-shards/1'"):
        DatasetInfo.from_json({"format": "dakter-shards/2"}, "x.json")
    with pytest.raises(ShardError, match="x.json: count must be int, got '7'"):
        DatasetInfo.from_json({"count": "7"}, "x.json")
    with pytest.raises(ShardError, match="not a JSON object"):
        DatasetInfo.from_json([], "x.json")
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ShardError, match=f"{tmp_path}/dataset.json: not valid JSON"):
        ShardSet(str(tmp_path)).info()
    assert ShardSet(str(tmp_path / "missing")).info() is None


def test_marker_pattern_is_anchored_and_names_round_trip(tmp_path):
    assert MARKER_RE.match(shardset.shard_name(12, "json")).group(1) == "000012"
    assert MARKER_RE.match(shardset.shard_name(1234567, "json")).group(1) == "1234567"
    for name in (
        "xshard-000001.json",
        "shard-000001.json.tmp-0123456789ab",
        "shard-00001.json",
        "shard-000001.tar",
        "old/shard-000001.json",
    ):
        assert not MARKER_RE.match(name), name
    write_dataset(str(tmp_path), [2, 2])
    (tmp_path / "xshard-000005.json").write_text("{}")  # not a marker: ignored, never read
    assert [d.shard for d in ShardSet(str(tmp_path)).done()] == [0, 1]
    (tmp_path / "shard-000001.json").write_text("{broken")
    with pytest.raises(ShardError, match="shard-000001.json: marker is not valid JSON"):
        ShardSet(str(tmp_path)).done()


def test_reading_a_shard_checks_members_and_count_and_names_it(tmp_path):
    url = str(tmp_path)
    write_dataset(url, [3])
    info = ShardSet(url).done()[0]
    short = shardset.ShardInfo(info.shard, info.tar, 4, info.marker)
    got = []
    with pytest.raises(ShardError, match=rf"^shard {info.tar}: holds 3 samples, its marker records 4$"):
        got.extend(ShardSet(url).read(short))
    assert len(got) == 3  # the samples come first, the shard's error last


def _alignments(url: Path) -> dict[str, float]:
    """source key -> alignment of the pairs a filtered set holds."""
    return {r["source_key"]: r["alignment"] for r in (shardset.read_record(s) for s in ShardSet(str(url)).samples())}


def test_derive_writes_the_bytes_the_previous_filter_wrote(tmp_path):
    """The old filter's selection, written again through derive: the same tar, manifest and marker."""
    alignment = _alignments(OLD_FILTERED)
    fp = json.loads((OLD_FILTERED / "dataset.json").read_text())["fingerprint"]
    markers = ShardSet(str(OLD)).derive(
        str(tmp_path / "dst"),
        lambda key, record: {"source_key": key, "alignment": alignment[key]},
        fp,
        2,
        keys=sorted(alignment),
    )
    assert list(markers) == [0]
    for name in ("shard-000000.tar", "shard-000000.parquet", "shard-000000.json"):
        assert (tmp_path / "dst" / name).read_bytes() == (OLD_FILTERED / name).read_bytes(), name
    assert (
        ShardSet(str(tmp_path / "dst")).info().status == shardset.IN_PROGRESS
    )  # the caller writes the finished header


def test_derive_resumes_per_shard_and_replaces_another_set(tmp_path):
    src, dst = str(tmp_path / "src"), tmp_path / "dst"
    write_dataset(src, [3, 3, 2])
    keys = [
        k
        for i, k in enumerate(shardset.sample_key(s, j) for s, n in enumerate([3, 3, 2]) for j in range(n))
        if i % 4 != 1
    ]
    calls = []

    def transform(key, record):
        calls.append(key)
        return {"source_key": key}

    markers = ShardSet(src).derive(str(dst), transform, "fp-a", 2, keys=keys)
    assert sorted(markers) == [0, 1, 2] and [m["count"] for m in markers.values()] == [2, 2, 2] and calls == keys
    records = [shardset.read_record(s) for s in ShardSet(str(dst)).samples()]
    assert [r["source_key"] for r in records] == keys and [r["key"] for r in records] == [
        shardset.sample_key(s, i) for s in range(3) for i in range(2)
    ]
    before = {p.name: p.read_bytes() for p in dst.iterdir()}
    mtimes = {p.name: p.stat().st_mtime_ns for p in dst.iterdir() if p.name.startswith("shard-")}

    (dst / "shard-000001.json").unlink()  # an interrupted run: shard 1 never finished
    calls.clear()
    ShardSet(src).derive(str(dst), transform, "fp-a", 2, keys=keys)
    assert calls == keys[2:4]  # only shard 1's pairs again
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
    for name in ("shard-000000.tar", "shard-000002.tar"):
        assert (dst / name).stat().st_mtime_ns == mtimes[name]

    calls.clear()
    ShardSet(src).derive(str(dst), transform, "fp-b", 4, keys=keys[:3])  # another derivation: starts over
    assert calls == keys[:3] and sorted(p.name for p in dst.iterdir()) == [
        "dataset.json",
        "shard-000000.json",
        "shard-000000.parquet",
        "shard-000000.tar",
    ]
    with pytest.raises(ShardError, match="shard 9 is not finished"):
        ShardSet(src).derive(str(tmp_path / "other"), transform, "fp-c", 2, keys=["000000-000000", "000009-000000"])
    with pytest.raises(ShardError, match="holds no pair 000000-000007"):
        ShardSet(src).derive(str(tmp_path / "other"), transform, "fp-c", 2, keys=["000000-000000", "000000-000007"])


def test_a_complete_header_is_written_through_the_schema(tmp_path):
    shutil.copytree(OLD, tmp_path / "copy")
    copy = ShardSet(str(tmp_path / "copy"))
    info = copy.info()
    copy.write_info(info.replace(status=COMPLETE))
    assert (tmp_path / "copy" / "dataset.json").read_bytes() == (OLD / "dataset.json").read_bytes()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_side_files_live_beside_the_shards_at_any_url(where, tmp_path, request):
    """write_side / read_side on a local folder and on S3 (moto); the set's own names are refused."""
    url = str(tmp_path / "set") if where == "local" else request.getfixturevalue("s3_bucket") + "/set"
    write_dataset(url, [2])
    out = ShardSet(url)
    assert out.read_side("throughput.json") is None
    out.write_side("throughput.json", b'{"pairs_per_second": 2.5}\n')
    assert json.loads(out.read_side("throughput.json")) == {"pairs_per_second": 2.5}
    assert [i.shard for i in out.done()] == [0]  # a side file is no shard
    for name in ("dataset.json", "shard-000000.json", "lock-000001.json", "a/b.json", ""):
        with pytest.raises(ValueError, match="not a side file's name"):
            out.write_side(name, b"x")


def test_finish_writes_the_count_statistics_and_divergence_of_the_markers(tmp_path):
    """finish: the header with the markers' pair count, their statistics (marker_stats), the divergence
    check against the reference, its warnings then the added ones; a derived set planned as it holds."""
    url = str(tmp_path / "set")
    write_dataset(url, [3, 2])
    out = ShardSet(url)
    markers = {i.shard: i.marker for i in out.done()}
    header = DatasetInfo(
        classes=list(out.info().classes),
        resolution=32,
        train_stats={"class_fractions": [1.0, 0, 0, 0, 0]},
        warnings=["the source's"],
    )
    info, warnings = out.finish(
        header, markers, threshold=0.01, add_warnings=["extra"], samples_per_shard=4, fingerprint="fp"
    )
    assert (
        info == out.info()
        and info.status == COMPLETE
        and info.count == 5
        and (info.planned, info.num_shards, info.fingerprint) == (5, 2, "fp")
    )
    assert info.generated_stats == marker_stats(markers, 5) and info.divergence["class_fraction_tv"] > 0.01
    assert warnings and info.warnings == warnings + ["extra"]
    kept, _ = out.finish(header, markers, threshold=0.01, keep_warnings=True)
    assert kept.warnings == ["the source's"] and kept.planned is None
    assert header.check_settings()["threshold"] == 0.1 and kept.check_settings()["threshold"] == 0.01


def test_a_derived_set_keeps_the_rare_class_factor_through_check_settings(tmp_path):
    """check_settings carries synthesis.class_share_ratio_threshold: a set derived with its source's
    settings (the filter) is checked with the source's factor; a dataset.json written before the
    check existed gets the default 3."""
    url = str(tmp_path / "set")
    write_dataset(url, [3, 2])
    out = ShardSet(url)
    markers = {i.shard: i.marker for i in out.done()}
    generated = marker_stats(markers, 5)["class_fractions"]
    k = int(np.argmin([g if g > 0.01 else 1.0 for g in generated]))
    reference = list(generated)
    reference[k] = 4 * generated[k]  # generated at a quarter of its reference share: warns at 3, not at 5
    header = DatasetInfo(classes=list(out.info().classes), resolution=32, train_stats={"class_fractions": reference})
    source, warnings = out.finish(header, markers, threshold=1.0, class_share_ratio=5.0)
    assert warnings == [] and source.check_settings()["class_share_ratio"] == 5.0
    derived, warnings = ShardSet(str(tmp_path / "derived")).finish(source, markers, **source.check_settings())
    assert warnings == [] and derived.divergence["class_shares"]["ratio_threshold"] == 5.0
    _, warnings = ShardSet(str(tmp_path / "unkept")).finish(source, markers, threshold=1.0)  # the default, 3
    assert len(warnings) == 1 and f"hold {source.classes[k]} at" in warnings[0]
    old = DatasetInfo.from_json(json.loads((OLD / "dataset.json").read_text()))
    assert "class_shares" not in old.divergence and old.check_settings()["class_share_ratio"] == 3.0


def test_derive_stops_writing_once_its_lease_check_fails(tmp_path):
    """derive calls the caller's lease check before it clears or writes anything and before each shard:
    a holder whose lease lapsed mid-way (the check raises) writes no further shard, and a fresh holder
    resumes from the shards already there."""
    from dakter_scale.data.lease import LeaseError

    src, dst = str(tmp_path / "src"), tmp_path / "dst"
    write_dataset(src, [3, 3, 2])
    calls = {"n": 0}

    def lapses_after_three():  # before clearing, before shard 0 and before its marker; shard 1's raises
        calls["n"] += 1
        if calls["n"] > 3:
            raise LeaseError("lost its lock")

    with pytest.raises(LeaseError):
        ShardSet(src).derive(str(dst), lambda key, record: {"source_key": key}, "fp-a", 2, check=lapses_after_three)
    assert sorted(i.shard for i in ShardSet(str(dst)).done()) == [0]
    with pytest.raises(LeaseError):
        ShardSet(src).derive(
            str(dst),
            lambda key, record: {"source_key": key},
            "fp-b",
            2,
            check=lambda: (_ for _ in ()).throw(LeaseError("lost")),
        )
    assert sorted(i.shard for i in ShardSet(str(dst)).done()) == [0], "a lapsed holder does not even clear"
    markers = ShardSet(src).derive(str(dst), lambda key, record: {"source_key": key}, "fp-a", 2, check=lambda: None)
    assert sorted(markers) == [0, 1, 2, 3]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_set_whose_path_holds_glob_characters_reads_and_clears_only_its_own_files(where, tmp_path, request):
    """fsspec's cat and (on object stores) rm expand [, * and ?: a set at gen[1] read gen1's markers,
    and clearing it removed gen1's shards. Paths are taken literally."""
    base = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket")
    own, neighbour = f"{base}/gen[1]", f"{base}/gen1"
    write_dataset(own, [2])
    write_dataset(neighbour, [3, 1])
    assert [(i.shard, i.count) for i in ShardSet(own).done()] == [(0, 2)]
    assert sum(1 for _ in ShardSet(own).samples()) == 2
    ShardSet(own).clear()
    assert ShardSet(own).done() == []
    assert [(i.shard, i.count) for i in ShardSet(neighbour).done()] == [(0, 3), (1, 1)]
    assert sorted(ShardSet(neighbour).listing()) == sorted(
        ["dataset.json", *(f"shard-{s:06d}.{ext}" for s in (0, 1) for ext in ("tar", "parquet", "json"))]
    )


def test_a_marker_removed_between_the_listing_and_its_read_is_not_done(tmp_path):
    """A rerun retiring a stale marker while a reader lists the set: that shard is simply not done
    (it was a FileNotFoundError out of the whole read)."""
    url = str(tmp_path / "set")
    write_dataset(url, [2, 2])
    out = ShardSet(url)
    listing = out.listing()
    out.remove_marker(1)
    done, unreadable = out.read_markers(listing)
    assert sorted(done) == [0] and unreadable == {}


def test_derive_checks_its_lease_between_a_tar_and_its_marker(tmp_path):
    """The marker is the commit: a lease that lapses while a shard's tar is written (a slow upload)
    must stop its marker, or a stale holder marks a shard done after a successor took the prefix."""
    from dakter_scale.data.lease import LeaseError

    src, dst = str(tmp_path / "src"), tmp_path / "dst"
    write_dataset(src, [3, 3])

    def lapses_once_a_tar_is_written():
        if (dst / "shard-000000.tar").exists():
            raise LeaseError("lost its lock")

    with pytest.raises(LeaseError):
        ShardSet(src).derive(str(dst), lambda key, record: {}, "fp", 2, check=lapses_once_a_tar_is_written)
    assert ShardSet(str(dst)).done() == [] and not (dst / "shard-000000.json").exists()


def test_a_set_is_read_through_its_own_file_system_not_its_shown_urls(tmp_path):
    """ShardInfo.tar is the URL messages show (credentials redacted): opening it read nothing at a
    URL with a token, and fsspec.open globbed a "*" in it (gen* opened gen!'s tar first)."""
    tokened = f"memory://{tmp_path.name}/set?access_token=s3cret"
    write_dataset(tokened, [2, 1])
    assert "s3cret" not in ShardSet(tokened).done()[0].tar
    assert sum(1 for _ in ShardSet(tokened).samples()) == 3
    starred, neighbour = str(tmp_path / "gen*"), str(tmp_path / "gen!")
    write_dataset(starred, [2])
    write_dataset(neighbour, [3])
    assert sum(1 for _ in ShardSet(starred).samples()) == 2


def test_a_header_or_side_file_removed_while_it_is_read_is_absent_not_a_crash(tmp_path, monkeypatch):
    """A rerun clearing the set while a reader looks (the look-then-read code crashed when a file went
    between the two): a file removed just before the read is found absent, never a FileNotFoundError."""
    url = str(tmp_path / "set")
    write_dataset(url, [2])
    out = ShardSet(url)
    out.write_side("throughput.json", b"{}")
    assert out.info().count == 2 and out.read_side("throughput.json") == b"{}"
    real_cat, removed = out.fs.cat_file, []

    def gone_then_read(path, *args, **kw):
        removed.append(path.rsplit("/", 1)[-1])
        (tmp_path / "set" / removed[-1]).unlink(missing_ok=True)
        return real_cat(path, *args, **kw)

    monkeypatch.setattr(out.fs, "cat_file", gone_then_read)
    assert out.info() is None and out.read_side("throughput.json") is None
    assert removed == ["dataset.json", "throughput.json"]  # the race ran, on the reads themselves


def test_a_hostile_threshold_in_a_source_header_is_one_line_naming_the_file_and_field(tmp_path):
    """check_settings reads thresholds a source's dataset.json carries: a string, a bool, a non-dict
    section is one ShardError naming the file and the field (it was float()'s bare ValueError)."""
    url = str(tmp_path / "set")
    write_dataset(url, [2])
    out = ShardSet(url)
    raw = json.loads((tmp_path / "set" / "dataset.json").read_text())
    where = f"{tmp_path}/set/dataset.json"
    cases = [
        ({"threshold": "0.1x"}, r"divergence\.threshold must be a finite number, got '0\.1x'"),
        ({"threshold": True}, r"divergence\.threshold must be a finite number, got True"),
        ({"sar": "big"}, r"divergence\.sar must be an object, got 'big'"),
        ({"sar": {"enl_ratio_threshold": "2"}}, r"divergence\.sar\.enl_ratio_threshold must be a positive"),
        ({"class_shares": {"ratio_threshold": 0}}, r"divergence\.class_shares\.ratio_threshold must be a positive"),
    ]
    for divergence, message in cases:
        (tmp_path / "set" / "dataset.json").write_text(json.dumps(dict(raw, divergence=divergence)))
        with pytest.raises(ShardError, match=rf"^{where}: {message}") as e:
            out.info().check_settings()
        assert "\n" not in str(e.value)
    (tmp_path / "set" / "dataset.json").write_text(json.dumps(dict(raw, divergence={"threshold": 0.2})))
    assert out.info().check_settings()["threshold"] == 0.2
    assert out.info() == DatasetInfo.from_json(json.loads((tmp_path / "set" / "dataset.json").read_text()))


def test_marker_stats_names_the_marker_and_field_of_a_short_class_fraction_sum(tmp_path):
    """A marker whose sum_class_fractions has another length than the set's classes (or lacks a sum)
    is one ShardError naming the shard's marker and the field (it was numpy's broadcast error)."""
    url = str(tmp_path / "set")
    write_dataset(url, [2, 1])
    out = ShardSet(url)
    markers = {i.shard: i.marker for i in out.done()}
    short = {**markers, 1: dict(markers[1], sum_class_fractions=[0.5, 0.5])}
    with pytest.raises(
        ShardError, match=r"^shard-000001\.json: sum_class_fractions has 2 values, not one per class \(5\)$"
    ):
        marker_stats(short, 5)
    with pytest.raises(ShardError, match=rf"^{tmp_path}/set/shard-000001\.json: sum_class_fractions has 2 values"):
        out.finish(out.info(), short, threshold=0.1)
    lacking = {**markers, 0: {k: v for k, v in markers[0].items() if k != "sum_mean_entropy"}}
    with pytest.raises(ShardError, match=r"^shard-000000\.json: sum_mean_entropy is missing"):
        marker_stats(lacking, 5)
    old = ShardSet(str(OLD))
    assert marker_stats({d.shard: d.marker for d in old.done()}, 5) == old.info().generated_stats  # as before


@pytest.mark.parametrize("value", [True, 1.0, "1", None])
def test_a_marker_naming_its_shard_with_anything_but_an_int_is_unusable(value):
    from dakter_scale.data.shardset.records import marker_problem

    marker = {"shard": 1, "count": 2, "tar_bytes": 10, "sha256": "0" * 64, "fingerprint": None}
    assert marker_problem(marker, 1) is None
    assert marker_problem(dict(marker, shard=value), 1) == f"marker names shard {value!r}"


@pytest.mark.parametrize("key", ["000001-000002\n", "000001-000002/../x", "1-2", "000001_000002", 7])
def test_a_sample_key_is_matched_whole(key):
    """A key from a tar is a file name: anything beyond SHARD-INDEX (a trailing newline, which `$`
    let through, or a path) is refused in one line naming it."""
    from dakter_scale.data.shardset import parse_key

    assert parse_key("000001-000002") == (1, 2) and parse_key("1234567-000002") == (1234567, 2)
    with pytest.raises(ShardError, match="is not SHARD-INDEX"):
        parse_key(key)
