"""The set itself: ShardSet at any fsspec URL (its header, listing and markers, writing a shard,
reading one back with every check, deriving a new set, finishing its dataset.json, side files)."""

from __future__ import annotations

import contextlib
import hashlib
import io
from typing import Any, Callable, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from dakter_scale.data import storage
from dakter_scale.data.sar_stats import SarCounts
from dakter_scale.data.shardset.codec import SampleError, ShardError, png_shape, read_tar, write_tar
from dakter_scale.data.shardset.header import DatasetInfo
from dakter_scale.data.shardset.health import divergence, marker_stats, sums_problem
from dakter_scale.data.shardset.records import (
    _MEMBER_SET,
    CHECKED,
    CLASS_SHARE_RATIO_WARNING,
    COMPLETE,
    DATASET_FILE,
    ENL_RATIO_WARNING,
    FORMAT,
    HISTOGRAM_TV_WARNING,
    IMAGE,
    IN_PROGRESS,
    INCOMPLETE,
    MANIFEST_RE,
    MANIFEST_SCHEMA,
    MARKER_RE,
    MAX_HEADER_BYTES,
    MAX_MARKER_BYTES,
    MEMBERS,
    RECORD,
    SHARD_PREFIX,
    SOFT,
    SampleShape,
    ShardInfo,
    _record_bytes,
    check_sample,
    load_json,
    manifest_row,
    manifest_table,
    marker_count,
    marker_problem,
    parse_key,
    read_record,
    sample_key,
    shard_marker,
    shard_name,
)

# -- the set ------------------------------------------------------------------------------------


