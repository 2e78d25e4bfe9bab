"""The instance bank (synth/bank.py, data/bank.py) and copy-paste from it (student/augment.py BankPaste):
instances are the confident components of generated soft labels with their soft edges, judged by a
real-only student; the bank is exactly once, resumes after a killed run, reads back through the stock
webdataset reader, writes the same bytes on Ray as locally; pasted instances land where recorded with
their soft labels, the same seed gives the same bytes, and a bank that cannot meet a target is one error."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from dakter_scale.config import BankConfig, Config, SamplingConfig, SynthesisConfig
from dakter_scale.core.compose import components, dilate
from dakter_scale.core.kd import ce_loss_per_sample, kd_loss_per_sample, mixed_loss
from dakter_scale.data import storage
from dakter_scale.data.bank import BankError, bank_info, read_bank
from dakter_scale.data.osd import CLASSES
from dakter_scale.data.real import normalise, open_source, whole_pairs
from dakter_scale.data.shardset import DatasetInfo, ShardSet, decode_sample
from dakter_scale.data.synthetic_sar import simulate_scene
from dakter_scale.student.augment import Augment, BankPaste, build_copy_paste, reach
from dakter_scale.student.evaluate import segment
from dakter_scale.student.models import build_student, load_student, save_student
from dakter_scale.synth.bank import EMPTY, agreement, build_bank, cut_pair
from dakter_scale.synth.target import TargetError

from conftest import job
from shardgen import pair_record, refusal, run_job

SPEC = "synthetic:40?size=32&test=8"  # the real data the bank's instances are pasted into
SIZE, OIL, SHIP = 32, CLASSES.index("oil"), CLASSES.index("ship")


def soft_pair(seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """A simulated scene and a soft label with soft edges: its one-hot mask averaged over 3x3 windows."""
    image, mask = simulate_scene(seed, SIZE, SIZE)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(mask.astype(np.int64)), len(CLASSES)).permute(2, 0, 1)
    q = torch.nn.functional.avg_pool2d(onehot.float()[None], 3, 1, 1, count_include_pad=False)[0]
    return image, q / q.sum(0, keepdim=True)


def write_source(url: str, counts: list[int]) -> None:
    """A generated set of soft pairs written through the shard set (what jobs/synthesize.py writes)."""
    out = ShardSet(url)
    storage.url_to_fs(url)[0].makedirs(out.root, exist_ok=True)
    markers = {}
    for shard, count in enumerate(counts):
        samples, rows = [], []
        for index in range(count):
            key, seed = f"{shard:06d}-{index:06d}", 1000 * shard + index
            row, sample = pair_record(key, shard, index, seed, *soft_pair(seed))
            rows.append(row)
            samples.append(sample)
        markers[shard] = out.write_shard(shard, samples, rows, "soft-source")
    out.finish(DatasetInfo(classes=list(CLASSES), resolution=SIZE, fingerprint="soft-source"), markers, threshold=1.0)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("source") / "pairs")
    write_source(url, [6, 5, 4])
    return url


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """A real-only judge: an untrained, seeded unet (its agreements spread over [0, 1))."""
    torch.manual_seed(0)
    model = build_student("unet", "resnet18", len(CLASSES), None, encoder_depth=3)
    info = {"arch": "unet", "encoder": "resnet18", "classes": list(CLASSES), "encoder_depth": 3}
    return str(save_student(tmp_path_factory.mktemp("judge") / "judge", model, info))


@pytest.fixture(scope="module")
def bank(source, judge, tmp_path_factory):
    url = str(tmp_path_factory.mktemp("bank") / "bank")
    summary = build_bank(source, url, judge, BankConfig(min_agreement=0.0), SynthesisConfig(), use_ray=False)
    assert summary.ok and summary.count > 10 and summary.by_class["oil"] and summary.by_class["ship"]
    return url


def source_pairs(url: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {s["__key__"]: decode_sample(s, levels=True)[:2] for s in ShardSet(url).samples()}


def candidates(source: str, judge: str, cfg: BankConfig) -> dict[tuple[str, str, int], float]:
    """Every instance cut_pair finds, by (source key, class, component), with the judge's agreement."""
    model, _ = load_student(judge)
    out = {}
    for key, (image, levels) in source_pairs(source).items():
        pred = segment(model, image[None])[0].numpy()
        for c, j, core, region in cut_pair(levels, [OIL, SHIP], cfg):
            out[(key, CLASSES[c], j)] = agreement(pred, c, core, region)
    return out


