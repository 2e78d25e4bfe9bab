"""Core maths: joint packing and b, soft-label decoding, KD loss, metrics, schedule conversions."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dakter_scale.core import compose, joint, kd, metrics, schedule, soft_labels


def _alpha_bar(n=1000):
    betas = torch.linspace(1e-4, 0.02, n, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


# -- b and SNR ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(2, 6),
    offset=st.floats(-0.8, 0.8),
    spread=st.floats(0.01, 0.9),
)
def test_b_auto_equalises_snr_at_every_timestep(seed, k, offset, spread):
    gen = torch.Generator().manual_seed(seed)
    x = (offset + spread * torch.randn(4, 1, 16, 16, generator=gen, dtype=torch.float64)).clamp(-1, 1)
    mask = torch.randint(0, k, (4, 16, 16), generator=gen)
    b = joint.resolve_b("auto", joint.ImageStats.of(x))
    z0 = joint.pack(x, joint.one_hot(mask, k).double(), b)
    img, lab = joint.unpack(z0)
    power_x = float((img**2).mean())
    power_y = float((lab**2).mean())
    alpha_bar = _alpha_bar()
    snr_x = joint.snr(alpha_bar, power_x)
    snr_y = joint.snr(alpha_bar, power_y)
    assert torch.allclose(snr_x, snr_y, rtol=1e-9, atol=0)
    # Unbalanced (b = 1) the label's SNR is higher at every timestep whenever E[x^2] < 1.
    unbalanced = joint.snr(alpha_bar, float((joint.pack(x, joint.one_hot(mask, k).double(), 1.0)[:, 1:] ** 2).mean()))
    if power_x < 0.999:
        assert bool((unbalanced > snr_x).all())


def test_b_modes_and_errors():
    stats = joint.ImageStats(mean=-0.3, mean_sq=0.25, pixels=100)
    assert joint.resolve_b("auto", stats) == pytest.approx(0.5)
    assert joint.resolve_b("auto-std", stats) == pytest.approx(math.sqrt(0.25 - 0.09))
    assert joint.resolve_b(0.528, None) == 0.528
    assert joint.resolve_b("0.7", None) == 0.7
    for bad in ("banana", -1, 0, float("inf")):
        with pytest.raises(ValueError):
            joint.resolve_b(bad, stats)
    with pytest.raises(ValueError, match="statistics"):
        joint.resolve_b("auto", None)


def test_image_stats_merge_matches_whole():
    x = torch.rand(1000, dtype=torch.float64) * 2 - 1
    a, b = joint.ImageStats.of(x[:300]), joint.ImageStats.of(x[300:])
    whole = joint.ImageStats.of(x)
    merged = a.merge(b)
    assert merged.mean == pytest.approx(whole.mean) and merged.mean_sq == pytest.approx(whole.mean_sq)


def test_pack_shapes_and_errors():
    x = torch.zeros(2, 1, 8, 8)
    y = joint.one_hot(torch.zeros(2, 8, 8, dtype=torch.long), 3)
    z = joint.pack(x, y, 0.5)
    assert z.shape == (2, 4, 8, 8)
    assert set(z[:, 1:].unique().tolist()) == {-0.5, 0.5}
    with pytest.raises(ValueError):
        joint.pack(torch.zeros(2, 2, 8, 8), y, 0.5)
    with pytest.raises(ValueError, match="outside"):
        joint.one_hot(torch.full((1, 2, 2), 3), 3)


def test_clip_x0_per_modality():
    z = torch.tensor([3.0, 2.0, -2.0]).reshape(1, 3, 1, 1)
    clipped = joint.clip_x0(z, 0.3)
    assert clipped.flatten().tolist() == pytest.approx([1.0, 0.3, -0.3])


# -- soft labels ----------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 6), b=st.floats(0.05, 1.5), scale=st.floats(0.1, 30))
def test_decoded_soft_labels_are_distributions(seed, k, b, scale):
    y0 = torch.randn(2, k, 5, 5, generator=torch.Generator().manual_seed(seed)) * scale
    for method in soft_labels.DECODES:
        q = soft_labels.decode(y0, b, method)
        assert bool(((q >= 0) & (q <= 1)).all())
        assert torch.allclose(q.sum(dim=1), torch.ones(2, 5, 5), atol=1e-5)


@pytest.mark.parametrize("b", [0.25, 0.528, 1.0])
def test_decoding_a_clean_packed_one_hot_gives_it_back(b):
    mask = torch.randint(0, 5, (3, 7, 7), generator=torch.Generator().manual_seed(1))
    onehot = joint.one_hot(mask, 5)
    _, y = joint.unpack(joint.pack(torch.zeros(3, 1, 7, 7), onehot, b))
    assert torch.equal(soft_labels.decode_mean(y, b), onehot)


def test_decode_mean_of_posterior_mean_recovers_probabilities():
    p = torch.tensor([0.7, 0.2, 0.1]).reshape(1, 3, 1, 1)
    b = 0.4
    y0 = b * (2 * p - 1)  # the posterior mean E[y0] of a pixel with these class probabilities
    assert torch.allclose(soft_labels.decode_mean(y0, b), p, atol=1e-6)


def test_decode_all_clamped_pixel_is_uniform():
    y0 = torch.full((1, 4, 1, 1), -5.0)
    assert torch.allclose(soft_labels.decode_mean(y0, 0.5), torch.full((1, 4, 1, 1), 0.25))


def test_sample_stats_hand_computed():
    q = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).T.reshape(1, 2, 1, 2)  # pixel 0 certain class 0, pixel 1 split
    s = soft_labels.sample_stats(q)
    assert s["mean_confidence"].item() == pytest.approx(0.75)
    assert s["mean_entropy"].item() == pytest.approx(math.log(2) / 2, rel=1e-5)
    assert s["class_fractions"][0].tolist() == pytest.approx([1.0, 0.0])  # ties go to the first class


# -- KD loss --------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), t=st.sampled_from([0.5, 1.0, 2.0, 4.0]))
def test_kd_loss_nonnegative_and_minimal_at_teacher(seed, t):
    gen = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn(2, 4, 3, 3, generator=gen) * 2, dim=1)
    logits = torch.randn(2, 4, 3, 3, generator=gen) * 3
    loss = kd.kd_loss(logits, q, t)
    assert float(loss) >= 0
    # The student whose tempered softmax equals the (tempered) teacher: logits = log q.
    at_teacher = kd.kd_loss(q.log(), q, t)
    assert float(at_teacher) == pytest.approx(0.0, abs=1e-5)
    assert float(at_teacher) <= float(loss) + 1e-6
    # A small step away from the teacher increases the loss.
    nudged = kd.kd_loss(q.log() + 0.3 * torch.randn(2, 4, 3, 3, generator=gen), q, t)
    assert float(nudged) > float(at_teacher)


def test_kd_loss_hand_computed():
    q = torch.tensor([0.5, 0.5]).reshape(1, 2, 1, 1)
    logits = torch.tensor([math.log(0.25), math.log(0.75)]).reshape(1, 2, 1, 1)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(kd.kd_loss(logits, q)) == pytest.approx(expected, rel=1e-5)


def test_kd_loss_zero_probability_classes_are_fine():
    q = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)
    logits = torch.tensor([2.0, 0.0, -1.0]).reshape(1, 3, 1, 1)
    ce = torch.nn.functional.cross_entropy(logits, torch.zeros(1, 1, 1, dtype=torch.long))
    assert float(kd.kd_loss(logits, q)) == pytest.approx(float(ce), rel=1e-5)  # one-hot teacher: KD == CE


def test_kd_tempered_teacher_keeps_ruled_out_classes_at_zero():
    """With T = 4 the target is q^(1/T) normalised: a one-hot teacher stays one-hot (KD == T^2 * CE at
    logits / T), and a class with q = 0 gets no mass (a clamp before the log gave it about 1 % a class)."""
    q = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)
    logits = torch.tensor([2.0, 0.0, -1.0]).reshape(1, 3, 1, 1)
    ce = torch.nn.functional.cross_entropy(logits / 4, torch.zeros(1, 1, 1, dtype=torch.long))
    assert float(kd.kd_loss(logits, q, 4.0)) == pytest.approx(16 * float(ce), rel=1e-5)
    half = torch.tensor([0.64, 0.36, 0.0]).reshape(1, 3, 1, 1)  # q^(1/2) = 0.8, 0.6, 0 -> 4/7, 3/7, 0
    target = torch.tensor([4 / 7, 3 / 7])
    log_p = torch.log_softmax(logits / 2, dim=1).flatten()[:2]
    expected = 4 * float((target * (target.log() - log_p)).sum())
    assert float(kd.kd_loss(logits, half, 2.0)) == pytest.approx(expected, rel=1e-5)


def test_kd_confidence_weighting_hand_computed():
    # two pixels: a confident teacher (0.9) and an unsure one (0.5); weights 0.9^2 and 0.5^2
    q = torch.tensor([[0.9, 0.5], [0.1, 0.5]]).reshape(1, 2, 1, 2)
    logits = torch.zeros(1, 2, 1, 2)  # student 0.5 / 0.5 everywhere
    kl = [0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5), 0.0]
    w = [0.9**2, 0.5**2]
    expected = (w[0] * kl[0] + w[1] * kl[1]) / sum(w)
    assert float(kd.kd_loss_per_sample(logits, q, confidence_power=2)[0]) == pytest.approx(expected, rel=1e-5)
    assert float(kd.kd_loss_per_sample(logits, q)[0]) == pytest.approx(sum(kl) / 2, rel=1e-5)
    # uniform confidence: the weighted mean is the plain mean (the sample's total weight is unchanged)
    flat = torch.tensor([[0.8, 0.8], [0.2, 0.2]]).reshape(1, 2, 1, 2)
    rand = torch.randn(1, 2, 1, 2)
    assert float(kd.kd_loss_per_sample(rand, flat, confidence_power=3)[0]) == pytest.approx(
        float(kd.kd_loss_per_sample(rand, flat)[0]), rel=1e-6
    )
    with pytest.raises(ValueError, match="confidence power"):
        kd.kd_loss_per_sample(logits, q, confidence_power=-1)


def test_mixed_loss_soft_vs_hard():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 2, 2, generator=gen)
    mask = torch.randint(0, 3, (4, 2, 2), generator=gen)
    q = torch.softmax(torch.randn(4, 3, 2, 2, generator=gen), dim=1)
    q[:2] = joint.one_hot(mask[:2], 3)  # real samples carry their mask as one-hot labels (data/stream.collate)
    is_gen = torch.tensor([False, False, True, True])
    soft, parts = kd.mixed_loss(logits, mask, q, is_gen, labels="soft")
    hard, hparts = kd.mixed_loss(logits, mask, q, is_gen, labels="hard")
    ce_real = kd.ce_loss_per_sample(logits[:2], mask[:2])
    kd_gen = kd.kd_loss_per_sample(logits[2:], q[2:])
    ce_gen = kd.ce_loss_per_sample(logits[2:], q[2:].argmax(dim=1))
    assert float(soft) == pytest.approx(float(torch.cat([ce_real, kd_gen]).mean()), rel=1e-6)
    assert float(hard) == pytest.approx(float(torch.cat([ce_real, ce_gen]).mean()), rel=1e-6)
    taken = lambda p: {k for k, v in p.items() if not torch.isnan(v)}  # noqa: E731 (NaN: no sample took it)
    assert taken(parts) == {"ce_real", "kd"} and taken(hparts) == {"ce_real", "ce_generated"}
    # the weights act on their own samples only: lambda on soft generated, hard_weight on hard generated
    soft_half, _ = kd.mixed_loss(logits, mask, q, is_gen, labels="soft", kd_weight=0.5)
    hard_half, _ = kd.mixed_loss(logits, mask, q, is_gen, labels="hard", hard_weight=0.5)
    assert float(soft_half) == pytest.approx(float(torch.cat([ce_real, 0.5 * kd_gen]).mean()), rel=1e-6)
    assert float(hard_half) == pytest.approx(float(torch.cat([ce_real, 0.5 * ce_gen]).mean()), rel=1e-6)
    # the confidence power reaches the KD term and leaves the hard baseline alone
    soft_conf, _ = kd.mixed_loss(logits, mask, q, is_gen, labels="soft", confidence_power=2)
    kd_conf = kd.kd_loss_per_sample(logits[2:], q[2:], confidence_power=2)
    assert float(soft_conf) == pytest.approx(float(torch.cat([ce_real, kd_conf]).mean()), rel=1e-6)
    assert float(soft_conf) != pytest.approx(float(soft), rel=1e-6)
    assert float(kd.mixed_loss(logits, mask, q, is_gen, labels="hard", confidence_power=2)[0]) == pytest.approx(
        float(hard), rel=1e-6
    )
    with pytest.raises(ValueError):
        kd.mixed_loss(logits, mask, q, is_gen, labels="fuzzy")


# -- metrics --------------------------------------------------------------------------------------


def test_a_real_sample_with_pasted_soft_labels_takes_the_soft_ce():
    """A real sample whose labels are one-hot takes the CE on its mask; one with soft labels somewhere
    (generated instances pasted in, student/augment.py) takes ce_weight * KL(q || softmax(logits)),
    which has the CE's gradient where q is one-hot."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, generator=gen, requires_grad=True)
    mask = torch.randint(0, 3, (2, 4, 4), generator=gen)
    q = joint.one_hot(mask, 3)
    q[1, :, 0, 0] = torch.tensor([0.2, 0.5, 0.3])  # one pixel of soft label on the second sample
    loss, parts = kd.mixed_loss(logits, mask, q, torch.tensor([False, False]), labels="soft", ce_weight=2.0)
    expected = torch.stack(
        [kd.ce_loss_per_sample(logits[:1], mask[:1])[0], kd.kd_loss_per_sample(logits[1:], q[1:])[0]]
    )
    assert float(loss) == pytest.approx(float(2.0 * expected.mean()), rel=1e-6)
    assert {k for k, v in parts.items() if not torch.isnan(v)} == {
        "ce_real",
        "soft_real",
    }  # kd: NaN, no generated sample
    # where q is one-hot the soft CE's gradient is the CE's
    hard_q = joint.one_hot(mask, 3)
    g_kl = torch.autograd.grad(kd.kd_loss_per_sample(logits, hard_q).sum(), logits)[0]
    g_ce = torch.autograd.grad(kd.ce_loss_per_sample(logits, mask).sum(), logits)[0]
    assert torch.allclose(g_kl, g_ce, atol=1e-6)