class ShardSet:
    """A shard set at an fsspec URL (a local folder, s3://bucket/prefix, ...): its header, its
    finished shards, writing a shard, reading one back with its checks, and deriving a new set."""

    FORMAT = FORMAT  # the shard format's version, part of every set's fingerprint
    HEADER = DATASET_FILE  # the set's header file
    IMAGE, SOFT, RECORD = IMAGE, SOFT, RECORD  # the members of every sample (webdataset's extensions)

    def __init__(self, url: str):
        self.url = url
        self.where = storage.redact_url(url)  # what messages show
        self._opened = storage.ForkSafeFS(url)
        self.root = self._opened.root

    @property
    def fs(self) -> Any:
        """The set's file system, opened again in a forked process (storage.ForkSafeFS)."""
        return self._opened.fs

    def __repr__(self) -> str:
        return f"ShardSet({self.where!r})"

    def path(self, name: str) -> str:
        return storage.join(self.root, name)

    def tar_url(self, shard: int) -> str:
        return storage.full_url(self.fs, self.path(shard_name(shard, "tar")))

    @staticmethod
    def tar_name(shard: int) -> str:
        """A shard's tar, relative to the set (what a dataset card's data_files lists)."""
        return shard_name(shard, "tar")

    @staticmethod
    def parse_key(key: str) -> tuple[int, int]:
        """A sample key "SSSSSS-IIIIII" -> (shard, index); a ShardError names a malformed one."""
        return parse_key(key)

    @staticmethod
    def pairs(markers: dict[int, dict] | Iterable[dict]) -> int:
        """The pairs in the shards of these done markers."""
        return marker_count(markers.values() if isinstance(markers, dict) else markers)

    @staticmethod
    def stats(markers: dict[int, dict], num_classes: int) -> dict:
        """The statistics of the shards of these markers: pairs, class fractions, mean confidence and
        entropy, SAR statistics (what finish records as generated_stats)."""
        return marker_stats(markers, num_classes)

    # -- dataset.json

    def info(self) -> DatasetInfo | None:
        """The set's dataset.json, or None when it has none."""
        path = self.path(DATASET_FILE)
        blob = self._read_if_there(path, limit=MAX_HEADER_BYTES)
        if blob is None:
            return None
        where = storage.full_url(self.fs, path)
        if len(blob) > MAX_HEADER_BYTES:
            raise ShardError(f"{where}: more than {MAX_HEADER_BYTES} bytes, more than a dataset.json holds: not read")
        try:
            obj = load_json(blob)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, NaN
            raise ShardError(f"{where}: not valid JSON ({e})") from None
        return DatasetInfo.from_json(obj, where)

    def write_info(self, info: DatasetInfo) -> None:
        storage.write_json(self.fs, self.path(DATASET_FILE), info.to_json())

    def begin(self, header: DatasetInfo, markers: dict[int, dict]) -> None:
        """Mark the set in progress before more shards are written: `header` with the pairs of the
        shards already done (`markers`); finish writes the final header."""
        self.write_info(header.replace(status=IN_PROGRESS, count=self.pairs(markers)))

    def finish(
        self,
        header: DatasetInfo,
        markers: dict[int, dict],
        *,
        threshold: float,
        reference: Sequence[float] | None = None,
        train_sar: dict | None = None,
        enl_ratio: float = ENL_RATIO_WARNING,
        histogram_tv: float = HISTOGRAM_TV_WARNING,
        class_share_ratio: float = CLASS_SHARE_RATIO_WARNING,
        against: str = "the training data's",
        complete: bool = True,
        samples_per_shard: int | None = None,
        add_warnings: Sequence[str] = (),
        keep_warnings: bool = False,
        **fields: Any,
    ) -> tuple[DatasetInfo, list[str]]:
        """Write the dataset.json of a set whose shards are written, the one way every tool finishes a
        set (synthesis, the filter, targeted synthesis): `header` with the pair count of `markers` (the
        set's own, trusted), their statistics (marker_stats), the divergence check of those against
        `reference` (default: the header's training class fractions; its classes named by the header's
        `classes`) and `train_sar` (divergence),
        complete or incomplete (`complete`: every planned shard written), the divergence's warnings followed by `add_warnings` (keep_warnings: the header's own
        list, as a filtered set has always carried its source's), and `fields`. samples_per_shard: a set
        derived from another, planned as the pairs it holds in shards of this size. Returns (the header
        written, the divergence's warnings)."""
        count = marker_count(markers.values())
        generated = marker_stats(markers, len(header.classes or []), where=self.marker_url)
        fractions = reference or (header.train_stats or {}).get("class_fractions")
        div, warnings = divergence(
            generated,
            fractions,
            threshold,
            train_sar,
            enl_ratio,
            histogram_tv,
            against,
            class_share_ratio=class_share_ratio,
            classes=header.classes,
        )
        if samples_per_shard is not None:
            fields.update(planned=count, samples_per_shard=samples_per_shard, num_shards=-(-count // samples_per_shard))
        kept = header.warnings if keep_warnings else warnings + list(add_warnings)
        info = header.replace(
            status=COMPLETE if complete else INCOMPLETE,
            count=count,
            generated_stats=generated,
            divergence=div,
            warnings=kept,
            **fields,
        )
        self.write_info(info)
        return info, warnings

    # -- side files: what a tool keeps beside the shards (the filter's scores, a study's throughput)

    def _side(self, name: str) -> str:
        if "/" in name or name in (DATASET_FILE, "") or name.startswith((SHARD_PREFIX, "lock-", ".")):
            raise ValueError(
                f"{name!r} is not a side file's name: the shard set owns shard-*, dataset.json and lock-*"
            )  # an invariant of the callers
        return self.path(name)

    def write_side(self, name: str, data: bytes) -> None:
        """A file beside the shards, written atomically (storage.write_bytes), at any fsspec URL."""
        storage.write_bytes(self.fs, self._side(name), data)

    def read_side(self, name: str) -> bytes | None:
        """A side file's bytes, or None when the set has none of that name."""
        return self._read_if_there(self._side(name))

    def _read_if_there(self, path: str, limit: int | None = None) -> bytes | None:
        """A file's bytes read fresh, or None when it is not there. One read, not a look and then a
        read: a rerun clearing the set between the two made the read a FileNotFoundError. With a
        limit, at most limit + 1 bytes are read (more than limit: the file is larger)."""
        self.fs.invalidate_cache(self.root)
        try:
            return self.fs.cat_file(path) if limit is None else self.fs.cat_file(path, start=0, end=limit + 1)
        except FileNotFoundError:
            return None

    # -- listing and markers

    def listing(self) -> dict[str, dict]:
        """{name: info} of the files directly under the set's root, read fresh from storage."""
        return storage.list_dir(self.fs, self.root)

    def read_markers(self, listing: dict[str, dict] | None = None) -> tuple[dict[int, ShardInfo], dict[int, str]]:
        """(finished shards by id, unreadable markers by id with the reason). Markers are the files
        whose whole name is a marker's (MARKER_RE), each checked by marker_problem."""
        listing = self.listing() if listing is None else listing
        names = sorted(n for n, entry in listing.items() if MARKER_RE.match(n) and entry.get("type") != "directory")
        done: dict[int, ShardInfo] = {}
        unreadable: dict[int, str] = {}
        for name in [n for n in names if int(listing[n].get("size") or 0) > MAX_MARKER_BYTES]:
            unreadable[int(MARKER_RE.match(name).group(1))] = (
                f"marker is {listing[name]['size']} bytes, more than a marker holds ({MAX_MARKER_BYTES}): not read"
            )
            names.remove(name)
        blobs = storage.read_files(self.fs, [self.path(n) for n in names])
        for name, blob in zip(names, blobs):
            if isinstance(blob, FileNotFoundError):
                continue  # removed since the listing (a rerun retiring a stale marker): not done
            if isinstance(blob, Exception):
                raise blob  # storage trouble is no verdict on the marker
            shard = int(MARKER_RE.match(name).group(1))
            try:
                marker = load_json(blob)
            except ValueError:
                unreadable[shard] = "marker is not valid JSON"
                continue
            problem = marker_problem(marker, shard)
            if problem:
                unreadable[shard] = problem
            else:
                done[shard] = ShardInfo(shard, self.tar_url(shard), marker["count"], marker)
        return dict(sorted(done.items())), dict(sorted(unreadable.items()))

    def marker_url(self, shard: int) -> str:
        return storage.full_url(self.fs, self.path(shard_name(shard, "json")))

    def done(self) -> list[ShardInfo]:
        """Every finished shard (its marker exists), in shard order. An unreadable marker is a ShardError."""
        done, unreadable = self.read_markers()
        if unreadable:
            shard, reason = next(iter(unreadable.items()))
            raise ShardError(f"{self.marker_url(shard)}: {reason}")
        return list(done.values())

    def check(
        self,
        info: ShardInfo,
        listing: dict[str, dict],
        fingerprint: str | None,
        verify: str = "size",
        num_classes: int | None = None,
    ) -> str | None:
        """What is wrong with a finished shard against its marker, or None: another fingerprint, a
        missing tar or manifest, a tar of another size (or, with verify="sha256", another hash), or,
        given num_classes, sums the set's statistics cannot read (found now, not when a run ends)."""
        m, tar_name = info.marker, shard_name(info.shard, "tar")
        if m.get("fingerprint") not in (None, fingerprint):
            return f"marker's fingerprint {m.get('fingerprint')} is not the dataset's {fingerprint}"
        if num_classes is not None and (problem := sums_problem(m, num_classes)):
            return f"marker's {problem}"
        if tar_name not in listing:
            return "marker present but the tar is missing"
        if int(listing[tar_name].get("size", -1)) != int(m["tar_bytes"]):
            return f"marker present but the tar has {listing[tar_name].get('size')} bytes, the marker records {m['tar_bytes']}"
        if shard_name(info.shard, "parquet") not in listing:
            return "marker present but the parquet manifest is missing"
        if verify == "sha256" and self._sha256(self.path(tar_name)) != m["sha256"]:
            return "marker present but the tar's sha256 differs from the marker's"
        return None

    def _sha256(self, path: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return h.hexdigest()

    def remove_marker(self, shard: int) -> None:
        """Make a shard not done (before rewriting it, so that no reader trusts it meanwhile)."""
        with contextlib.suppress(FileNotFoundError):
            storage.remove(self.fs, self.path(shard_name(shard, "json")))

    def clear(self) -> None:
        """Remove every shard and dataset.json, markers first, so no reader trusts a shard being removed."""
        listing = self.listing()
        for name in sorted(listing, key=lambda n: (not MARKER_RE.match(n), n)):
            if not (name.startswith(SHARD_PREFIX) or name == DATASET_FILE):
                continue
            if listing[name].get("type") == "directory":
                self.fs.rm(self.path(name), recursive=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    storage.remove(self.fs, self.path(name))

    def remove_temporaries(self, min_age: float = 0.0) -> list[str]:
        """The temporary files killed writers left (shards', dataset.json's, the lock's) that nothing
        has written to for min_age seconds (0: all; only when no writer can be active): locally and on
        every backend that storage.open_atomic writes through a temporary (all but object stores)."""
        if not storage.leaves_temporaries(self.fs):
            return []
        return storage.remove_temporaries(
            self.fs, self.root, prefixes=(SHARD_PREFIX, DATASET_FILE, "lock-"), min_age=min_age
        )

    # -- writing

    def write_tar(
        self,
        shard: int,
        samples: Iterable[tuple[str, dict[str, bytes]]],
        before_commit: Callable[[], None] | None = None,
    ) -> tuple[int, str]:
        """Stream a shard's encoded samples (key order) into its tar; (bytes, sha256). Not done yet: see
        finish_shard. before_commit: the writer's fence, run right before the tar becomes visible."""
        with storage.open_atomic(self.fs, self.path(shard_name(shard, "tar")), before_commit) as f:
            return write_tar(f, samples)

    def finish_shard(
        self,
        shard: int,
        rows: list[dict[str, Any]],
        tar_bytes: int,
        sha256: str,
        fingerprint: str | None,
        extra: dict | None = None,
        sar: SarCounts | None = None,
        before_marker: Callable[[], None] | None = None,
    ) -> dict:
        """After write_tar: the manifest, then, last, the done marker (with `extra` fields and the
        shard's SAR statistics). Returns the marker. before_marker: the writer's fence, run right
        before the marker is written (after the manifest's upload, which may be slow).

        Locally each file is fsynced, and its folder after the rename, before the next is written
        (storage.open_atomic), so after a power loss a marker never stands beside a short tar or
        manifest; on object stores a completed upload is already durable."""
        self.write_parquet(shard_name(shard, "parquet"), manifest_table(rows))
        marker = {**shard_marker(shard, rows, tar_bytes, sha256, fingerprint, sar), **(extra or {})}
        if before_marker is not None:
            before_marker()
        storage.write_json(self.fs, self.path(shard_name(shard, "json")), marker)
        return marker

    def write_shard(
        self,
        shard: int,
        samples: list[tuple[str, dict[str, bytes]]],
        rows: list[dict[str, Any]],
        fingerprint: str | None,
    ) -> dict:
        """Write one whole shard of encoded samples: tar, manifest, marker. Returns the marker."""
        nbytes, sha = self.write_tar(shard, samples)
        return self.finish_shard(shard, rows, nbytes, sha, fingerprint)

    def write_parquet(self, name: str, table: pa.Table) -> None:
        """A Parquet file beside the shards (a manifest, or e.g. the filter's scores: a side file)."""
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(self.fs, self.path(name) if MANIFEST_RE.match(name) else self._side(name), buf.getvalue())

    # -- reading

    def sample_shape(self, infos: Sequence[ShardInfo] | None = None, header: DatasetInfo | None = None) -> SampleShape:
        """What every sample of this set must be: the resolution and classes of dataset.json (`header`,
        read here when not given), and what it lacks from the first shard (in `infos`, default done())
        whose first sample has a well-formed image and soft label (its headers only: nothing inflates;
        its class count agreeing with the shard's marker). Every other shard must then agree."""
        header = self.info() if header is None else header
        k = len(header.classes) if header and header.classes else None
        if header and header.resolution and k:
            return SampleShape(header.resolution, header.resolution, k)
        problems = []
        for info in self.done() if infos is None else infos:
            try:
                with self._open_tar(info) as stream:
                    sample = next(read_tar(stream, info.tar), None)
                if sample is None or IMAGE not in sample or SOFT not in sample:
                    raise ShardError("its first sample lacks an image or a soft label")
                h, w = png_shape(sample[IMAGE])
                stacked, width = png_shape(sample[SOFT])
                marker_k = len(info.marker.get("sum_class_fractions") or []) or None
                shard_k = k or marker_k or stacked // h
                if width != w or stacked != shard_k * h or (marker_k or shard_k) != shard_k:
                    raise ShardError(
                        f"its first sample's image ({h}x{w}) and soft label ({stacked}x{width}) do not hold {shard_k} class maps"
                    )
                if header and header.resolution and (h, w) != (header.resolution,) * 2:
                    raise ShardError(f"its first sample is {h}x{w}, dataset.json says {header.resolution} px")
                return SampleShape(h, w, shard_k)
            except Exception as e:  # a missing object, a hostile first sample: try the next shard
                problems.append(f"shard {info.tar}: {e}")
        raise ShardError(
            f"{self.where}: no finished shard to learn the sample size from" + (f" ({problems[0]})" if problems else "")
        )

    def read_checked(self, info: ShardInfo, shape: SampleShape, verify: str = "size") -> Iterator[dict | SampleError]:
        """The raw samples ({"__key__", "__url__", member: bytes}) of one finished shard, in key order,
        each checked against `shape` (check_sample, its parsed record left under CHECKED for
        decode_sample and read_record), with a SampleError in line for each bad one.

        Before anything is read, the tar's size (from the opened object) must be its marker's
        tar_bytes, and with verify="sha256" its hash the marker's (a first pass over the object);
        while reading, members are capped (SampleShape.member_limit) and keys must belong to this
        shard, below its count, in increasing order. The shard's own problems raise a ShardError
        naming it: the size or hash, a torn, corrupt or oversized tar, another count than its marker's
        (bad samples count), after the samples read before the damage.
        """
        if verify not in ("size", "sha256"):
            raise ValueError(f"verify must be size or sha256, got {verify!r}")
        with self._open_tar(info) as stream:
            self._check_tar(stream, info, verify)
            seen, previous, error = 0, -1, None  # previous: the index of the last good key
            torn: SampleError | None = None  # a sample lacking members: reported unless the tar's own error explains it
            try:
                for sample in read_tar(stream, info.tar, shape.member_limits()):
                    seen += 1
                    key = sample["__key__"]
                    if torn is not None:
                        yield torn
                        torn = None
                    if not _MEMBER_SET <= sample.keys():
                        torn = SampleError(
                            f"shard {info.tar}: sample {key} lacks {', '.join(m for m in MEMBERS if m not in sample)}"
                        )
                        continue
                    try:
                        previous = _key_index(key, info, previous)
                        sample[CHECKED] = check_sample(sample, shape)
                    except ShardError as e:
                        yield SampleError(f"shard {info.tar}: {e}")
                        continue
                    yield sample
                if torn is not None:
                    yield torn
            except ShardError as e:
                error = f"shard {info.tar}: {e}"
        if error is None and seen != info.count:
            error = f"shard {info.tar}: holds {seen} samples, its marker records {info.count}"
        if error:
            raise ShardError(error)

    def _open_tar(self, info: ShardInfo) -> Any:
        """A shard's tar opened through the set's own file system: info.tar is the URL messages show
        (credentials redacted), and fsspec.open would glob a "*" in it."""
        return self.fs.open(self.path(shard_name(info.shard, "tar")), "rb")

    def _check_tar(self, stream: Any, info: ShardInfo, verify: str) -> None:
        """Before a shard's tar is read: its size is its marker's tar_bytes, and with verify="sha256"
        its hash the marker's (a first pass over the object, then back to the start)."""
        expected = info.marker.get("tar_bytes")
        size = getattr(stream, "size", None)  # local: fstat; object stores: the size the open reported
        size = size if isinstance(size, int) else self.fs.size(self.path(shard_name(info.shard, "tar")))
        if expected is not None and size != expected:
            raise ShardError(f"shard {info.tar}: the tar has {size} bytes, its marker records {expected}")
        if verify == "sha256":
            digest = hashlib.sha256()
            for chunk in iter(lambda: stream.read(1 << 22), b""):
                digest.update(chunk)
            if digest.hexdigest() != info.marker.get("sha256"):
                raise ShardError(f"shard {info.tar}: the tar's sha256 differs from its marker's")
            stream.seek(0)

    def read(self, info: ShardInfo, shape: SampleShape | None = None, verify: str = "size") -> Iterator[dict]:
        """The good samples of one finished shard (read_checked; `shape` default: the set's). Bad
        samples are skipped; after the last sample, a ShardError reports the shard's own problem, or
        else the first bad sample."""
        first_bad = None
        for sample in self.read_checked(info, shape or self.sample_shape(), verify):
            if isinstance(sample, SampleError):
                first_bad = first_bad or sample
            else:
                yield sample
        if first_bad is not None:
            raise first_bad

    def samples(self) -> Iterator[dict]:
        """Every raw sample of every finished shard, in key order."""
        infos = self.done()
        shape = self.sample_shape(infos) if infos else None
        for info in infos:
            yield from self.read(info, shape)

    def manifest(self) -> pa.Table:
        """The per-sample manifest of all finished shards as one Arrow table. Each shard's table must be
        its shard's: one row per pair its marker counts, every key of that shard (selection reads the
        class fractions from here, so a manifest of other rows would choose other pairs)."""
        tables = []
        for info in self.done():
            path = self.path(shard_name(info.shard, "parquet"))
            where = storage.full_url(self.fs, path)
            try:
                with self.fs.open(path, "rb") as f:
                    table = pq.read_table(f)
            except FileNotFoundError:
                raise ShardError(f"{where}: missing, though the shard's marker is there") from None
            except (pa.ArrowException, OSError) as e:
                raise ShardError(f"{where}: not a readable manifest ({storage.error_line(e)})") from None
            keys = table.column("key").to_pylist() if "key" in table.column_names else None
            if keys is None or len(keys) != info.count:
                raise ShardError(f"{where}: {table.num_rows} rows, the marker counts {info.count} pairs")
            try:
                foreign = [k for k in keys if parse_key(k)[0] != info.shard]
            except ShardError as e:
                raise ShardError(f"{where}: {e}") from None
            if foreign:
                raise ShardError(f"{where}: holds key {foreign[0]} of another shard")
            tables.append(_checked_manifest(table, keys, info.count, where))
        if tables:
            widths = {len(t.column("class_fractions")[0]) for t in tables if t.num_rows}
            if len(widths) > 1:
                raise ShardError(f"{self.where}: the manifests' class fractions have {sorted(widths)} classes")
        return pa.concat_tables(tables) if tables else manifest_table([])

    # -- a set made from this one

    def derive(
        self,
        destination: str,
        transform: Callable[[str, dict], dict],
        fingerprint: str,
        samples_per_shard: int,
        keys: Sequence[str] | None = None,
        check: Callable[[], None] | None = None,
    ) -> dict[int, dict]:
        """Write a new set at `destination` from this set's pairs `keys` (default: all), in that order,
        renumbered into shards of samples_per_shard. Image and soft-label members are copied byte for
        byte; each pair's JSON record gains transform(source_key, record) and its new key. check: called
        before anything is cleared or written, before each shard and before its marker (the caller's Lease.check, which
        raises once the destination's lease may have lapsed: a stalled writer writes nothing more).

        Resumable per shard: a destination that holds this derivation (its dataset.json has this
        fingerprint and shard size) keeps every shard whose marker has this fingerprint and the
        planned count, and only the source shards that the missing ones need are read again; a
        destination holding anything else is cleared first. dataset.json is left "in progress" with
        the set's identity: the caller writes the finished header. Returns the markers by shard.
        """
        sources = {info.shard: info for info in self.done()}
        shape = self.sample_shape(list(sources.values())) if sources else None
        keys = (
            list(keys)
            if keys is not None
            else [sample_key(i.shard, j) for i in sources.values() for j in range(i.count)]
        )
        layout = [keys[i : i + samples_per_shard] for i in range(0, len(keys), samples_per_shard)]
        dst = ShardSet(destination)
        try:
            existing = dst.info()
        except ShardError:
            existing = None
        check = check or (lambda: None)
        check()
        if existing is None or existing.fingerprint != fingerprint or existing.samples_per_shard != samples_per_shard:
            dst.clear()
        source = self.info() or DatasetInfo()
        dst.write_info(
            DatasetInfo(
                status=IN_PROGRESS,
                fingerprint=fingerprint,
                samples_per_shard=samples_per_shard,
                classes=source.classes,
                resolution=source.resolution,
            )
        )

        finished, unreadable = dst.read_markers()
        markers: dict[int, dict] = {}
        for shard, info in finished.items():
            if (
                shard < len(layout)
                and info.marker.get("fingerprint") == fingerprint
                and info.count == len(layout[shard])
            ):
                markers[shard] = info.marker
        for shard in sorted(set(finished) | set(unreadable)):  # stale: not done any more before anything is written
            if shard not in markers:
                dst.remove_marker(shard)

        todo = {key: shard for shard, shard_keys in enumerate(layout) if shard not in markers for key in shard_keys}
        waiting: dict[int, dict[str, dict]] = {}
        for source_shard in sorted({parse_key(k)[0] for k in todo}):
            if source_shard not in sources:
                raise ShardError(
                    f"{self.where}: shard {source_shard} is not finished (no marker), but pairs to derive are in it"
                )
            for sample in self.read(sources[source_shard], shape):
                shard = todo.get(sample["__key__"])
                if shard is None:
                    continue
                waiting.setdefault(shard, {})[sample["__key__"]] = sample
                if len(waiting[shard]) == len(layout[shard]):
                    check()
                    markers[shard] = dst._write_derived(
                        shard, [waiting[shard][k] for k in layout[shard]], transform, fingerprint, check
                    )
                    del waiting[shard]
        if waiting:
            shard = min(waiting)
            missing = [k for k in layout[shard] if k not in waiting[shard]]
            if not missing:  # every key read, yet the shard is short: its layout names a pair twice
                raise ShardError(f"{self.where}: the pairs to derive into shard {shard} name a pair more than once")
            raise ShardError(
                f"{self.where} holds no pair {missing[0]} ({len(missing)} of the pairs to derive are missing)"
            )
        return dict(sorted(markers.items()))

    def _write_derived(
        self,
        shard: int,
        samples: list[dict],
        transform: Callable[[str, dict], dict],
        fingerprint: str,
        check: Callable[[], None],
    ) -> dict:
        members, rows = [], []
        for index, sample in enumerate(samples):
            key = sample_key(shard, index)
            record = read_record(sample)
            record = dict(record, **transform(sample["__key__"], record), key=key, shard=shard, index=index)
            members.append((key, {IMAGE: sample[IMAGE], SOFT: sample[SOFT], RECORD: _record_bytes(record)}))
            rows.append(manifest_row(record))
        nbytes, sha = self.write_tar(shard, members)
        check()  # again before the marker, the commit: the lease may have lapsed while the tar was written
        return self.finish_shard(shard, rows, nbytes, sha, fingerprint)


def _key_index(key: str, info: ShardInfo, previous: int) -> int:
    """The index of a shard's sample `key` read after the one at `previous` (-1 before the first): one
    of the shard's keys, after the previous one (a repeated key would train a pair twice), else a SampleError."""
    index = previous + 1
    if key != sample_key(info.shard, index):  # not the next key, as written: which is it?
        shard, index = parse_key(key)
        if shard != info.shard or index >= info.count:
            raise SampleError(f"sample {key}: not one of shard {info.shard}'s {info.count} keys")
        if index <= previous:
            raise SampleError(f"sample {key}: out of key order (a repeated or misplaced key)")
    elif index >= info.count:
        raise SampleError(f"sample {key}: not one of shard {info.shard}'s {info.count} keys")
    return index


def _checked_manifest(table: pa.Table, keys: list[str], count: int, where: str) -> pa.Table:
    """A shard's manifest as written (records.MANIFEST_SCHEMA), or a ShardError naming what is wrong:
    a column missing or of another type, a key repeated or past the shard's count, class fractions of
    rows of unequal length or not finite and >= 0, a mean that is not finite. Selection and statistics
    read these numbers: a hostile manifest must not steer them."""
    import numpy as np
    import pyarrow.compute as pc

    try:
        table = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
    except (KeyError, pa.ArrowException) as e:
        raise ShardError(f"{where}: not a manifest of this format ({storage.error_line(e)})") from None
    indices = [parse_key(k)[1] for k in keys]
    if len(set(indices)) != len(indices) or (indices and max(indices) >= count):
        raise ShardError(f"{where}: its keys are not the shard's {count} keys, each once")
    fractions = table.column("class_fractions")
    widths = pc.unique(pc.list_value_length(fractions)).to_pylist()
    if len(widths) > 1 or None in widths:
        raise ShardError(f"{where}: class fractions of rows of {sorted(w for w in widths if w is not None)} classes")
    values = np.asarray(pc.list_flatten(fractions).to_numpy(zero_copy_only=False), dtype=np.float64)
    if not (np.isfinite(values).all() and (values >= 0).all()):
        raise ShardError(f"{where}: class fractions that are not finite and >= 0")
    for name in ("mean_entropy", "mean_confidence"):
        column = np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
        if not np.isfinite(column).all():
            raise ShardError(f"{where}: a {name} that is not a finite number")
    return table
