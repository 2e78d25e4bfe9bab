"""A shard set read by the tools people already use: a stock ``webdataset.WebDataset`` pipeline and a
Hugging Face ``datasets`` recipe, both over the set's finished shards and both decoding with the
shard set's own decoder (``shardset.decode_sample``: the PNG reader and the soft-label levels of
data/shardset/codec.py), so that a user's training loop sees exactly the images and probabilities the
toolkit's student sees.

    from dakter_scale.data import webdataset_pipeline
    for sample in webdataset_pipeline("s3://bucket/dakter/v1", labels="soft"):
        sample["image"]   # float32 (1, H, W) in [-1, 1]: x = u / 127.5 - 1, as the toolkit trains on
        sample["soft"]    # float32 (K, H, W) class probabilities summing to 1 (labels="soft")
        sample["mask"]    # int64 (H, W) argmax class, first maximum on ties (labels="hard")
        sample["json"]    # the pair's checked record: seed, shard, index, class_fractions, ...

    from datasets import Image, load_dataset
    from dakter_scale.data.interop import finished_tars, hf_transform
    ds = load_dataset("webdataset", data_files={"train": finished_tars(url)}, split="train")
    ds = ds.cast_column("image.png", Image(decode=False)).cast_column("soft.png", Image(decode=False))
    ds = ds.with_transform(hf_transform(url, labels="soft"))   # the same decoder, per row (hf_dataset: all three)

What the stock readers do NOT check (docs/reliability.md, "Hostile shards"). The shards a pipeline
reads are listed from the done markers, so a shard still being written is never seen, and each
listed tar's size (verify="size") or sha256 (verify="sha256", one extra read of every tar) is
checked against its marker when the pipeline is built. Every sample is then decoded by the
toolkit's checked decoder (record, PNG headers before a bounded inflate, sizes, class count, levels
summing to 255). But the tars themselves are expanded by webdataset's reader (Python's ``tarfile``)
or by ``datasets``: a tar replaced after the check, a member far larger than a PNG of the set's
size (read whole into memory), or a tar cut between members (read as a valid, shorter archive)
are not caught there. For shards from storage you do not control, use ``checked_pipeline``: a stock
``webdataset.DataPipeline`` whose tars are read by the toolkit's reader, ``ShardSet(url).read(info)``
(sizes checked as each tar is opened, members capped, keys and counts against the marker), as the
student stream reads them.

Credentials. The tar URLs the stock readers get (``finished_tars``, the pipeline's shard list) are the
records' URLs, with credentials redacted so that no reader's log or error can show them: a set whose
URL carries them (``ftp://user:password@host/...``, an https URL with a token parameter) is read through
``checked_pipeline``, which opens each tar through the set's own file system, or with the credentials in
the environment or ``storage_options`` instead of the URL (object stores take them only from there).
"""

from __future__ import annotations

import json
from typing import Any, Callable
from urllib.parse import urlparse

import fsspec
import torch

from dakter_scale.data import storage
from dakter_scale.data.real import normalise
from dakter_scale.data.shardset import (
    SampleShape,
    ShardError,
    ShardInfo,
    ShardSet,
    decode_sample,
    dequantise,
)
from dakter_scale.data.stream import class_argmax

IMAGE, SOFT, RECORD = ShardSet.IMAGE, ShardSet.SOFT, ShardSet.RECORD

LABELS = ("soft", "hard")


def _check_labels(labels: str) -> None:
    if labels not in LABELS:
        raise ValueError(f"labels must be soft or hard, got {labels!r}")


def finished(url: str, verify: str = "size") -> tuple[ShardSet, list[ShardInfo], SampleShape]:
    """The set's finished shards (those with a done marker), each checked against its marker: its
    dataset's fingerprint, its tar and manifest present, the tar's size (verify="sha256": its hash).
    A ShardError names the first shard that fails, or says the set has no finished shard."""
    if verify not in ("size", "sha256"):
        raise ValueError(f"verify must be size or sha256, got {verify!r}")
    shards = ShardSet(url)
    infos = shards.done()
    if not infos:
        raise ShardError(f"{storage.redact_url(url)}: no finished shard (no done marker shard-NNNNNN.json)")
    header = shards.info()
    listing = shards.listing()
    for info in infos:
        fingerprint = (
            header.fingerprint if header is not None and header.fingerprint else info.marker.get("fingerprint")
        )
        problem = shards.check(info, listing, fingerprint, verify)
        if problem:
            raise ShardError(f"{storage.redact_url(info.tar)}: {problem}")
    return shards, infos, shards.sample_shape(infos, header)


