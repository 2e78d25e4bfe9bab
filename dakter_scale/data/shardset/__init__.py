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

from dakter_scale.data.shardset.codec import SampleError, ShardError
from dakter_scale.data.shardset.codec import dequantise as dequantise
from dakter_scale.data.shardset.codec import quantise as quantise
from dakter_scale.data.shardset.header import DatasetInfo
from dakter_scale.data.shardset.health import divergence as divergence
from dakter_scale.data.shardset.health import marker_stats as marker_stats
from dakter_scale.data.shardset.health import stats_lines as stats_lines
from dakter_scale.data.shardset.records import CHECKED as CHECKED
from dakter_scale.data.shardset.records import COMPLETE as COMPLETE
from dakter_scale.data.shardset.records import DATASET_FILE as DATASET_FILE
from dakter_scale.data.shardset.records import FORMAT as FORMAT
from dakter_scale.data.shardset.records import IMAGE as IMAGE
from dakter_scale.data.shardset.records import IN_PROGRESS as IN_PROGRESS
from dakter_scale.data.shardset.records import INCOMPLETE as INCOMPLETE
from dakter_scale.data.shardset.records import MARKER_RE as MARKER_RE
from dakter_scale.data.shardset.records import RECORD as RECORD
from dakter_scale.data.shardset.records import RECORD_FIELDS as RECORD_FIELDS
from dakter_scale.data.shardset.records import SAR as SAR
from dakter_scale.data.shardset.records import SOFT as SOFT
from dakter_scale.data.shardset.records import SampleShape, ShardInfo, decode_sample, encode_sample
from dakter_scale.data.shardset.records import manifest_rows as manifest_rows
from dakter_scale.data.shardset.records import manifest_table as manifest_table
from dakter_scale.data.shardset.records import marker_count as marker_count
from dakter_scale.data.shardset.records import parse_key as parse_key
from dakter_scale.data.shardset.records import read_record as read_record
from dakter_scale.data.shardset.records import sample_key as sample_key
from dakter_scale.data.shardset.records import shard_name as shard_name
from dakter_scale.data.shardset.set import ShardSet

# The surface the rest of the toolkit builds on. The names imported "as" themselves above are read here
# by modules that still reach into the format (synthesis's writer and driver, the student stream, the
# interop reader, the cards, the tests); each is a candidate to move behind ShardSet.
__all__ = [
    "ShardSet",
    "ShardInfo",
    "DatasetInfo",
    "ShardError",
    "SampleError",
    "SampleShape",
    "encode_sample",
    "decode_sample",
]