def test_a_bank_of_another_resolution_is_refused(bank):
    """Its instances would be pasted at another scale: refused in one line, naming both."""
    from dakter_scale.data.bank import bank_info

    size = bank_info(bank)["resolution"]
    assert read_bank(bank, list(CLASSES), 2, resolution=size)
    with pytest.raises(BankError, match=rf"was cut from {size} px pairs, the data is {2 * size} px"):
        read_bank(bank, list(CLASSES), resolution=2 * size)


def test_instances_are_confident_components_with_their_soft_edges(source, bank):
    pairs = source_pairs(source)
    raw = {s["__key__"]: decode_sample(s, levels=True) for s in ShardSet(bank).samples()}
    soft_edges = 0
    for instance in read_bank(bank, list(CLASSES)):
        rec = instance.record
        image, levels = pairs[rec["source_key"]]
        c = instance.cls
        y0, x0, h, w = rec["bbox"]
        region = np.zeros((SIZE, SIZE), bool)
        region[y0 : y0 + h, x0 : x0 + w] = instance.region
        confident = levels[c] >= 127.5  # q_c >= 0.5
        labels = components(confident)
        inside = set(np.unique(labels[region])) - {0}
        assert len(inside) == 1, "an instance holds one confident component"
        core = labels == inside.pop()
        assert rec["core"] == core.sum() and (core <= region).all()
        assert (region <= dilate(core, BankConfig().edge)).all(), "the region is the component and its edge"
        # the soft label and image are the source pair's at every pixel of the region, sea and 0 elsewhere
        stored_image, stored_levels, meta = raw[instance.key]
        np.testing.assert_array_equal(stored_levels[:, region], levels[:, region])
        np.testing.assert_array_equal(stored_image[region], image[region])
        assert (stored_levels[0][~region] == 255).all() and (stored_image[~region] == 0).all()
        np.testing.assert_allclose(instance.q, stored_levels[:, y0 : y0 + h, x0 : x0 + w] / 255.0, atol=1e-6)
        soft_edges += int((levels[:, region].max(axis=0) < 255).sum())
        # provenance: the source pair's seed and key; cutting that pair again gives this region
        assert meta["seed"] == int(rec["source_key"][:6]) * 1000 + int(rec["source_key"][7:])
        again = {j: r for cls, j, _, r in cut_pair(levels, [c], BankConfig()) if cls == c}
        np.testing.assert_array_equal(again[rec["component"]], region)
    assert soft_edges > 0, "the edges' soft labels are kept"


def test_judge_rejected_instances_are_not_in_the_bank(source, judge, tmp_path):
    scores = candidates(source, judge, BankConfig())
    threshold = float(np.median(sorted(set(scores.values()))))
    kept = {k for k, v in scores.items() if v >= threshold}
    assert kept and len(kept) < len(scores), "the judge keeps some and rejects some"
    cfg = BankConfig(min_agreement=threshold)
    summary = build_bank(source, str(tmp_path / "bank"), judge, cfg, SynthesisConfig(), use_ray=False)
    banked = {
        (i.record["source_key"], i.record["class"], i.record["component"])
        for i in read_bank(str(tmp_path / "bank"), list(CLASSES))
    }
    assert banked == kept
    assert summary.rejected == len(scores) - len(kept) and summary.candidates == len(scores)
    assert all(i.record["judge"] >= threshold - 1e-6 for i in read_bank(str(tmp_path / "bank"), list(CLASSES)))


