"""Synthesis on Ray: two actors write to a real S3 API server (moto on loopback) through s3fs while one
of them is killed in the middle of a shard; and `ray job submit` against a local `ray start --head`
with token authentication on (bench/ray_job_check.sh)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from test_synth import SAMPLING, TINY, cfg, presigned, read_keys, synth_argv

from dakter_scale.data import shardset, storage
from dakter_scale.data.shardset import ShardSet
from dakter_scale.synth import run as synth_run

from conftest import ROOT, job


@pytest.mark.slow
def test_ray_actors_write_n_pairs_to_s3_exactly_once_with_a_killed_actor(model, s3_bucket, tmp_path):
    config = cfg(n=12, samples_per_shard=4, batch_size=3, seed=5)
    local = synth_run.synthesize(model, str(tmp_path / "local"), config, SAMPLING, progress=False, use_ray=False)
    assert local.ok

    url = f"{s3_bucket}/run"
    fault = tmp_path / "fault.json"
    fault.write_text(json.dumps({"shard": 1, "after": 2}))  # the actor writing shard 1 dies after 2 of its 4 pairs
    args = synth_argv(model, url, 12, 4, 3, actors=2) + ["--json"] + TINY
    r = subprocess.run(
        job("synthesize.py") + args,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, DAKTER_FAULT_FILE=str(fault)),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)  # stdout holds the JSON object alone, whatever Ray prints
    strategy = summary["strategy"]
    assert summary["ok"] and strategy["strategy"] == "ray" and strategy["actors"] == 2
    assert len(strategy["actors_started"]) >= 2  # two, plus the replacement if it started in time
    assert {a["niceness"] for a in strategy["actors_started"]} == {strategy["niceness"]}  # not Ray's default 15
    assert not fault.exists(), "the fault was never triggered"
    assert [(x["shard"], x["reason"].split(" (")[0]) for x in summary["retried"]] == [(1, "actor died")]
    assert sorted(summary["written"]) == [0, 1, 2] and summary["pairs_written"] == 12 and summary["failed"] == {}

    # Exactly N unique pairs through the stock webdataset reader, N manifest rows, nothing partial.
    keys = read_keys(presigned(url, 3))
    assert len(keys) == len(set(keys)) == 12
    assert ShardSet(url).manifest().num_rows == 12
    fs, root = storage.url_to_fs(url)
    # README.md is the set's card; lock-000001.json the run's lease, released, never deleted (data/lease.py)
    assert sorted(storage.list_dir(fs, root)) == ["README.md", "dataset.json", "lock-000001.json"] + sorted(
        shardset.shard_name(s, e) for s in range(3) for e in ("json", "parquet", "tar")
    )
    assert fs.call_s3("list_multipart_uploads", Bucket=root.split("/")[0]).get("Uploads", []) == []

    # The same plan, model and seed: byte-identical tars from Ray actors and from the local run.
    for s in range(3):
        assert (
            fs.cat(storage.join(root, shardset.shard_name(s)))
            == (tmp_path / "local" / shardset.shard_name(s)).read_bytes()
        )

    # A rerun writes nothing, starts no actor, and reports every shard as done.
    again = synth_run.synthesize(model, url, config, SAMPLING, progress=False, use_ray=True)
    assert again.written == [] and sorted(again.skipped) == [0, 1, 2] and again.strategy == {}


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("ray") is None and not (ROOT / ".venv" / "bin" / "ray").exists(), reason="the ray CLI is not installed"
)
def test_ray_job_submit_against_a_local_head(model, tmp_path):
    """bench/ray_job_check.sh: `ray start --head` (token auth on) in a private temp dir, `ray job submit`
    of a small synthesis with the token, then the head is stopped by its process id."""
    out = tmp_path / "shards"
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "ray_job_check.sh"), model, str(out)], capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "ray job submit: ok" in r.stdout
    info = json.loads((out / "dataset.json").read_text())
    assert info["status"] == "complete" and info["count"] == 8
    assert sorted(d.shard for d in ShardSet(str(out)).done()) == [0, 1]
