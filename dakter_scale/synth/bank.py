"""The instance bank: instances of the rare classes cut from generated pairs, judged, kept as a shard set.

X-Paste and DiverGen paste generated instances rather than whole scenes; this is that route here.
From every pair of a generated set, for each class of ``synthesis.bank.classes`` (oil and ships by
default; any class by name), each 4-connected component of the pixels whose soft label gives the
class at least ``threshold`` is an instance (core.compose.instance_regions): its core, and its soft
edge (``edge`` pixels around it, where the pair is sea or the class) whose soft labels are kept. A
real-only judge (any student folder, e.g. the study's real-only student) segments the pair's image;
an instance is kept when the judge's pixels of its class over its region overlap its core with IoU at
least ``min_agreement`` (the label-alignment filter's idea, synth/filter.py, per instance). The kept
ones are written as an instance bank (data/bank.py owns the format) that copy-paste draws donors
from (student.instance_bank, student/augment.py).

One bank shard per source shard, by the same runner as synthesis (dist.driver.drive over a
``BankWriter`` per process or Ray actor; the judge's folder travels through the object store), at
any fsspec URL, under the bank's lease. Exactly once and resumable: a bank shard is done when its
marker, written last, carries this bank's fingerprint (source set, judge weights, settings) and the
sha256 of the source shard it was cut from; a source shard whose pairs give no instance is recorded
in the side file ``empty_shards.json`` instead. A rerun cuts only what is missing: the shards of a
source set that grew since (synthesis reuses full shards), or of a killed run. The bytes depend on
the source shard and the judge alone, so the local and the Ray runs write the same bank.

``grow_bank`` makes the bank's size a knob: it synthesizes pairs and cuts them until the bank holds N
instances (the source set grows by whole shards, each kept).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dakter_scale.cards import write_dataset_card
from dakter_scale.config import BankConfig, SamplingConfig, SynthesisConfig, to_dict
from dakter_scale.core.compose import instance_regions
from dakter_scale.data.bank import BANK_FIELD, BANK_FORMAT, BankError, encode_instance
from dakter_scale.data.lease import Lease, check_ref
from dakter_scale.data.shardset import (
    DatasetInfo,
    ShardInfo,
    ShardSet,
    decode_sample,
)
from dakter_scale.data.storage import redact_url
from dakter_scale.dist.driver import Progress, Workers
from dakter_scale.dist.folder import load_shipped, pack_folder
from dakter_scale.dist.strategies import run_tasks
from dakter_scale.student.evaluate import segment
from dakter_scale.student.models import STUDENT_WEIGHTS, load_student, read_student_info
from dakter_scale.synth.run import remove_dead_temporaries, synthesize
from dakter_scale.synth.worker import _maybe_fault

log = logging.getLogger("dakter_scale")

EMPTY = "empty_shards.json"  # side file: source shards cut that gave no instance, with their sha256


# -- cutting and judging: pure functions of a pair -------------------------------------------------


def cut_pair(levels: np.ndarray, classes: list[int], cfg: BankConfig) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """A generated pair's soft label as uint8 levels (K, H, W) -> its instances of `classes` (indices),
    each (class, component number from 1, core, region): core.compose.instance_regions at the
    threshold (in levels: q_c >= threshold), components of fewer than min_pixels pixels left out."""
    out = []
    for c in classes:
        regions = instance_regions(levels.astype(np.float64), c, cfg.threshold * 255 - 1e-9, cfg.edge)
        out += [(c, j, core, region) for j, (core, region) in enumerate(regions, 1) if core.sum() >= cfg.min_pixels]
    return out


def agreement(pred: np.ndarray, c: int, core: np.ndarray, region: np.ndarray) -> float:
    """The judge's agreement with an instance: IoU of its core with the judge's pixels of class c over
    the instance's region (other instances of the pair do not count)."""
    judged = (pred == c) & region
    union = np.count_nonzero(judged | core)
    return float(np.count_nonzero(judged & core) / union) if union else 0.0


def sea_level(image: np.ndarray, levels: np.ndarray) -> float:
    """A pair's sea level: the median image value where its most probable class is sea (all pixels if none)."""
    sea = np.argmax(levels, axis=0) == 0
    return float(np.median(image[sea] if sea.any() else image))


# -- the worker: one source shard per call ---------------------------------------------------------


@dataclass(frozen=True)
class BankTask:
    """Cut source shard `source.shard` into bank shard of the same number."""

    source: ShardInfo
    attempt: int = 0

    @property
    def name(self) -> str:
        return f"bank shard {self.source.shard}"

    def retry(self) -> "BankTask":
        return BankTask(self.source, self.attempt + 1)