def finished_tars(url: str, verify: str = "size") -> list[str]:
    """The URLs of the set's finished shards' tars, in shard order, checked (``finished``): what to hand
    ``datasets.load_dataset("webdataset", data_files=...)`` or any other WebDataset reader."""
    return [info.tar for info in finished(url, verify)[1]]


def decode(sample: dict[str, Any], labels: str = "soft", shape: SampleShape | None = None) -> dict[str, Any]:
    """One raw sample -> tensors, through the shard set's checked decoder (a SampleError names a bad one).

    `sample` is what a WebDataset reader yields without a decoder ({"__key__", "image.png": bytes,
    "soft.png": bytes, "json": bytes}) or a ``datasets`` row of the webdataset builder with its PNG
    columns left undecoded (``Image(decode=False)``: {"bytes": ..., "path": ...}) and its "json" parsed.
    Returns {"__key__", "image": float32 (1, H, W) in [-1, 1], "soft": float32 (K, H, W) or "mask":
    int64 (H, W), "json": the record}.
    """
    _check_labels(labels)
    raw = {"__key__": sample.get("__key__", "?")}
    for member in (IMAGE, SOFT, RECORD):
        if member not in sample:
            continue  # decode_sample names what is missing
        value = sample[member]
        if isinstance(value, dict) and "bytes" in value:  # a datasets Image(decode=False) cell
            value = value["bytes"]
        elif member == RECORD and isinstance(value, dict):  # datasets parses JSON members
            value = json.dumps(value).encode()
        raw[member] = value
    image, levels, record = decode_sample(raw, levels=True, shape=shape)
    out = {"__key__": raw["__key__"], "image": normalise(image)[None], "json": record}
    if labels == "soft":
        out["soft"] = torch.from_numpy(dequantise(levels))
    else:
        out["mask"] = torch.from_numpy(class_argmax(levels))
    return out