def test_confusion_matrix_counts_and_ignore():
    pred = torch.tensor([0, 1, 1, 2, 2, 0])
    target = torch.tensor([0, 1, 2, 2, 255, 1])
    cm = metrics.confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]


def test_metrics_hand_computed():
    cm = np.array([[50, 10], [5, 35]])  # rows true, columns predicted
    m = metrics.metrics_from_confusion(cm, ["sea", "oil"])
    iou0, iou1 = 50 / (50 + 10 + 5), 35 / (35 + 5 + 10)
    assert m["iou"] == pytest.approx([iou0, iou1])
    assert m["miou"] == pytest.approx((iou0 + iou1) / 2)
    assert m["precision"] == pytest.approx([50 / 55, 35 / 45])
    assert m["recall"] == pytest.approx([50 / 60, 35 / 40])
    assert m["f1"] == pytest.approx([2 * 50 / (100 + 15), 2 * 35 / (70 + 15)])
    assert m["pixel_accuracy"] == pytest.approx(85 / 100)
    assert m["pixels"] == 100


def test_metrics_absent_class_is_null_and_excluded():
    cm = np.array([[4, 0, 0], [0, 4, 0], [0, 0, 0]])
    m = metrics.metrics_from_confusion(cm)
    assert m["iou"] == [1.0, 1.0, None]
    assert m["miou"] == 1.0
    # Predicted but absent from the truth: IoU 0, counted.
    m2 = metrics.metrics_from_confusion(np.array([[3, 1], [0, 0]]))
    assert m2["iou"] == [0.75, 0.0] and m2["miou"] == pytest.approx(0.375)