class BankWriter:
    """Cuts, judges and writes whole bank shards. Build once per process (it loads the judge); call per shard."""

    def __init__(
        self,
        judge: str | Path | dict[str, bytes],
        source_url: str,
        out_url: str,
        classes: list[str],
        bank: dict[str, Any],
        resolution: int,
        fingerprint: str,
        threads: int = 1,
        device: str | None = None,
        lease: dict | None = None,
    ):
        t0 = time.time()
        self.device = torch.device(device or "cpu")
        torch.set_num_threads(max(1, threads))
        self.judge, _ = load_shipped(judge, lambda d: load_student(d, self.device))  # a dict: through Ray
        self.cfg = BankConfig(**{**bank, "classes": tuple(bank["classes"])})
        self.classes, self.resolution = list(classes), resolution
        self.cut = [self.classes.index(name) for name in self.cfg.classes]
        self.source, self.out, self.fingerprint, self.lease = (
            ShardSet(source_url),
            ShardSet(out_url),
            fingerprint,
            lease,
        )
        self.load_seconds = time.time() - t0

    @staticmethod
    def pack(args: dict, put: Callable[[Any], Any]) -> dict:
        """Arguments for actors on other nodes: the judge's folder through the object store."""
        return dict(args, judge=put(pack_folder(args["judge"])))

    def ready(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "pid": os.getpid(),
            "load_seconds": round(self.load_seconds, 3),
            "niceness": os.nice(0),
        }

    def __call__(self, task: BankTask) -> dict[str, Any]:
        """The bank shard of task.source: its marker, or (no instance kept) {"empty": True, ...}."""
        t0 = time.time()
        source = task.source
        pairs = [decode_sample(s, levels=True) for s in self.source.read(source)]
        images = np.stack([image for image, _, _ in pairs]) if pairs else np.zeros((0, 1, 1), np.uint8)
        with torch.no_grad():
            preds = segment(self.judge, images).numpy() if pairs else np.zeros((0,))
        samples, rows, by_class, candidates = [], [], dict.fromkeys(self.cfg.classes, 0), 0
        for (image, levels, meta), pred in zip(pairs, preds):
            level = sea_level(image, levels)
            for c, j, core, region in cut_pair(levels, self.cut, self.cfg):
                candidates += 1
                score = agreement(pred, c, core, region)
                if score < self.cfg.min_agreement:
                    continue
                key = f"{source.shard:06d}-{len(samples):06d}"
                fields = {
                    "class": self.classes[c],
                    "core": int(core.sum()),
                    "sea": round(level, 3),
                    "judge": round(score, 6),
                    "source_key": meta["key"],
                    "component": j,
                }
                members, row = encode_instance(key, image, levels, region, self.classes, fields, meta)
                samples.append((key, members))
                rows.append(row)
                by_class[self.classes[c]] += 1
                _maybe_fault(source.shard, len(samples))  # the testing hook of synth/worker.py
        extra = {
            "source_shard": source.shard,
            "source_sha256": source.marker["sha256"],
            "candidates": candidates,
            "rejected": candidates - len(samples),
            "by_class": by_class,
            "seconds": round(time.time() - t0, 3),
        }
        fence = functools.partial(check_ref, self.lease)  # a run that lost its prefix never writes there
        fence()
        if not samples:
            return {"empty": True, "shard": source.shard, "fingerprint": self.fingerprint, **extra}
        nbytes, sha = self.out.write_tar(source.shard, samples, before_commit=fence)
        return self.out.finish_shard(
            source.shard, rows, nbytes, sha, self.fingerprint, extra=extra, before_marker=fence
        )


# -- the driver ------------------------------------------------------------------------------------


@dataclass
class BankSummary:
    """What a bank run did, and the bank's counts."""

    out: str
    count: int = 0  # instances in the bank
    by_class: dict[str, int] = dataclasses.field(default_factory=dict)
    candidates: int = 0
    rejected: int = 0
    cut: list[int] = dataclasses.field(default_factory=list)  # source shards cut by this run
    skipped: list[int] = dataclasses.field(default_factory=list)  # done before
    failed: dict[int, str] = dataclasses.field(default_factory=dict)
    strategy: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def lines(self) -> list[str]:
        return [
            f"instance bank {self.out}: {self.count} instances ({', '.join(f'{k} {v}' for k, v in self.by_class.items())}); "
            f"{self.candidates} cut, {self.rejected} rejected by the judge",
            f"  source shards cut now: {len(self.cut)}, done before: {len(self.skipped)}, failed: {len(self.failed)}",
        ] + [f"    shard {s}: {reason}" for s, reason in sorted(self.failed.items())]