def tars(url: str) -> dict[str, bytes]:
    fs, root = storage.url_to_fs(url)
    return {
        name: fs.cat_file(storage.join(root, name))
        for name in sorted(storage.list_dir(fs, root))
        if name.endswith(".tar")
    }


@pytest.mark.slow  # ~13 s: a killed bank run and its resume; exactly-once is tested by default above
def test_bank_resumes_after_a_killed_run_and_reads_through_the_stock_reader(source, judge, bank, tmp_path):
    import webdataset as wds

    out, fault = tmp_path / "bank", tmp_path / "fault.json"
    fault.write_text(json.dumps({"shard": 1, "after": 2}))  # the process dies after 2 instances of shard 1
    argv = job("bank_instances.py") + [
        "--shards",
        source,
        "--judge",
        judge,
        "--out",
        str(out),
        "--actors",
        "0",
        "synthesis.bank.min_agreement=0",
    ]
    killed = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, DAKTER_FAULT_FILE=str(fault)))
    assert killed.returncode == 17 and not fault.exists()
    assert sorted(d.shard for d in ShardSet(str(out)).done()) == [0], "the killed run finished shard 0 only"
    (out / "shard-000001.tar.tmp-0123456789ab").write_bytes(b"half a tar")  # what a writer killed mid-upload leaves
    again = subprocess.run(argv + ["--break-lock"], capture_output=True, text=True)  # the killed run's lease
    assert again.returncode == 0, again.stderr[-2000:]
    assert "cut now: 2, done before: 1" in again.stdout
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name], "the dead writer's temporary is removed"
    assert tars(str(out)) == tars(bank), "the resumed bank is the uninterrupted one, byte for byte"
    info = json.loads((out / "dataset.json").read_text())
    assert info["status"] == "complete" and info["count"] == len(read_bank(bank, list(CLASSES)))
    # the stock webdataset reader reads every instance once
    keys = [s["__key__"] for s in wds.WebDataset([str(out / n) for n in tars(str(out))], shardshuffle=False)]
    assert len(keys) == len(set(keys)) == info["count"]
    rerun = build_bank(source, str(out), judge, BankConfig(min_agreement=0.0), SynthesisConfig(), use_ray=False)
    assert rerun.cut == [] and rerun.skipped == [0, 1, 2]


def test_a_source_shard_without_instances_is_recorded_and_not_cut_again(judge, tmp_path):
    src = str(tmp_path / "src")
    write_source(src, [3, 2])
    cfg = BankConfig(classes=("land",), min_pixels=10**6)  # no component is that large: nothing is cut
    first = build_bank(src, str(tmp_path / "bank"), judge, cfg, SynthesisConfig(), use_ray=False)
    assert first.count == 0 and first.cut == [0, 1]
    assert set(json.loads(ShardSet(str(tmp_path / "bank")).read_side(EMPTY))) == {"0", "1"}
    again = build_bank(src, str(tmp_path / "bank"), judge, cfg, SynthesisConfig(), use_ray=False)
    assert again.cut == [] and again.skipped == [0, 1]
    # a broken side file, or an entry without its counts, is no record: those shards are cut again
    side = tmp_path / "bank" / EMPTY
    recorded = json.loads(side.read_text())
    side.write_text(
        json.dumps({"0": {k: v for k, v in recorded["0"].items() if k != "candidates"}, "1": recorded["1"]})
    )
    assert build_bank(src, str(tmp_path / "bank"), judge, cfg, SynthesisConfig(), use_ray=False).cut == [0]
    side.write_text("[1, 2")
    assert build_bank(src, str(tmp_path / "bank"), judge, cfg, SynthesisConfig(), use_ray=False).cut == [0, 1]
    with pytest.raises(BankError, match="another set"):
        build_bank(src, str(tmp_path / "bank"), judge, BankConfig(), SynthesisConfig(), use_ray=False)
    before = ShardSet(str(tmp_path / "bank")).info().fingerprint
    rebuilt = build_bank(
        src, str(tmp_path / "bank"), judge, BankConfig(), SynthesisConfig(), use_ray=False, overwrite=True
    )
    assert (
        rebuilt.cut == [0, 1]
        and rebuilt.skipped == []
        and ShardSet(str(tmp_path / "bank")).info().fingerprint != before
    )