def test_perfect_and_worst_bounds():
    assert metrics.metrics_from_confusion(np.diag([5, 7, 9]))["miou"] == 1.0
    worst = metrics.metrics_from_confusion(np.array([[0, 5], [5, 0]]))
    assert worst["miou"] == 0.0 and worst["mean_f1"] == 0.0


# -- schedule conversions -------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", schedule.PREDICTION_TYPES)
def test_x0_eps_round_trip(prediction_type):
    gen = torch.Generator().manual_seed(3)
    z0 = torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64)
    a = torch.tensor([0.9, 0.5, 0.01], dtype=torch.float64)
    z_t = schedule.add_noise(z0, eps, a)
    out = schedule.target(z0, eps, a, prediction_type)
    x0_hat, eps_hat = schedule.to_x0_eps(out, z_t, a, prediction_type)
    assert torch.allclose(x0_hat, z0, atol=1e-9) and torch.allclose(eps_hat, eps, atol=1e-9)
    assert torch.allclose(schedule.eps_from_x0(z0, z_t, a), eps, atol=1e-9)


def test_joint_loss_zero_at_target_and_label_weighting():
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 3, 4, 4, generator=gen)
    eps = torch.randn(2, 3, 4, 4, generator=gen)
    a = torch.tensor([0.5, 0.9])
    z_t = schedule.add_noise(z0, eps, a)
    loss, _ = schedule.joint_denoising_loss(eps, z0, eps, z_t, a, "epsilon", 0.5)
    assert float(loss) == 0.0
    out = eps.clone()
    out[:, 1:] += 1.0  # error only in the label channels
    plain, _ = schedule.joint_denoising_loss(out, z0, eps, z_t, a, "epsilon", 0.5)
    assert float(plain) == pytest.approx(float(((out - eps) ** 2).mean()))  # weight 1 = the plain joint MSE
    heavy, _ = schedule.joint_denoising_loss(out, z0, eps, z_t, a, "epsilon", 0.5, label_loss_weight=3.0)
    assert float(heavy) > float(plain)