def bank_fingerprint(source: DatasetInfo, judge: Path, cfg: BankConfig) -> str:
    """What makes a bank's bytes: the source set, the judge's weights, the cut's settings, the format."""
    h = hashlib.sha256()
    settings = {k: v for k, v in to_dict(cfg).items() if k != "max_pairs"}
    h.update(
        json.dumps({"source": source.fingerprint, "settings": settings, "format": BANK_FORMAT}, sort_keys=True).encode()
    )
    h.update(hashlib.sha256((judge / STUDENT_WEIGHTS).read_bytes()).digest())
    return h.hexdigest()[:16]


def check_bank_inputs(source_url: str, judge: str | Path, cfg: BankConfig) -> tuple[DatasetInfo, dict]:
    """The source set's header and the judge's student.json, or a BankError in one line: no source set,
    a class to cut that the set does not have (or sea), a judge of other classes."""
    info = ShardSet(source_url).info()
    if info is None or not info.classes or not info.resolution:
        raise BankError(
            f"--shards {redact_url(source_url)}: not a generated set (no dataset.json with classes); run jobs/synthesize.py first"
        )
    unknown = [c for c in cfg.classes if c not in info.classes[1:]]
    if unknown:
        raise BankError(
            f"synthesis.bank.classes: {', '.join(unknown)} is not a class of the generated set ({', '.join(info.classes[1:])}; sea is not cut)"
        )
    judge_info = read_student_info(judge)
    if list(judge_info["classes"]) != list(info.classes):
        raise BankError(f"--judge {judge} has classes {judge_info['classes']}, the generated set {info.classes}")
    return info, judge_info


def build_bank(
    source_url: str,
    out_url: str,
    judge: str | Path,
    cfg: BankConfig,
    synthesis: SynthesisConfig = SynthesisConfig(),
    *,
    use_ray: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    device: str = "auto",
    break_lock: bool = False,
) -> BankSummary:
    """Cut every finished shard of the generated set at source_url that the bank at out_url lacks (module
    docstring); synthesis's actors, threads_per_actor, max_in_flight, retries and lease_seconds run it.
    A prefix holding another bank (or set) is refused in one line unless overwrite; a prefix another
    run holds (its lease) too, unless break_lock (a killed run's lease lapses by itself after
    synthesis.lease_seconds). Returns the summary;
    a shard that failed for good is in summary.failed (the rest is kept)."""
    t0 = time.time()
    judge = Path(judge)
    src_info, judge_info = check_bank_inputs(source_url, judge, cfg)
    fp = bank_fingerprint(src_info, judge, cfg)
    lease = Lease(out_url, f"instance bank {fp[:12]}", synthesis.lease_seconds).acquire(break_lock=break_lock)
    try:
        run = _BankRun(source_url, out_url, judge, judge_info, cfg, synthesis, src_info, fp, lease)
        summary = run.run(use_ray=use_ray, progress=progress, overwrite=overwrite, device=device)
    finally:
        lease.release()
    summary.seconds = time.time() - t0
    return summary