@pytest.mark.slow
def test_the_bank_on_a_local_ray_cluster_writes_the_same_bytes(source, judge, bank, tmp_path):
    url = str(tmp_path / "ray")
    summary = build_bank(source, url, judge, BankConfig(min_agreement=0.0), SynthesisConfig(actors=2), use_ray=True)
    assert summary.ok and summary.strategy["strategy"] == "ray" and summary.strategy["actors"] == 2
    assert tars(url) == tars(bank)


# -- copy-paste from the bank -----------------------------------------------------------------------


def cfg(bank: str, **student) -> Config:
    return Config().replace(
        **{
            "data.spec": SPEC,
            "data.resolution": SIZE,
            "student.copy_paste": "oil:3x,ship:3x",
            "student.instance_bank": bank,
            **{f"student.{k}": v for k, v in student.items()},
        }
    )


def real_item(i: int) -> dict:
    images, masks = whole_pairs(open_source(SPEC), SIZE)
    return {
        "key": "k",
        "x": normalise(images[i])[None],
        "mask": torch.from_numpy(masks[i].astype(np.int64)),
        "q": None,
        "generated": False,
    }


def test_pasted_instances_land_where_recorded_with_their_soft_labels(bank):
    cp = build_copy_paste(cfg(bank, copy_paste_real=1.0), open_source(SPEC))
    assert isinstance(cp, BankPaste)
    for i in range(6):
        item = real_item(i)
        out = Augment(3, "none", cp)(item, i, 0)
        given, q = out["pasted"].numpy(), out["q"].numpy()
        assert given.any() and out["placements"]
        assert (item["mask"].numpy()[given] == 0).all(), "onto the scene's sea only"
        # replayed in order: each lands on what is sea then (the scene's, or an earlier soft edge most
        # probably sea), with its soft label, and brings a pixel of its class
        labels, rebuilt, placed = item["mask"].numpy().copy(), np.zeros_like(q), np.zeros_like(given)
        for c, index, flip, turns, y, x in out["placements"]:
            iq, region = (np.rot90(a[..., ::-1] if flip else a, turns, axes=(-2, -1)) for a in cp.pool[c][index][1:3])
            h, w = region.shape
            window = (slice(y, y + h), slice(x, x + w))
            here = region & (labels[window] == 0)
            assert (iq.argmax(axis=0)[here] == c).any(), (i, c, index)
            labels[window][here] = iq.argmax(axis=0)[here]
            rebuilt[(slice(None),) + window][:, here] = iq[:, here]
            placed[window] |= here
        np.testing.assert_array_equal(placed, given)  # every pasted pixel is a recorded instance's
        np.testing.assert_array_equal(q[:, given], rebuilt[:, given])
        assert (q[:, given].max(axis=0) < 1).any(), "soft labels, not one-hot, where pasted"
        np.testing.assert_array_equal(out["mask"].numpy()[given], q[:, given].argmax(axis=0))
        np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-5)
        assert torch.equal(out["mask"][~out["pasted"]], item["mask"][~out["pasted"]])
        # an image off the uint8 grid (a generated one) keeps every pixel not pasted bitwise
        item["x"] = (item["x"] + 0.37 / 255).clamp(-1, 1)
        moved = Augment(3, "none", cp)(item, i, 0)
        assert torch.equal(moved["x"][0][~moved["pasted"]], item["x"][0][~moved["pasted"]])


def test_same_seed_same_bytes(bank):
    source = open_source(SPEC)
    a = Augment(7, "d4", build_copy_paste(cfg(bank, copy_paste_real=1.0), source))(real_item(0), 5, 2)
    b = Augment(7, "d4", build_copy_paste(cfg(bank, copy_paste_real=1.0), source))(real_item(0), 5, 2)
    for k in ("x", "mask", "q", "pasted"):
        assert torch.equal(a[k], b[k])
    other = Augment(7, "d4", build_copy_paste(cfg(bank, copy_paste_real=1.0), source))(real_item(0), 5, 3)
    assert not torch.equal(a["q"], other["q"])