def hf_transform(url_or_shape: str | SampleShape, labels: str = "soft") -> Callable[[dict[str, list]], dict[str, list]]:
    """A ``datasets`` batch transform (``Dataset.with_transform``, or ``map(..., batched=True)``) that decodes
    the webdataset builder's rows with ``decode``; the sample shape is the set's (give its URL) or `shape`.
    The PNG columns must be left undecoded (``ds.cast_column("image.png", datasets.Image(decode=False))``, and
    "soft.png"): Pillow's decoding is not the toolkit's checked one."""
    _check_labels(labels)
    shape = url_or_shape if isinstance(url_or_shape, SampleShape) else finished(url_or_shape)[2]

    def transform(batch: dict[str, list]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        decoded = [
            decode({k: _png_bytes(v, k, row) if k in (IMAGE, SOFT) else v for k, v in row.items()}, labels, shape)
            for row in rows
        ]
        return {name: [d[name] for d in decoded] for name in decoded[0]} if decoded else {}

    return transform


def _png_bytes(cell: Any, column: str = "", row: dict | None = None) -> Any:
    """A datasets Image cell left undecoded ({"bytes", "path"}) or raw bytes; a decoded (PIL) image is refused
    in one line naming the column and the sample."""
    if isinstance(cell, (dict, bytes, bytearray)):
        return cell
    raise TypeError(
        f"sample {(row or {}).get('__key__', '?')}: column {column!r} is a decoded {type(cell).__name__}; the PNG"
        f" columns must be left undecoded: ds.cast_column({column!r}, datasets.Image(decode=False)) (see hf_dataset)"
    )


def hf_dataset(url: str, labels: str = "soft", verify: str = "size", **load_kwargs: Any):
    """The set as a Hugging Face ``datasets.Dataset`` (or ``IterableDataset`` with streaming=True) of
    decoded tensors: ``load_dataset("webdataset", data_files=finished_tars(url))``, the PNG columns
    left undecoded, and ``hf_transform`` (map-style: on access; streaming: per row)."""
    from datasets import Image, load_dataset

    _, infos, shape = finished(url, verify)
    ds = load_dataset("webdataset", data_files={"train": [info.tar for info in infos]}, split="train", **load_kwargs)
    ds = ds.cast_column(IMAGE, Image(decode=False)).cast_column(SOFT, Image(decode=False))
    transform = hf_transform(shape, labels)
    if hasattr(ds, "with_transform") and not load_kwargs.get("streaming"):
        return ds.with_transform(transform)
    return ds.map(transform, batched=True, remove_columns=[IMAGE, SOFT, RECORD, "__url__"])


def _fsspec_open(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any):
    """webdataset's gopen handler for a scheme it lacks (s3://, gs://, az://, memory://): the stream fsspec opens."""
    return fsspec.open(url, mode).open()


def webdataset_pipeline(
    url: str, labels: str = "soft", verify: str = "size", handler: Callable | None = None, **webdataset_kwargs: Any
):
    """A stock ``webdataset.WebDataset`` over the set's finished shards (``finished``: listed from the done
    markers and checked against them now), mapped through ``decode``; chain ``.shuffle(n)``,
    ``.batched(b)`` etc. as with any WebDataset. `webdataset_kwargs` go to ``WebDataset`` (default
    shardshuffle=False: shards in order; nodesplitter for several nodes); `handler` is the error policy of
    both the tar reading and the decoding (default: raise; ``webdataset.warn_and_continue`` skips a bad sample).

    Object-store URLs (s3://, gs://, ...) are opened through fsspec, with the credentials and endpoint of
    the environment (AWS_* variables, ~/.aws, gcloud), like the rest of the toolkit: a scheme webdataset
    has no opener for gets fsspec's in webdataset's ``gopen_schemes`` table. See this module's docstring for
    what the stock tar reader does not check.
    """
    import webdataset as wds
    from webdataset.gopen import gopen_schemes

    _check_labels(labels)
    _, infos, shape = finished(url, verify)
    urls = [info.tar for info in infos]
    scheme = urlparse(urls[0]).scheme
    if scheme not in ("", "file") and len(scheme) > 1:  # one letter: a Windows drive
        gopen_schemes.setdefault(scheme, _fsspec_open)
    handler = handler or wds.reraise_exception
    dataset = wds.WebDataset(urls, handler=handler, **{"shardshuffle": False, **webdataset_kwargs})
    return dataset.map(lambda sample: decode(sample, labels, shape), handler=handler)


def _checked_samples(sources, shards: ShardSet, infos: dict[str, ShardInfo], shape: SampleShape, verify: str):
    """A webdataset stage: {"url": tar} in, that shard's raw samples out, read by the toolkit's reader."""
    for source in sources:
        yield from shards.read(infos[source["url"]], shape, verify)


def checked_pipeline(url: str, labels: str = "soft", verify: str = "size", split_by_node: bool = False):
    """The hostile-shard-safe variant of ``webdataset_pipeline``: a stock ``webdataset.DataPipeline``
    (shard list, worker split, then chain ``webdataset.shuffle(n)``, ``webdataset.batched(b)`` with
    ``.compose``) whose tars are read by the toolkit's reader, ``ShardSet.read``: each tar's size (or
    sha256) checked against its marker as it is opened, members capped from the set's sample size, keys
    and the pair count against the marker. A shard that fails raises its ShardError after the samples
    read before the damage; a bad sample, its SampleError after the shard's good ones (as the student
    stream's ``student.on_bad_shard=raise``)."""
    import functools

    import webdataset as wds

    _check_labels(labels)
    shards, infos, shape = finished(url, verify)
    stages = [wds.SimpleShardList([info.tar for info in infos])]
    if split_by_node:
        stages.append(wds.split_by_node)
    stages += [
        wds.split_by_worker,
        functools.partial(
            _checked_samples, shards=shards, infos={info.tar: info for info in infos}, shape=shape, verify=verify
        ),
        wds.map(functools.partial(decode, labels=labels, shape=shape)),
    ]
    return wds.DataPipeline(*stages)


__all__ = [
    "LABELS",
    "checked_pipeline",
    "decode",
    "finished",
    "finished_tars",
    "hf_dataset",
    "hf_transform",
    "webdataset_pipeline",
]
