"""The shard set: the one owner of how generated pairs are laid out in storage.

A shard set is a folder or bucket prefix (any fsspec URL) holding
  shard-000000.tar      WebDataset tar, one sample per key, members sorted, fixed mtime
  shard-000000.parquet  per-sample manifest: key, shard, index, seed, class_fractions, mean_entropy, mean_confidence
  shard-000000.json     done marker, written last: count, first and last key, tar bytes and sha256,
                        fingerprint, per-shard sums (and the writer's timings)
  dataset.json          the set's header and statistics (``DatasetInfo``)
A shard exists for readers only once its marker does: a shard is written tar, then manifest, then
marker, and every reader (the student stream, the driver's rerun, ``derive``) lists markers only.

Per sample (key ``SSSSSS-IIIIII``: shard id, index in shard):
  KEY.image.png  the SAR image, 8-bit grayscale PNG (the radiometry of the training data)
  KEY.soft.png   the soft label, K probability maps stacked vertically as one (K*H, W) 8-bit PNG
                 whose K values per pixel sum to exactly 255 (codec.py: quantise)
  KEY.json       seed, shard, index, class names, class_fractions, mean_entropy, mean_confidence

This package owns the member names, the key and file names, the marker name pattern (records.py), the
``dataset.json`` schema (header.py), per-set statistics and the divergence check (health.py), and the
set itself (set.py: ``ShardSet``, its ``derive`` of a new set made from this one, resumable per shard,
and ``finish``). The bytes of one member and of one tar are the codec's (codec.py), which only this
package imports.

Reading treats every shard as hostile (docs/reliability.md, "Hostile shards"): markers and
dataset.json are type-checked, a tar's size is checked against its marker before it is read (and
its sha256 with verify="sha256"), members are capped in size from the set's ``SampleShape``, PNG
headers are checked before anything inflates, and every sample's record, sizes, class count and
level sums are checked. Every failure is a ShardError; one that spoils a single sample is a
SampleError, and the shard's other samples stay readable.
"""

from dakter_scale.data.shardset.codec import SampleError, ShardError, dequantise
from dakter_scale.data.shardset.header import DatasetInfo
from dakter_scale.data.shardset.records import (
    SampleShape,
    ShardInfo,
    decode_sample,
    encode_sample,
    manifest_rows,
    read_record,
)
from dakter_scale.data.shardset.set import ShardSet

# The surface the rest of the toolkit builds on (tests/test_layers.py checks that the library's modules
# import nothing else of this package): the set, its header, a shard, a sample's shape, the errors, and
# one sample's encoding, decoding and record. Constants of the format are ShardSet's (FORMAT, HEADER,
# IMAGE, SOFT, RECORD); the SAR statistics' key is data/sar_stats.SAR.
__all__ = [
    "ShardSet",
    "DatasetInfo",
    "ShardInfo",
    "SampleShape",
    "ShardError",
    "SampleError",
    "encode_sample",
    "decode_sample",
    "read_record",
    "dequantise",
    "manifest_rows",
]

# The format's internals, re-exported for the tests and benchmarks that build or break shards by hand;
# the library's modules import none of them (tests/test_layers.py).
from dakter_scale.data.shardset.codec import quantise as quantise  # noqa: E402
from dakter_scale.data.shardset.health import divergence as divergence  # noqa: E402
from dakter_scale.data.shardset.records import FORMAT as FORMAT  # noqa: E402
from dakter_scale.data.shardset.records import IMAGE as IMAGE  # noqa: E402
from dakter_scale.data.shardset.records import IN_PROGRESS as IN_PROGRESS  # noqa: E402
from dakter_scale.data.shardset.records import RECORD_FIELDS as RECORD_FIELDS  # noqa: E402
from dakter_scale.data.shardset.records import SOFT as SOFT  # noqa: E402
from dakter_scale.data.shardset.records import manifest_table as manifest_table  # noqa: E402
from dakter_scale.data.shardset.records import parse_key as parse_key  # noqa: E402
from dakter_scale.data.shardset.records import sample_key as sample_key  # noqa: E402
from dakter_scale.data.shardset.records import shard_name as shard_name  # noqa: E402
