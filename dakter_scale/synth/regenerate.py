"""Regenerate one generated pair alone from its key.

Pair ``SSSSSS-IIIIII`` was drawn from seed pair_seed(run seed, shard S, index I) in the batch of its
shard that the plan fixes (plan.batch_indices). Its noise depends on its seed alone, but the
convolutions' float results depend in the last bits on the batch they run in, so the pair is
rebuilt by re-running exactly that batch (up to batch_size pairs) and keeping the one: on the same
kind of device and torch build the result is bit-identical to the pair in the shard. On another
device or build expect differences of ~1e-4 in the floats, i.e. at most one 8-bit level at a few pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from dakter_scale.config import SamplingConfig, SynthesisConfig, to_dict
from dakter_scale.core.soft_labels import sample_stats
from dakter_scale.data import storage
from dakter_scale.data.real import denormalise
from dakter_scale.data.shardset import ShardSet, encode_sample, manifest_rows
from dakter_scale.diffusion.model import load_model_folder, model_hash, sampling_for
from dakter_scale.diffusion.sample import compile_network, sample_pairs
from dakter_scale.synth.plan import Plan, PlanError, batch_indices, fingerprint, pair_seed

REGENERATED_DIR = "regenerated"


def regenerate(
    model_dir: str | Path,
    key: str,
    run_seed: int,
    sampling: SamplingConfig,
    batch_size: int,
    shard_count: int,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(image uint8 (H, W), soft label float32 (K, H, W), manifest record) of the pair with this key,
    from a shard of shard_count pairs sampled in batches of batch_size."""
    shard, index = ShardSet.parse_key(key)
    if not 0 <= index < shard_count:
        raise PlanError(f"--only-key {key}: shard {shard} holds indices 0..{shard_count - 1}")
    batch = next(b for b in batch_indices(shard_count, batch_size) if index in b)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model_folder(model_dir, device)
    model.unet = compile_network(model.unet, sampling.compile)  # as the shard's writer ran it
    seeds = [pair_seed(run_seed, shard, i) for i in batch]
    out = sample_pairs(model, seeds, sampling, device)
    j = batch.index(index)
    q = out.q[j : j + 1].float().cpu()
    record = manifest_rows(shard, [index], [seeds[j]], sample_stats(q))[0]
    return denormalise(out.images[j, 0]).cpu().numpy(), q[0].numpy(), record


def regenerate_to(
    model_dir: str | Path, key: str, cfg: SynthesisConfig, sampling: SamplingConfig, out_url: str
) -> dict:
    """Regenerate `key` of the run (model, cfg, sampling) and write OUT/regenerated/KEY.image.png,
    KEY.soft.npy (float32, unquantised) and KEY.json. When OUT holds that run's dataset.json, the
    flags must match it (else the pair would not be the one in the shard)."""
    sampling = sampling_for(model_dir, sampling)  # a distilled folder's own sampler
    shard, _ = ShardSet.parse_key(key)
    plan = Plan(cfg.n, cfg.samples_per_shard, cfg.seed)
    existing = ShardSet(out_url).info()
    if existing is not None:
        fp = fingerprint(
            model_hash(model_dir), to_dict(sampling), cfg.seed, cfg.samples_per_shard, ShardSet.FORMAT, cfg.batch_size
        )
        if existing.fingerprint != fp:
            raise PlanError(
                f"{out_url} holds a dataset made with other settings (seed {existing.seed}, samples per shard "
                f"{existing.samples_per_shard}, batch size {existing.batch_size}, {existing.sampler} x "
                f"{existing.steps} steps, model {str(existing.model_hash)[:12]}): pass the flags of the run that made it"
            )
        plan = Plan(existing.planned or cfg.n, cfg.samples_per_shard, cfg.seed)  # the shard sizes of that run
    written, _ = ShardSet(out_url).read_markers()
    # the shard's own marker knows its size, where --n or a missing dataset.json would guess it
    count = written[shard].count if shard in written else plan.task(shard).count
    image, q, record = regenerate(model_dir, key, cfg.seed, sampling, cfg.batch_size, count)
    fs, root = storage.url_to_fs(out_url)
    folder = storage.join(root, REGENERATED_DIR)
    members = encode_sample(key, image, q, record)
    storage.write_bytes(fs, storage.join(folder, f"{key}.{ShardSet.IMAGE}"), members[ShardSet.IMAGE])
    buf = io.BytesIO()
    np.save(buf, q.astype(np.float32), allow_pickle=False)
    storage.write_bytes(fs, storage.join(folder, f"{key}.soft.npy"), buf.getvalue())
    storage.write_json(fs, storage.join(folder, f"{key}.json"), record)
    return dict(record, written_to=storage.full_url(fs, folder))