def test_a_bank_that_cannot_meet_a_target_is_one_clear_error(bank, tmp_path):
    source = open_source(SPEC)
    with pytest.raises(TargetError, match=r"holds no look-alike instance") as e:
        build_copy_paste(cfg(bank, copy_paste="look-alike:3x"), source)
    with pytest.raises(TargetError, match=r"fewer than student.instance_bank_size 100000"):
        build_copy_paste(cfg(bank, instance_bank_size=100000), source)
    with pytest.raises(TargetError, match=r"cannot be reached from student.instance_bank"):
        build_copy_paste(cfg(bank, copy_paste="ship:0.9"), source)
    assert "\n" not in str(e.value)
    args = ["--real", SPEC, "--out", tmp_path / "s", "--max-steps", "1", "--copy-paste", "ship:0.9"]
    line = refusal(run_job("train_student.py", args + ["--instance-bank", bank, "data.resolution=32"]))
    assert line.startswith("error: student.copy_paste ship:0.9 cannot be reached from")


def test_donors_a_little_short_of_their_target_are_refused_real_or_banked(bank):
    """A bank of whole instances under MAX_INSTANCES, or real pairs, that fall short of a target on the
    training scenes by a little are refused as they are by a lot: one rule for both kinds of donor, so
    that every arm that trains gets its target."""
    import re

    source = open_source(SPEC)
    for kind, settings in (("banked", {}), ("real", {"instance_bank": ""})):
        with pytest.raises(TargetError) as e:
            build_copy_paste(cfg(bank, copy_paste="ship:0.9", **settings), source)
        reached = float(re.search(r"ship (\d\.\d+) <", str(e.value)).group(1))  # what the caps allow
        goal = round(reached / 0.9, 4)
        with pytest.raises(TargetError, match=rf"^student.copy_paste ship:{goal} cannot be reached from"):
            build_copy_paste(cfg(bank, copy_paste=f"ship:{goal}", **settings), source)


def test_the_reach_is_probed_on_the_training_scenes(bank, monkeypatch):
    """The bank reaches the target on all-sea canvases and on the training scenes as they are, but not
    on those scenes with their sea turned to land (augment.whole_pairs, what the student trains on):
    refused, as real donors are."""
    import dakter_scale.student.augment as augment

    source = open_source(SPEC)
    cp = build_copy_paste(cfg(bank), source)
    images, masks = whole_pairs(source, SIZE)
    sea = np.zeros_like(masks)
    assert cp.target.met(reach(cp, images, sea)) and cp.target.met(reach(cp, images, masks))
    land = np.where(masks == 0, CLASSES.index("land"), masks).astype(np.uint8)
    monkeypatch.setattr(augment, "whole_pairs", lambda *_: (images, land))
    with pytest.raises(
        TargetError, match=r"cannot be reached from student.instance_bank .*pasted training scenes reach oil"
    ):
        build_copy_paste(cfg(bank), source)


def test_banked_and_real_donors_give_one_dose(bank):
    """Given one target, the bank and the real pairs paste onto the training scenes about the same share
    of each targeted class, each at least its goal (the probe: augment.reach)."""
    source = open_source(SPEC)
    images, masks = whole_pairs(source, SIZE)
    banked = build_copy_paste(cfg(bank), source)
    real = build_copy_paste(cfg(bank, instance_bank=""), source)
    a, b = reach(banked, images, masks, 200), reach(real, images, masks, 200)
    for c, goal in banked.target.shares:
        assert a[c] >= goal and b[c] >= goal and abs(a[c] - b[c]) < 0.1 * goal, (CLASSES[c], a[c], b[c], goal)