@pytest.mark.parametrize(
    "image_type,label_type", [("epsilon", "sample"), ("v_prediction", "sample"), ("epsilon", "v_prediction")]
)
def test_per_modality_parameterisation_round_trip(image_type, label_type):
    gen = torch.Generator().manual_seed(5)
    z0 = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    a = torch.tensor([0.7, 0.05], dtype=torch.float64)
    z_t = schedule.add_noise(z0, eps, a)
    out = schedule.joint_target(z0, eps, a, image_type, label_type)
    assert torch.allclose(out[:, :1], schedule.target(z0, eps, a, image_type)[:, :1])
    assert torch.allclose(out[:, 1:], schedule.target(z0, eps, a, label_type)[:, 1:])
    x0_hat, eps_hat = schedule.joint_to_x0_eps(out, z_t, a, image_type, label_type)
    assert torch.allclose(x0_hat, z0, atol=1e-9) and torch.allclose(eps_hat, eps, atol=1e-9)


@pytest.mark.parametrize("labels", ["soft", "hard"])
def test_the_mixed_loss_is_one_graph_with_no_host_sync_and_matches_eager(labels):
    """Whether any sample takes a term, or which ones, is never asked of the device (a host sync per
    step on a GPU): the loss traces as one graph (fullgraph fails on a data-dependent branch, a boolean
    index or a float()), and gives the eager loss and parts, a term no sample took as NaN."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 3, 4, 4, generator=gen)
    mask = torch.randint(0, 3, (6, 4, 4), generator=gen)
    q = joint.one_hot(mask, 3)
    q[4:] = torch.softmax(torch.randn(2, 3, 4, 4, generator=gen), dim=1)
    is_gen = torch.tensor([False] * 4 + [True] * 2)
    traced = torch.compile(kd.mixed_loss, backend="eager", fullgraph=True)
    loss, parts = traced(logits, mask, q, is_gen, labels=labels, temperature=2.0)
    eager, eager_parts = kd.mixed_loss(logits, mask, q, is_gen, labels=labels, temperature=2.0)
    assert torch.equal(loss, eager) and parts.keys() == eager_parts.keys()
    assert torch.isnan(parts["soft_real"]) and not torch.isnan(parts["ce_real"])  # no real sample has soft labels


def indexed_mixed_loss(logits, mask, q, is_generated, *, labels, ce_weight, kd_weight, temperature, confidence_power):
    """The loss as it was before it stopped asking the device which samples take which term: boolean
    indexing, one term per subset (the reference the evidence study's students trained with)."""
    gen = is_generated.to(torch.bool)
    per_sample = torch.zeros(logits.shape[0])
    soft = ~gen & (q.amax(dim=1) < 1).flatten(1).any(dim=1)
    hard = ~gen & ~soft
    if hard.any():
        per_sample[hard] = ce_weight * kd.ce_loss_per_sample(logits[hard], mask[hard])
    if soft.any():
        per_sample[soft] = ce_weight * kd.kd_loss_per_sample(logits[soft], q[soft])
    if gen.any():
        if labels == "soft":
            per_sample[gen] = kd_weight * kd.kd_loss_per_sample(logits[gen], q[gen], temperature, confidence_power)
        else:
            per_sample[gen] = ce_weight * kd.ce_loss_per_sample(logits[gen], q[gen].argmax(dim=1))
    return per_sample.mean()


def test_the_mixed_loss_gives_the_indexed_losses_and_gradients_bit_for_bit():
    gen = torch.Generator().manual_seed(3)
    for trial in range(12):
        logits = torch.randn(8, 5, 8, 8, generator=gen)
        mask = torch.randint(0, 5, (8, 8, 8), generator=gen)
        q = torch.softmax(3 * torch.randn(8, 5, 8, 8, generator=gen), dim=1)
        is_gen = torch.rand(8, generator=gen) < 0.5
        q[~is_gen] = joint.one_hot(mask[~is_gen], 5)
        q[int(torch.argmin(is_gen.int())), :, 0, 0] = torch.tensor([0.2, 0.3, 0.5, 0.0, 0.0])  # pasted soft labels
        for labels in ("soft", "hard"):
            kw = dict(
                labels=labels,
                ce_weight=1.3,
                kd_weight=0.7,
                temperature=(1.0, 2.0)[trial % 2],
                confidence_power=(0.0, 1.0)[trial // 6],
            )
            a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
            expected, got = indexed_mixed_loss(a, mask, q, is_gen, **kw), kd.mixed_loss(b, mask, q, is_gen, **kw)[0]
            expected.backward()
            got.backward()
            assert torch.equal(got, expected) and torch.equal(b.grad, a.grad)


# -- copy-paste toward a goal (core.compose.paste_toward, paste_onto, paste_soft) -------------------

SEA, SHIP, LAND = 0, 3, 4


def _donors(core: np.ndarray, size: int = 16):
    """The one instance `core` (h, w) bool of class SHIP as both kinds of donor: a real pair (2, size,
    size) holding it at the centre (paste_onto), and a banked instance cropped to it (paste_soft)."""
    h, w = core.shape
    pair = np.zeros((2, size, size), np.uint8)
    pair[0] = 100
    y, x = (size - h) // 2, (size - w) // 2
    pair[1, y : y + h, x : x + w][core] = SHIP
    pair[0, y : y + h, x : x + w][core] = 200
    q = np.zeros((5, h, w), np.float32)
    q[SHIP][core], q[SEA][~core] = 1, 1
    return {SHIP: [pair]}, {SHIP: [(np.where(core, 200, 0).astype(np.uint8), q, core.copy(), 100.0)]}


def _both(image, mask, goal, seed, max_pastes, max_draws=256, core=None):
    """Ship pixels after pasting toward `goal` (a share) with each kind of donor: (real, banked)."""
    real, banked = _donors(np.ones((1, 1), bool) if core is None else core, mask.shape[0])
    goals = {SHIP: goal}
    _, out, _ = compose.paste_onto(image, mask, real, goals, np.random.default_rng(seed), max_pastes, max_draws)
    q = np.eye(5, dtype=np.float32)[mask].transpose(2, 0, 1)
    _, q_out, _, _ = compose.paste_soft(image, q, banked, goals, np.random.default_rng(seed), max_pastes, max_draws)
    return int((out == SHIP).sum()), int((q_out.argmax(0) == SHIP).sum())


def test_both_kinds_of_donor_stop_at_the_goal_by_one_rule():
    """Single-pixel instances onto an all-sea sample, the goal 30.5 pixels: real pairs and banked
    instances alike paste until the goal is met and stop there (31 pixels), one instance a paste under
    the same cap, whatever one real pair would have held."""
    image, mask = np.full((16, 16), 90, np.uint8), np.zeros((16, 16), np.uint8)
    for seed in range(5):
        assert _both(image, mask, 30.5 / 256, seed, max_pastes=64) == (31, 31)
        assert _both(image, mask, 30.5 / 256, seed, max_pastes=20) == (20, 20)  # the cap counts instances


def test_a_placement_that_brings_nothing_of_its_class_uses_up_no_paste():
    """A sample all land but a 4x4 corner of sea: most placements of a 2x2 ship fall on land and bring
    nothing. They are drawn again (up to max_draws), not counted against max_pastes, so four pastes
    reach a goal of four pixels with either kind of donor."""
    image, mask = np.full((16, 16), 90, np.uint8), np.full((16, 16), LAND, np.uint8)
    mask[:4, :4] = SEA
    for seed in range(10):
        real, banked = _both(image, mask, 4 / 256, seed, max_pastes=4, core=np.ones((2, 2), bool))
        assert real >= 4 and banked >= 4, (seed, real, banked)


def test_less_than_a_pixel_missing_takes_any_instance_that_brings_one():
    """A 1x3 ship onto an all-sea 16x16 sample, the goal 3.25 pixels: after the first instance a quarter
    pixel is missing, and no instance brings at most twice that. The exception for the last fraction of
    a pixel lets a second one in (1 to 3 pixels, 4 to 6 in all), so the sample meets its goal with
    either kind of donor; without it the sample would stop short at 3."""
    image, mask = np.full((16, 16), 90, np.uint8), np.zeros((16, 16), np.uint8)
    for seed in range(10):
        real, banked = _both(image, mask, 3.25 / 256, seed, max_pastes=64, core=np.ones((1, 3), bool))
        assert 4 <= real <= 6 and 4 <= banked <= 6, (seed, real, banked)


def test_an_instance_that_brings_more_than_twice_what_is_missing_is_skipped():
    """A 1x3 ship onto an all-sea sample. One pixel missing: 3 > 2, so the banked instance is never
    pasted (0 pixels after max_draws), and the real pair only as the 1- or 2-pixel pieces its cyclic
    shift sometimes cuts it into. A pixel and a half missing: 3 <= 3, the boundary is pasted."""
    image, mask = np.full((16, 16), 90, np.uint8), np.zeros((16, 16), np.uint8)
    ship = np.ones((1, 3), bool)
    for seed in range(10):
        real, banked = _both(image, mask, 1 / 256, seed, max_pastes=64, core=ship)
        assert 1 <= real <= 2 and banked == 0, (seed, real, banked)
        assert _both(image, mask, 1.5 / 256, seed, max_pastes=64, core=ship)[1] == 3, seed


def test_a_draw_stops_in_the_middle_when_the_class_is_done():
    """A real pair with four 1-pixel ships apart: one draw gives four pieces, but pasting stops within
    it at max_pastes (2), and at a goal of 2 pixels."""
    image, mask = np.full((16, 16), 90, np.uint8), np.zeros((16, 16), np.uint8)
    pair = np.zeros((2, 16, 16), np.uint8)
    pair[1, 2::8, 2::8] = SHIP
    for seed in range(5):
        for goal, max_pastes in ((0.5, 2), (2 / 256, 64)):
            _, out, _ = compose.paste_onto(
                image, mask, {SHIP: [pair]}, {SHIP: goal}, np.random.default_rng(seed), max_pastes, 256
            )
            assert (out == SHIP).sum() == 2, (seed, goal)


def test_a_sample_that_cannot_reach_its_goal_stops_after_max_draws():
    """A draw whose piece brings nothing (on land, or fitting nowhere) counts as a draw: the loop stops
    after max_draws; a sample without sea stops before drawing."""
    image, mask = np.full((8, 8), 90, np.uint8), np.full((8, 8), LAND, np.uint8)
    mask[0, 0] = SEA
    region = np.zeros((8, 8), bool)
    region[4, 4] = True  # always lands on land
    draws = []

    def draw(c):
        draws.append(c)
        yield compose.Piece(0, 0, image, np.full((8, 8), SHIP), region, None, 90.0, (c,))

    out = compose.paste_toward(image, mask, {SHIP: 0.5}, draw, max_pastes=3, max_draws=17)
    assert len(draws) == 17 and not out[3].any() and out[4] == []
    draws.clear()
    compose.paste_toward(image, np.full((8, 8), LAND), {SHIP: 0.5}, draw, max_pastes=3, max_draws=17)
    assert draws == []
    big = {SHIP: [(np.zeros((9, 9), np.uint8), np.zeros((5, 9, 9), np.float32), np.ones((9, 9), bool), 0.0)]}
    q = np.eye(5, dtype=np.float32)[np.zeros((8, 8), np.int64)].transpose(2, 0, 1)
    _, _, given, _ = compose.paste_soft(image, q, big, {SHIP: 0.5}, np.random.default_rng(0), 3, 17)
    assert not given.any()  # an instance that fits nowhere: 17 draws, nothing pasted


def test_a_soft_edge_most_probably_sea_is_sea_to_later_instances():
    """An oil instance whose soft edge covers all the sea of an 8x8 sample: the ship pasted after it
    lands on that edge (it is most probably sea), not nowhere; the oil's own pixels stay oil."""
    OIL = 1
    image, q = np.full((8, 8), 90, np.uint8), np.zeros((5, 8, 8), np.float32)
    q[SEA] = 1
    oil_q = np.zeros((5, 8, 8), np.float32)
    oil_q[SEA], oil_q[OIL] = 0.7, 0.3  # the edge: most probably sea
    oil_q[:, :2, :2] = 0
    oil_q[OIL, :2, :2] = 1  # the core, 4 pixels
    donors = {
        OIL: [(np.full((8, 8), 50, np.uint8), oil_q, np.ones((8, 8), bool), 90.0)],
        SHIP: [
            (
                np.full((1, 1), 200, np.uint8),
                np.eye(5, dtype=np.float32)[[SHIP]].reshape(5, 1, 1),
                np.ones((1, 1), bool),
                90.0,
            )
        ],
    }
    for seed in range(5):
        _, out, given, placements = compose.paste_soft(
            image, q, donors, {OIL: 4 / 64, SHIP: 3 / 64}, np.random.default_rng(seed), 64, 256
        )
        top = out.argmax(0)
        assert given.all() and (top == OIL).sum() == 4 and (top == SHIP).sum() == 3, seed
        assert [p[0] for p in placements] == [OIL, SHIP, SHIP, SHIP]