@dataclass
class _BankRun:
    """One build_bank run under its lease: which shards the bank keeps, cutting the rest, the header."""

    source_url: str
    out_url: str
    judge: Path
    judge_info: dict
    cfg: BankConfig
    synthesis: SynthesisConfig
    source_info: DatasetInfo
    fingerprint: str
    lease: Lease

    def __post_init__(self) -> None:
        self.source, self.out = ShardSet(self.source_url), ShardSet(self.out_url)

    def run(self, *, use_ray: bool, progress: bool, overwrite: bool, device: str) -> BankSummary:
        summary = BankSummary(redact_url(self.out_url))
        existing = self.other_set(overwrite)
        sources, _ = self.source.read_markers()
        markers, empties = self.kept(sources, existing)
        todo = [BankTask(info) for shard, info in sources.items() if shard not in markers and shard not in empties]
        summary.skipped = sorted(set(markers) | set(empties))
        header = DatasetInfo(
            fingerprint=self.fingerprint,
            classes=list(self.source_info.classes),
            resolution=self.source_info.resolution,
            num_shards=len(sources),
            code_version=self.source_info.code_version,
        )
        record = self.record(sources)
        if todo:
            self.out.begin(header.replace(extra={BANK_FIELD: record}), markers)
            self.cut(todo, markers, empties, summary, use_ray=use_ray, progress=progress, device=device)
            remove_dead_temporaries(self.out, self.lease)
        for m in list(markers.values()) + list(empties.values()):
            summary.candidates += int(m["candidates"])
            summary.rejected += int(m["rejected"])
        summary.by_class = {c: sum(int(m["by_class"].get(c, 0)) for m in markers.values()) for c in self.cfg.classes}
        summary.count = sum(int(m["count"]) for m in markers.values())
        complete = self.source_info.complete and len(markers) + len(empties) == len(sources) and summary.ok
        record.update(
            count=summary.count, by_class=summary.by_class, candidates=summary.candidates, rejected=summary.rejected
        )
        self.lease.check()
        self.out.finish(header, markers, threshold=1.0, complete=complete, extra={BANK_FIELD: record})
        self.lease.check()
        write_dataset_card(self.out_url)
        return summary

    def other_set(self, overwrite: bool) -> DatasetInfo | None:
        """The prefix's header; another set or bank there is refused in one line, or removed with overwrite."""
        try:
            existing = self.out.info()
        except Exception:  # an unreadable dataset.json: another set, or a broken one
            existing = DatasetInfo(fingerprint="unreadable")
        if existing is None or existing.fingerprint == self.fingerprint:
            return existing
        if not overwrite:
            what = (existing.extra or {}).get(BANK_FIELD, {}).get("source") if existing.extra else None
            raise BankError(
                f"--out {redact_url(self.out_url)} already holds another set (fingerprint {existing.fingerprint}"
                + (f", a bank of {what}" if what else "")
                + f"), not this bank ({self.fingerprint}); choose a new prefix or pass --overwrite"
            )
        log.warning("--overwrite: removing the set in %s", redact_url(self.out_url))
        self.lease.check()
        self.out.clear()
        return None

    def empties(self) -> dict:
        """The side file of source shards that gave no instance; one that is not a JSON object (broken,
        or written by something else) counts as none, so those shards are cut again."""
        try:
            empty = json.loads(self.out.read_side(EMPTY) or b"{}")
        except ValueError:
            empty = None
        if not isinstance(empty, dict):
            log.warning("instance bank %s: %s is unreadable: its shards are cut again", redact_url(self.out_url), EMPTY)
            return {}
        return empty

    def kept(self, sources: dict[int, ShardInfo], existing: DatasetInfo | None) -> tuple[dict, dict]:
        """(markers, empties) of the source shards this bank already cut, each for the source shard's
        current bytes; every other marker is removed before anything is written."""
        listing = self.out.listing()  # once: a resume over S shards lists the prefix once, not S times
        done, stale = self.out.read_markers(listing)
        empty = self.empties() if existing is not None else {}
        markers, empties = {}, {}
        for shard, info in sources.items():
            mine, gave_none = done.get(shard), empty.get(str(shard))
            if (
                mine is not None
                and mine.marker.get("fingerprint") == self.fingerprint
                and mine.marker.get("source_sha256") == info.marker["sha256"]
                and self.out.check(mine, listing, self.fingerprint) is None
            ):
                markers[shard] = mine.marker
            elif (
                isinstance(gave_none, dict)
                and gave_none.get("source_sha256") == info.marker["sha256"]
                and gave_none.get("fingerprint") == self.fingerprint
                and all(isinstance(gave_none.get(k), int) for k in ("candidates", "rejected"))
            ):
                empties[shard] = gave_none
        self.lease.check()
        for shard in sorted((set(done) | set(stale)) - set(markers)):
            self.out.remove_marker(shard)
        return markers, empties

    def record(self, sources: dict[int, ShardInfo]) -> dict:
        """The bank's record in dataset.json (BANK_FIELD); the counts are added when the run ends."""
        return {
            "format": BANK_FORMAT,
            "source": redact_url(self.source_url),
            "source_fingerprint": self.source_info.fingerprint,
            "source_pairs": sum(i.count for i in sources.values()),
            "judge": str(self.judge),
            "judge_arch": self.judge_info.get("arch"),
            "settings": {k: v for k, v in to_dict(self.cfg).items() if k != "max_pairs"},
            "rule": "instances: 4-connected components of q_c >= threshold with `edge` pixels of soft edge (core.compose.instance_regions); kept where the judge's class-c pixels over the region overlap the component with IoU >= min_agreement",
        }

    def cut(
        self,
        todo: list[BankTask],
        markers: dict,
        empties: dict,
        summary: BankSummary,
        *,
        use_ray: bool,
        progress: bool,
        device: str,
    ) -> None:
        """Cut the shards of `todo` on the synthesis runner, adding to markers, empties and summary."""
        bar = Progress(
            sum(t.source.count for t in todo), len(todo), bar=progress, name="instance bank", units=("shards", "pairs")
        )

        def on_result(task: BankTask, result: dict | None, reason: str | None, retrying: bool) -> None:
            self.lease.check()
            shard = task.source.shard
            if result is None:
                summary.failed[shard] = reason or "unknown error"
                return
            summary.failed.pop(shard, None)
            summary.cut.append(shard)
            if result.get("empty"):
                empties[shard] = {k: result[k] for k in ("fingerprint", "source_sha256", "candidates", "rejected")}
                listing = {str(s): e for s, e in sorted(empties.items())}
                self.out.write_side(EMPTY, (json.dumps(listing, sort_keys=True) + "\n").encode())
            else:
                markers[shard] = result
            bar.update(task.source.count)

        args = dict(
            judge=str(self.judge),
            source_url=self.source_url,
            out_url=self.out_url,
            classes=list(self.source_info.classes),
            bank=to_dict(self.cfg),
            resolution=self.source_info.resolution,
            fingerprint=self.fingerprint,
            threads=self.synthesis.threads_per_actor,
            lease=self.lease.ref(),
        )
        s = self.synthesis
        workers = Workers(s.actors, s.threads_per_actor, s.max_in_flight, s.retries, s.call_timeout_s)
        summary.strategy = run_tasks(todo, BankWriter, args, workers, use_ray, device, on_result)
        bar.close()


