"""Regenerate one generated pair alone from its key: its seed is pair_seed(run seed, shard, index)."""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from dakter_scale.config import SamplingConfig
from dakter_scale.core.soft_labels import sample_stats
from dakter_scale.data import shards, storage
from dakter_scale.data.real import denormalise
from dakter_scale.diffusion.model import load_model_folder
from dakter_scale.diffusion.sample import sample_pairs
from dakter_scale.synth.plan import pair_seed


def regenerate(model_dir: str, key: str, run_seed: int, sampling: SamplingConfig, device: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(image uint8 (H, W), soft label float32 (K, H, W), record) of the pair with this key."""
    shard, index = shards.parse_key(key)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model_folder(model_dir, device)
    seed = pair_seed(run_seed, shard, index)
    out = sample_pairs(model, [seed], sampling, device)
    q = out.q.float().cpu()
    stats = sample_stats(q)
    record = {
        "key": key,
        "seed": seed,
        "class_fractions": [float(v) for v in stats["class_fractions"][0]],
        "mean_entropy": float(stats["mean_entropy"][0]),
        "mean_confidence": float(stats["mean_confidence"][0]),
    }
    return denormalise(out.images[0, 0]).cpu().numpy(), q[0].numpy(), record


def regenerate_to(model_dir: str, key: str, run_seed: int, sampling: SamplingConfig, out_url: str) -> dict:
    """Write KEY.image.png, KEY.soft.npy (float32, unquantised) and KEY.json to out_url."""
    image, q, record = regenerate(model_dir, key, run_seed, sampling)
    fs, root = storage.url_to_fs(out_url)
    members = shards.encode_sample(key, image, q, record)
    storage.write_bytes(fs, storage.join(root, f"{key}.image.png"), members["image.png"])
    buf = io.BytesIO()
    np.save(buf, q.astype(np.float32), allow_pickle=False)
    storage.write_bytes(fs, storage.join(root, f"{key}.soft.npy"), buf.getvalue())
    storage.write_json(fs, storage.join(root, f"{key}.json"), record)
    return record
