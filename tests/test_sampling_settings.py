"""sampling.precision and sampling.compile (issue 31 item 3): the network's arithmetic as synthesis
settings, recorded in a set's fingerprint because they change the floats, and left out of it at their
defaults so that every set written before them keeps its fingerprint."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dakter_scale.config import ConfigError, SamplingConfig, SynthesisConfig, load_config, to_dict
from dakter_scale.data.shardset import ShardSet, decode_sample
from dakter_scale.diffusion.model import load_model_folder
from dakter_scale.diffusion.sample import compile_network, sample_pairs
from dakter_scale.synth.plan import fingerprint
from dakter_scale.synth.run import synthesize


def fp(sampling: dict) -> str:
    return fingerprint("m" * 64, sampling, 0, 4, "1", 4)


def test_defaults_keep_the_fingerprints_of_earlier_sets():
    settings = to_dict(SamplingConfig())
    before = {
        k: v for k, v in settings.items() if k not in ("precision", "compile")
    }  # a set written before the settings
    assert fp(settings) == fp(before)
    assert (
        len(
            {
                fp(settings),
                fp(dict(settings, precision="bf16")),
                fp(dict(settings, precision="fp32")),
                fp(dict(settings, compile=True)),
                fp(dict(settings, compile="reduce-overhead")),
            }
        )
        == 5
    )


def test_precision_is_validated_in_one_line():
    with pytest.raises(ConfigError, match="sampling.precision"):
        SamplingConfig(precision="fp16").validate()


def test_compile_takes_cuda_graphs_as_its_reduce_overhead_mode(tmp_path, monkeypatch):
    """sampling.compile: false, true (torch.compile's default mode) or reduce-overhead (CUDA graphs), read
    from YAML and overrides as a bool or that string; anything else is one line naming the key."""
    for raw, value in (("true", True), ("false", False), ("reduce-overhead", "reduce-overhead")):
        cfg = load_config(None, [f"sampling.compile={raw}"])
        assert cfg.sampling.compile == value and type(cfg.sampling.compile) is type(value)
    with pytest.raises(ConfigError, match="sampling.compile") as e:
        load_config(None, ["sampling.compile=max-autotune"])
    assert len(str(e.value).splitlines()) == 1
    unet = torch.nn.Identity()
    assert compile_network(unet, False) is unet  # the default leaves the network as it is
    asked = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: asked.append(kw) or ("compiled", net))
    assert compile_network(unet, True) == ("compiled", unet) and compile_network(unet, "reduce-overhead")[1] is unet
    assert asked == [{}, {"mode": "reduce-overhead"}]  # true: torch.compile's default mode; the string: that mode


def test_precision_changes_the_arithmetic_on_the_cpu(model):
    m = load_model_folder(model, "cpu")
    cfg = SamplingConfig(steps=3)
    auto = sample_pairs(m, [1, 2], cfg, "cpu")
    fp32 = sample_pairs(m, [1, 2], dataclasses.replace(cfg, precision="fp32"), "cpu")
    bf16 = sample_pairs(m, [1, 2], dataclasses.replace(cfg, precision="bf16"), "cpu")
    assert torch.equal(auto.images, fp32.images) and torch.equal(auto.q, fp32.q)  # auto is fp32 off CUDA
    assert not torch.equal(bf16.images, fp32.images)  # bf16 autocast ran
    assert torch.isfinite(bf16.images).all() and torch.allclose(bf16.q.sum(1), torch.ones(1), atol=1e-5)
    assert (
        bf16.images - fp32.images
    ).abs().mean() < 0.1  # the same pairs, up to bf16 rounding (a few saturated pixels flip)


@pytest.mark.slow
def test_a_compiled_writer_writes_a_set_of_its_own(model, tmp_path):
    """torch.compile in the writer (a C++ toolchain on the CPU): the set's fingerprint differs from an
    eager set's, its pairs are close to the eager ones, and a rerun is byte-identical."""
    cfg = SynthesisConfig(n=4, samples_per_shard=4, batch_size=4, actors=0)
    eager = synthesize(model, str(tmp_path / "eager"), cfg, SamplingConfig(steps=3), progress=False, use_ray=False)
    compiled = synthesize(
        model, str(tmp_path / "compiled"), cfg, SamplingConfig(steps=3, compile=True), progress=False, use_ray=False
    )
    assert eager.ok and compiled.ok
    assert (
        ShardSet(str(tmp_path / "eager")).info().fingerprint != ShardSet(str(tmp_path / "compiled")).info().fingerprint
    )
    pairs = {
        name: {s["__key__"]: decode_sample(s)[:2] for s in ShardSet(str(tmp_path / name)).samples()}
        for name in ("eager", "compiled")
    }
    assert pairs["eager"].keys() == pairs["compiled"].keys()
    for key, (image, q) in pairs["eager"].items():  # the same pairs up to the compiled kernels' rounding
        image2, q2 = pairs["compiled"][key]
        assert np.abs(image.astype(np.float32) - image2.astype(np.float32)).mean() < 2.0 and np.abs(q - q2).max() < 0.05
    again = synthesize(
        model, str(tmp_path / "again"), cfg, SamplingConfig(steps=3, compile=True), progress=False, use_ray=False
    )
    tars = sorted(p.name for p in (tmp_path / "compiled").glob("*.tar"))
    assert again.ok and tars
    assert all((tmp_path / "again" / t).read_bytes() == (tmp_path / "compiled" / t).read_bytes() for t in tars)