def test_which_instances_a_student_pasted_is_recorded_and_a_resume_on_others_warns(bank, tmp_path):
    """student.json names the instances read (the bank's fingerprint, their count, the last key): a bank
    grows at its URL under one fingerprint. A run killed after a checkpoint and resumed on other
    instances (here a larger prefix) warns that it does not continue exactly, as one written under
    another paste rule does; student.json records the rule (augment.PASTE_RULE)."""
    from dakter_scale.student.augment import PASTE_RULE

    keys = [i.key for i in read_bank(bank, list(CLASSES))]
    args = ["--real", SPEC, "--copy-paste", "oil:2x,ship:2x", "--instance-bank", bank, "--max-steps", "3"]
    args += ["--out", tmp_path / "s", "--resume", "latest", "data.resolution=32", "student.checkpoint_every=1"]
    killed = run_job("train_student.py", args + ["student.instance_bank_size=10"], DAKTER_KILL_AFTER_STEP="2")
    assert killed.returncode != 0 and not (tmp_path / "s" / "student.json").exists()
    for state in (tmp_path / "s" / "checkpoints").glob("step-*/state.json"):  # as if written under rule 1
        saved = json.loads(state.read_text())
        assert saved["layout"]["paste_rule"] == PASTE_RULE
        saved["layout"]["paste_rule"] = 1
        state.write_text(json.dumps(saved))
    again = run_job("train_student.py", args + ["student.instance_bank_size=12"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming with a different data layout (instance_bank" in again.stderr, again.stderr[-2000:]
    assert f"paste_rule 1 -> {PASTE_RULE}" in again.stderr, again.stderr[-2000:]
    written = json.loads((tmp_path / "s" / "student.json").read_text())
    record = written["instance_bank"]
    assert (record["instances"], record["last_key"]) == (12, keys[11])
    assert record["fingerprint"] == bank_info(bank)["fingerprint"]
    assert written["copy_paste"]["rule"] == PASTE_RULE


def with_first_sample_changed(bank, url, change) -> str:
    """A copy of `bank` at url whose first sample's members (a dict) went through change(members); its key."""
    import shutil

    shutil.copytree(bank, url)
    shard = ShardSet(str(url))
    first = shard.done()[0]
    samples = list(shard.read(first))
    members = [(s["__key__"], {m: s[m] for m in ("image.png", "soft.png", "json")}) for s in samples]
    change(members[0][1])
    rows = [
        {
            k: json.loads(m["json"])[k]
            for k in ("key", "shard", "index", "seed", "class_fractions", "mean_entropy", "mean_confidence")
        }
        for _, m in members
    ]
    shard.write_shard(first.shard, members, rows, first.marker["fingerprint"])
    return samples[0]["__key__"]


def test_hostile_bank_records_are_refused_naming_the_sample(bank, tmp_path):
    for field, value, message in (
        ("bbox", [30, 30, 8, 8], "not inside"),
        ("mask", "AAAA", "base64"),
        ("class", "kraken", "not one of"),
        ("area", 10**9, "area"),
    ):

        def change(members, field=field, value=value):
            record = json.loads(members["json"])
            record["instance"][field] = value
            members["json"] = json.dumps(record, sort_keys=True).encode()

        key = with_first_sample_changed(bank, tmp_path / field, change)
        with pytest.raises(BankError, match=rf"sample {key}: instance .*{message}"):
            read_bank(str(tmp_path / field), list(CLASSES))


def test_a_bad_sample_before_the_limit_refuses_the_bank(bank, tmp_path):
    """An undecodable image in the first instance: read_bank(limit=1) refuses the bank naming it, rather
    than skip it and hand back the next instance as the first (the shard reader reports a bad sample
    only after the shard's last one)."""
    key = with_first_sample_changed(
        bank, tmp_path / "bad", lambda members: members.update({"image.png": b"\x89PNG not an image"})
    )
    with pytest.raises(BankError, match=rf"instance bank .*{key}"):
        read_bank(str(tmp_path / "bad"), list(CLASSES), limit=1)


def test_a_real_sample_with_soft_labels_takes_the_soft_cross_entropy():
    torch.manual_seed(0)
    logits, mask = torch.randn(3, 4, 5, 5), torch.randint(0, 4, (3, 5, 5))
    q = torch.nn.functional.one_hot(mask, 4).permute(0, 3, 1, 2).float()
    q[1, :, 0, 0] = torch.tensor([0.4, 0.3, 0.2, 0.1])  # sample 1 holds a pasted soft pixel
    loss, parts = mixed_loss(logits, mask, q, torch.zeros(3, dtype=torch.bool), ce_weight=2.0)
    expected = torch.stack(
        [
            ce_loss_per_sample(logits[[0]], mask[[0]])[0],
            kd_loss_per_sample(logits[[1]], q[[1]])[0],
            ce_loss_per_sample(logits[[2]], mask[[2]])[0],
        ]
    )
    torch.testing.assert_close(loss, 2.0 * expected.mean())
    assert {k for k, v in parts.items() if not torch.isnan(v)} == {"ce_real", "soft_real"}  # NaN: no sample took it
    # one-hot everywhere: the CE on the mask exactly, as before soft labels could reach a real sample
    plain = torch.nn.functional.one_hot(mask, 4).permute(0, 3, 1, 2).float()
    loss, parts = mixed_loss(logits, mask, plain, torch.zeros(3, dtype=torch.bool))
    assert torch.equal(loss, ce_loss_per_sample(logits, mask).mean()) and {
        k for k, v in parts.items() if not torch.isnan(v)
    } == {"ce_real"}


def test_a_banked_instance_is_regenerated_from_its_seed_shard_and_index(model, judge, tmp_path):
    """Cut from pairs a joint model drew: the instance's source key (shard, index) and the run's seed
    rebuild its source pair (synth/regenerate.py), and cutting that pair again gives the same region
    with the same image and soft label."""
    from dakter_scale.data.shardset import codec
    from dakter_scale.synth import run as synth_run
    from dakter_scale.synth.regenerate import regenerate

    sampling, run = SamplingConfig(steps=3), SynthesisConfig(n=6, samples_per_shard=3, batch_size=2, seed=5)
    pairs = str(tmp_path / "pairs")
    assert synth_run.synthesize(model, pairs, run, sampling, progress=False, use_ray=False).ok
    cfg = BankConfig(classes=("oil", "look-alike", "ship", "land"), min_agreement=0.0, min_pixels=1)
    summary = build_bank(pairs, str(tmp_path / "bank"), judge, cfg, SynthesisConfig(), use_ray=False)
    assert summary.count > 0
    raw = {s["__key__"]: decode_sample(s, levels=True) for s in ShardSet(str(tmp_path / "bank")).samples()}
    for instance in read_bank(str(tmp_path / "bank"), list(CLASSES))[:5]:
        rec = instance.record
        image, q, record = regenerate(
            model, rec["source_key"], run.seed, sampling, run.batch_size, run.samples_per_shard
        )
        stored_image, stored_levels, meta = raw[instance.key]
        assert record["seed"] == meta["seed"]
        levels = codec.quantise(torch.from_numpy(q))
        again = {j: r for c, j, _, r in cut_pair(levels, [instance.cls], cfg) if c == instance.cls}
        region = again[rec["component"]]
        y0, x0, h, w = rec["bbox"]
        assert region[y0 : y0 + h, x0 : x0 + w].sum() == region.sum() == instance.region.sum()
        np.testing.assert_array_equal(stored_image[region], image[region])
        np.testing.assert_array_equal(stored_levels[:, region], levels[:, region])


def test_a_bank_its_yield_cannot_fill_stops_after_the_first_round(model, judge, tmp_path):
    """grow_bank measures instances per pair on its first round and refuses, in one line naming the
    yield and the key, a bank that would need more than synthesis.bank.max_pairs, before drawing them."""
    from dakter_scale.synth.bank import grow_bank

    cfg = SynthesisConfig(
        samples_per_shard=3, batch_size=3, seed=5, bank=BankConfig(min_agreement=0.0, min_pixels=1, max_pairs=30)
    )
    pairs, out = str(tmp_path / "pairs"), str(tmp_path / "bank")
    with pytest.raises(BankError, match=r"instances from 3 pairs \(.* a pair.*max_pairs 30: raise it") as e:
        grow_bank(
            model, pairs, out, judge, 10**6, cfg, SamplingConfig(steps=2), first_pairs=3, use_ray=False, progress=False
        )
    assert "\n" not in str(e.value)
    assert ShardSet(pairs).info().count == 3, "no second round was drawn"
    summary = grow_bank(
        model, pairs, out, judge, 1, cfg, SamplingConfig(steps=2), first_pairs=3, use_ray=False, progress=False
    )
    assert summary.count >= 1 and summary.cut == [] and summary.skipped == [0], "the first round's bank is kept"


def test_a_bank_grown_in_two_rounds_is_run_again_and_grown_from_where_it_was(model, judge, tmp_path):
    """A bank whose second round drew more shards: the same call again (a study restarted after it)
    cuts nothing and draws nothing, and a larger n adds to it; before, each call restarted at
    first_pairs, which synthesize refuses on a prefix holding more shards."""
    from dakter_scale.synth.bank import grow_bank

    cfg = SynthesisConfig(
        samples_per_shard=3, batch_size=3, seed=5, bank=BankConfig(min_agreement=0.0, min_pixels=1, max_pairs=60)
    )
    pairs, out = str(tmp_path / "pairs"), str(tmp_path / "bank")

    def grow(n: int):
        return grow_bank(
            model, pairs, out, judge, n, cfg, SamplingConfig(steps=2), first_pairs=3, use_ray=False, progress=False
        )

    one_round = grow(1).count
    assert ShardSet(pairs).info().count == 3 and one_round >= 1
    grown = grow(one_round + 1)
    drawn = ShardSet(pairs).info().count
    assert drawn > 3 and grown.count > one_round, "a second round drew more pairs"
    keys = [i.key for i in read_bank(out, list(CLASSES))]
    again = grow(one_round + 1)
    assert again.cut == [] and ShardSet(pairs).info().count == drawn, "run again: nothing cut, nothing drawn"
    assert [i.key for i in read_bank(out, list(CLASSES))] == keys
    more = grow(grown.count + 1)
    assert more.count > grown.count and ShardSet(pairs).info().count > drawn
    assert [i.key for i in read_bank(out, list(CLASSES))][: len(keys)] == keys, "grown, its first instances kept"


def test_the_bank_on_an_s3_api_resumes_and_reads_back(judge, s3_bucket, tmp_path):
    """Source set and bank on an S3 API server (moto on loopback, s3fs): the same instances as on disk,
    and a rerun cuts nothing."""
    source, bank = f"{s3_bucket}/pairs", f"{s3_bucket}/bank"
    write_source(source, [4, 3])
    cfg = BankConfig(min_agreement=0.0)
    first = build_bank(source, bank, judge, cfg, SynthesisConfig(), use_ray=False)
    assert first.ok and first.count > 0 and first.cut == [0, 1]
    again = build_bank(source, bank, judge, cfg, SynthesisConfig(), use_ray=False)
    assert again.cut == [] and again.skipped == [0, 1] and again.count == first.count
    instances = read_bank(bank, list(CLASSES))
    assert len(instances) == first.count and ShardSet(bank).info().complete
    local_source, local_bank = str(tmp_path / "pairs"), tmp_path / "bank"
    write_source(local_source, [4, 3])
    assert build_bank(local_source, str(local_bank), judge, cfg, SynthesisConfig(), use_ray=False).count == first.count
    fs, root = storage.url_to_fs(bank)
    tars = sorted(p.name for p in local_bank.glob("*.tar"))
    assert tars and all(fs.cat_file(f"{root}/{name}") == (local_bank / name).read_bytes() for name in tars)
