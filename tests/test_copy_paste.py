"""Copy-paste augmentation of students (core.compose.paste_onto, student/augment.py): the pasted
instances land where recorded, labels match the pasted pixels, the class shares meet the target, the
same seed and position give the same bytes, and a target the donors cannot meet on the training scenes
is one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dakter_scale.config import Config
from dakter_scale.core.compose import class_shares, paste_onto
from dakter_scale.data.real import normalise, open_source, whole_pairs
from dakter_scale.data.stream import MixedBatches
from dakter_scale.student.augment import Augment, build_copy_paste
from dakter_scale.synth.target import TargetError, paste_pool

from shardgen import refusal, run_job

SPEC = "synthetic:40?size=32&test=8"
TARGET = "oil:3x,ship:3x"


@pytest.fixture(scope="module")
def real():
    source = open_source(SPEC)
    return source, *whole_pairs(source, 32)


@pytest.fixture(scope="module")
def default_cp(real):
    return build_copy_paste(cfg(), real[0])


def cfg(**student) -> Config:
    return Config().replace(
        **{
            "data.spec": SPEC,
            "data.resolution": 32,
            "student.copy_paste": TARGET,
            **{f"student.{k}": v for k, v in student.items()},
        }
    )


def item(image: np.ndarray, mask: np.ndarray, q: torch.Tensor | None = None) -> dict:
    return {
        "key": "k",
        "x": normalise(image)[None],
        "mask": torch.from_numpy(mask.astype(np.int64)),
        "q": q,
        "generated": q is not None,
    }


def test_paste_onto_lands_where_given_and_only_on_sea(real, default_cp):
    _, images, masks = real
    cp = default_cp
    for i in range(10):
        rng = np.random.default_rng(i)
        out_image, out_mask, given = paste_onto(
            images[i], masks[i], cp.pool, cp.target.goals, rng, cp.max_pastes, cp.max_draws
        )
        assert given.any(), "every scene here is below the target share, so something is pasted"
        assert (masks[i][given] == 0).all(), "instances go only onto the scene's sea"
        np.testing.assert_array_equal(out_image[~given], images[i][~given])  # nothing else changes
        np.testing.assert_array_equal(out_mask[~given], masks[i][~given])
        assert set(np.unique(out_mask[given])) <= {c for c, _ in cp.target.shares}, "pasted labels are targeted classes"


def test_pasted_labels_are_the_donors_pixels(real, default_cp):
    """Without sea matching, each pasted pixel holds a donor's image value and class id together: donors
    whose image is a function of the class id (10 + 40 * id) give pasted pixels 10 + 40 * their id."""
    _, images, masks = real
    cp = default_cp
    pool = {c: [np.stack([10 + 40 * p[1], p[1]]).astype(np.uint8) for p in pairs] for c, pairs in cp.pool.items()}
    for i in range(5):
        rng = np.random.default_rng(i)
        out_image, out_mask, given = paste_onto(
            images[i], masks[i], pool, cp.target.goals, rng, cp.max_pastes, cp.max_draws, match_sea=False
        )
        assert given.any()
        np.testing.assert_array_equal(out_image[given], 10 + 40 * out_mask[given].astype(np.int64))


def test_shares_meet_the_target(real, default_cp):
    """Pasted onto every training scene, the pooled shares of the targeted classes reach the target (the
    donors were probed on these scenes: check_reach)."""
    source, images, masks = real
    cp = default_cp
    out = np.stack(
        [
            paste_onto(
                images[i], masks[i], cp.pool, cp.target.goals, np.random.default_rng(i), cp.max_pastes, cp.max_draws
            )[1]
            for i in range(len(masks))
        ]
    )
    shares = class_shares(out, source.num_classes)
    for c, goal in cp.target.shares:
        assert shares[c] >= goal, f"class {source.classes[c]}: {shares[c]:.4f} against the goal {goal:.4f}"


def test_same_seed_same_bytes_and_position_matters(real):
    source, images, masks = real
    augment = Augment(7, "d4", build_copy_paste(cfg(copy_paste_real=1.0), source))
    a = augment(item(images[0], masks[0]), 5, 2)
    b = Augment(7, "d4", build_copy_paste(cfg(copy_paste_real=1.0), source))(item(images[0], masks[0]), 5, 2)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["mask"], b["mask"]) and torch.equal(a["pasted"], b["pasted"])
    others = [augment(item(images[0], masks[0]), batch, place) for batch, place in ((5, 3), (6, 2), (0, 0))]
    assert any(not torch.equal(a["x"], o["x"]) for o in others)
    # geometry moves the mask and the record of pasted pixels together: pasted pixels hold targeted classes
    assert a["pasted"].any() and (a["mask"][a["pasted"]] > 0).all()


def test_generated_soft_labels_become_one_hot_where_pasted(real):
    source, images, masks = real
    k = source.num_classes
    q = torch.full((k, 32, 32), 1.0 / k)
    q[0] = 1.0 - (k - 1) / k + 1.0 / k  # sea most probable everywhere: the base is all sea
    q = q / q.sum(0, keepdim=True)
    cp = build_copy_paste(cfg(copy_paste_generated=1.0), source)
    out = Augment(1, "none", cp)(item(images[1], np.zeros((32, 32), np.uint8), q), 0, 0)
    where = out["pasted"]
    assert where.any()
    np.testing.assert_allclose(out["q"].sum(0).numpy(), 1.0, atol=1e-6)
    assert (
        torch.equal(out["q"][:, where].argmax(0), out["mask"][where]) and (out["q"][:, where].max(0).values == 1).all()
    )
    assert torch.equal(out["q"][:, ~where], q[:, ~where])


def test_pixels_not_pasted_keep_their_exact_values(real):
    """A generated image is not on the uint8 grid: pasting writes the given pixels only and leaves every
    other pixel bitwise as it was, and a sample that needs nothing pasted comes back unchanged."""
    source, images, masks = real
    k = source.num_classes
    q = torch.zeros((k, 32, 32))
    q[0] = 1.0
    cp = build_copy_paste(cfg(copy_paste_generated=1.0), source)
    sample = item(images[1], np.zeros((32, 32), np.uint8), q)
    sample["x"] = (sample["x"] + 0.37 / 255).clamp(-1, 1)  # off the grid normalise() maps uint8 levels to
    out = Augment(1, "none", cp)(sample, 0, 0)
    where = out["pasted"]
    assert where.any() and not where.all()
    assert torch.equal(out["x"][0][~where], sample["x"][0][~where])
    assert not torch.equal(out["x"][0][where], sample["x"][0][where])
    # a sample already past the target: nothing pasted, nothing changed
    full = np.ones((32, 32), np.uint8)
    same = item(images[1], full, q)
    same["x"] = sample["x"]
    got = cp.paste(same, np.random.default_rng(0))
    assert not got["pasted"].any() and got["x"] is same["x"] and got["mask"] is same["mask"]


def test_share_of_samples_pasted(real):
    source, images, masks = real
    cp = build_copy_paste(cfg(copy_paste_real=0.5), source)
    augment = Augment(0, "none", cp)
    pasted = [("pasted" in augment(item(images[i % 40], masks[i % 40]), i, 0)) for i in range(160)]
    assert 0.35 < np.mean(pasted) < 0.65  # 0.5 +- 3.8 standard deviations of a share of 160
    never = Augment(0, "none", build_copy_paste(cfg(copy_paste_real=0.0), source))
    assert not any("pasted" in never(item(images[0], masks[0]), i, 0) for i in range(50))


def test_mixed_batches_resume_with_augmentation(real):
    """Batches from a stream started at batch 3 equal batches 3.. of the uninterrupted stream."""
    source, images, masks = real
    augment = Augment(2, "d4", build_copy_paste(cfg(copy_paste_real=1.0), source))

    def stream(start):
        def real_items():
            i = start * 4
            while True:
                yield item(images[i % 40], masks[i % 40])
                i += 1

        return MixedBatches(real_items(), None, 4, 0.0, source.num_classes, start_batch=start, augment=augment)

    whole = stream(0)
    batches = [next(whole) for _ in range(5)]
    resumed = stream(3)
    for expected in batches[3:]:
        got = next(resumed)
        assert torch.equal(got["x"], expected["x"]) and torch.equal(got["mask"], expected["mask"])


def test_each_rank_augments_its_samples_at_their_place_in_the_global_batch(real):
    """Two ranks of one batch index draw apart: rank 1's samples are augmented at places B..2B-1, so
    the same images come out differently on the two ranks, and rank 0 draws what one process draws."""
    source, images, masks = real
    augment = Augment(2, "d4", build_copy_paste(cfg(copy_paste_real=0.5), source))
    seen = []

    def batches(first_place):
        def recorded(it, batch, place):
            seen.append((first_place, batch, place))
            return augment(it, batch, place)

        same = (item(images[i % 4], masks[i % 4]) for i in range(100))
        return MixedBatches(same, None, 4, 0.0, source.num_classes, augment=recorded, first_place=first_place)

    one, rank0, rank1 = next(batches(0)), next(batches(0)), next(batches(4))
    assert [p for r, _, p in seen if r == 4] == [4, 5, 6, 7] and [p for r, _, p in seen if r == 0] == [0, 1, 2, 3] * 2
    assert torch.equal(one["x"], rank0["x"]) and not torch.equal(rank0["x"], rank1["x"])


def test_unreachable_target_is_one_clear_error(real):
    source, _, _ = real
    with pytest.raises(
        TargetError, match=r"^student.copy_paste ship:0.9 cannot be reached from the real training pairs"
    ):
        build_copy_paste(cfg(copy_paste="ship:0.9"), source)
    with pytest.raises(TargetError, match="unknown class 'slick'"):
        build_copy_paste(cfg(copy_paste="slick:3x"), source)


def test_job_refuses_unreachable_target_in_one_line(tmp_path):
    args = [
        "--real",
        SPEC,
        "--out",
        tmp_path / "s",
        "--max-steps",
        "1",
        "--copy-paste",
        "ship:0.9",
        "data.resolution=32",
    ]
    assert refusal(run_job("train_student.py", args)).startswith("error: student.copy_paste ship:0.9 cannot be reached")


def test_pool_holds_only_pairs_with_the_class(real, default_cp):
    source, images, masks = real
    target = default_cp.target
    pool = paste_pool(images, masks, target)
    for c, pairs in pool.items():
        assert pairs and all((p[1] == c).any() for p in pairs)


def without_sea(monkeypatch, real) -> None:
    """The training scenes the student gets (augment.whole_pairs) with their sea turned to land: their
    instances, the donors, are as they were, but nothing can be pasted onto them."""
    import dakter_scale.student.augment as augment

    source, images, masks = real
    land = np.where(masks == 0, source.classes.index("land"), masks).astype(np.uint8)
    monkeypatch.setattr(augment, "whole_pairs", lambda *_: (images, land))


def test_the_reach_is_probed_on_the_training_scenes(real, monkeypatch):
    """The donors reach the target on sea canvases, but the scenes the student trains on have no sea
    left: the real donors are refused, since what they would paste there is not the target."""
    source = real[0]
    build_copy_paste(cfg(), source)  # reached on the scenes as they are
    without_sea(monkeypatch, real)
    with pytest.raises(
        TargetError, match=r"cannot be reached from the real training pairs .*pasted training scenes reach oil"
    ):
        build_copy_paste(cfg(), source)


def test_both_kinds_of_donor_stop_at_one_cap_of_instances(real):
    """CopyPaste and BankPaste as built (their default caps), each with one single-pixel ship, onto an
    all-sea sample toward a share out of reach: both stop after MAX_INSTANCES instances, one pixel each
    (a placement onto an earlier one brings nothing and does not count)."""
    from dakter_scale.student.augment import MAX_INSTANCES, BankPaste, CopyPaste
    from dakter_scale.synth.target import parse_class_target

    source = real[0]
    k, ship = len(source.classes), source.classes.index("ship")
    target = parse_class_target("ship:0.5", source.classes, [1 / k] * k)
    pair = np.zeros((2, 32, 32), np.uint8)
    pair[1, 16, 16] = ship
    instance = (
        np.zeros((1, 1), np.uint8),
        np.eye(k, dtype=np.float32)[[ship]].reshape(k, 1, 1),
        np.ones((1, 1), bool),
        0.0,
    )
    sea = item(np.full((32, 32), 90, np.uint8), np.zeros((32, 32), np.uint8))
    for paste in (CopyPaste(target, {ship: [pair]}, 1.0, 0.0), BankPaste(target, {ship: [instance]}, 1.0, 0.0)):
        out = paste.paste(sea, np.random.default_rng(0))
        assert (out["mask"] == ship).sum() == MAX_INSTANCES, type(paste).__name__