def grow_bank(
    model_dir: str | Path,
    pairs_url: str,
    out_url: str,
    judge: str | Path,
    n: int,
    synthesis: SynthesisConfig,
    sampling: SamplingConfig,
    *,
    first_pairs: int,
    use_ray: bool = True,
    progress: bool = True,
) -> BankSummary:
    """A bank of at least n instances: synthesize pairs into pairs_url (the plan of synthesis.seed,
    growing by whole shards), cut them into out_url, and draw more until the bank holds n, at most
    synthesis.bank.max_pairs pairs (then a BankError in one line, as soon as a round's yield says n
    needs more). Each round reuses every finished
    shard of both sets, so a stopped run resumes and a larger n adds to a smaller one's bank: the first
    round covers every shard pairs_url already holds (a plan smaller than them is refused by synthesize),
    so a run stopped in a later round resumes from where it was. The pairs of a shard, and so its
    instances, do not depend on the round that drew it: the bank's first n instances are the same."""
    cfg, per_shard = synthesis.bank, synthesis.samples_per_shard
    finished, corrupt = ShardSet(pairs_url).read_markers()
    present = max([*finished, *corrupt], default=-1) + 1  # shards of an earlier run's later rounds
    pairs = min(cfg.max_pairs, per_shard * max(math.ceil(max(1, first_pairs) / per_shard), present))
    while True:
        drawn = synthesize(
            model_dir, pairs_url, dataclasses.replace(synthesis, n=pairs), sampling, progress=progress, use_ray=use_ray
        )
        if not drawn.ok:
            raise BankError(f"synthesis of the bank's pairs into {redact_url(pairs_url)} failed: {drawn.failed}")
        summary = build_bank(pairs_url, out_url, judge, cfg, synthesis, use_ray=use_ray, progress=progress)
        if not summary.ok:
            raise BankError(f"instance bank {redact_url(out_url)} failed: {summary.failed}")
        if summary.count >= n:
            return summary
        if pairs >= cfg.max_pairs:
            raise BankError(
                f"instance bank {redact_url(out_url)}: {summary.count} instances from {pairs} pairs, fewer than the {n} asked for, "
                f"and synthesis.bank.max_pairs is {cfg.max_pairs}"
            )
        if summary.count and math.ceil(n * pairs / summary.count) > cfg.max_pairs:
            # stop at the measured yield rather than draw up to max_pairs (hours at scale) and fail then
            raise BankError(
                f"instance bank {redact_url(out_url)}: {summary.count} instances from {pairs} pairs "
                f"({summary.count / pairs:.2f} a pair, {summary.rejected} of {summary.candidates} rejected by the judge); "
                f"{n} need about {math.ceil(n * pairs / summary.count)} pairs, more than synthesis.bank.max_pairs "
                f"{cfg.max_pairs}: raise it, ask for fewer instances, or lower synthesis.bank.min_agreement ({cfg.min_agreement:g})"
            )
        wanted = 4 * pairs if summary.count == 0 else math.ceil(1.1 * n * pairs / summary.count)
        pairs = min(cfg.max_pairs, per_shard * math.ceil(max(wanted, pairs + 1) / per_shard))
        log.info(
            "instance bank: %d instances from %d pairs; drawing %d pairs for %d",
            summary.count,
            drawn.planned_pairs,
            pairs,
            n,
        )
