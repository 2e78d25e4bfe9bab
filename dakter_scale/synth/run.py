"""Run a synthesis plan: decide which shards are left, run them locally or on Ray actors, report.

The driver owns no sampling and no format (both are data/shardset/'s): it lists what is done
(markers), checks finished shards (size, or sha256 with verify="sha256"), refuses to mix datasets
in one prefix, keeps a bounded number of shards in flight, retries failed shards (actor crash,
storage error) with the reason logged, shows one progress line, writes dataset.json with the set's
statistics, and warns loudly when the generated labels drift from the training data (a diverged
sampler makes augmentation harmful).

Exactly once: a shard is either done (its marker exists and its tar matches the marker) or is
(re)written whole; the marker is written last, so a crash at any point leaves the shard not done,
and a rerun writes it again with the same bytes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from dakter_scale import __version__
from dakter_scale.cards import write_dataset_card
from dakter_scale.config import SamplingConfig, SynthesisConfig, to_dict
from dakter_scale.data import storage
from dakter_scale.data.lease import Lease
from dakter_scale.data.sar_stats import SAR
from dakter_scale.data.shardset import DatasetInfo, ShardError, ShardSet
from dakter_scale.diffusion.model import check_model_folder, model_hash, num_train_timesteps, sampling_for
from dakter_scale.dist.driver import Progress, Workers
from dakter_scale.dist.strategies import run_tasks
from dakter_scale.synth.plan import Plan, PlanError, ShardTask, estimate_bytes_per_pair, fingerprint
from dakter_scale.synth.target import Condition
from dakter_scale.synth.worker import ShardWriter

log = logging.getLogger("dakter_scale")

DEVICES = ("auto", "cpu", "cuda")
UNLOCKED_TEMP_AGE = 3600.0  # seconds: a temporary this old is dead even where no lease guards the prefix
WRITER_STALL_WARNING = 0.1  # warn when the sampler waits for the encoder/uploads longer than this share of the time


@dataclass
class Summary:
    out: str
    planned_pairs: int
    planned_shards: int
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    corrupt: dict[int, str] = field(default_factory=dict)  # found broken, then rewritten (or failed)
    retried: list[dict] = field(default_factory=list)  # every failed attempt, with its reason
    failed: dict[int, str] = field(default_factory=dict)  # failed for good: the last reason
    pairs_written: int = 0
    seconds: float = 0.0
    started_at: float = 0.0  # Unix time when synthesize() began; timeline entries count from it
    strategy: dict = field(default_factory=dict)  # local / ray, actors, resources, start-up timings
    timeline: list[list[float]] = field(default_factory=list)  # [seconds since start, shard, pairs] per written shard
    dataset: dict = field(default_factory=dict)  # dataset.json as written (DatasetInfo.to_json)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_written / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["pairs_per_second"] = round(self.pairs_per_second, 3)
        d["corrupt"] = {str(k): v for k, v in self.corrupt.items()}
        d["failed"] = {str(k): v for k, v in self.failed.items()}
        return d

    def lines(self) -> list[str]:
        out = [
            f"synthesis to {self.out}: {self.planned_pairs} pairs in {self.planned_shards} shards",
            f"  written: {len(self.written)} shards ({self.pairs_written} pairs, {self.pairs_per_second:.2f} pairs/s over {self.seconds:.1f} s)",
            f"  skipped as already done: {len(self.skipped)} shards",
        ]
        if self.corrupt:
            out.append(
                f"  found corrupt (marker kept no longer; rewritten unless failed below): {len(self.corrupt)} shards"
            )
            out += [f"    shard {s}: {reason}" for s, reason in sorted(self.corrupt.items())]
        if self.retried:
            out.append(f"  failed attempts (retried up to the limit): {len(self.retried)}")
            out += [f"    shard {r['shard']} attempt {r['attempt'] + 1}: {r['reason']}" for r in self.retried[:20]]
        out.append(f"  failed for good: {len(self.failed)} shards")
        out += [f"    shard {s}: {reason}" for s, reason in sorted(self.failed.items())]
        return out + (DatasetInfo.from_json(self.dataset).summary_lines() if self.dataset else [])


# -- planning ---------------------------------------------------------------------------------


@dataclass
class Prepared:
    """What a run has to do, decided from the model folder, the flags and what the output holds."""

    plan: Plan
    fingerprint: str
    model_hash: str
    model_info: dict
    todo: list[ShardTask]
    skipped: list[int]
    corrupt: dict[int, str]  # shard -> why its marker cannot be trusted
    resized: list[int]  # shards whose size changed with --n: rewritten
    markers: dict[int, dict]  # trusted markers
    conflict: str | None  # another dataset in the output: what it is
    stale_markers: list[int]  # markers to remove before writing (corrupt, resized)


def _model_info(model_dir: str | Path) -> dict:
    return json.loads((Path(check_model_folder(model_dir)) / "dakter.json").read_text())


def _conflict(
    out: ShardSet, listing: dict, shards_found: int, fp: str, mhash: str, cfg: SynthesisConfig, sampling: SamplingConfig
) -> str | None:
    """What other dataset the output holds, if any, described by what differs from this run."""
    if ShardSet.HEADER not in listing:
        return f"{shards_found} shards of an unknown dataset (no {ShardSet.HEADER})" if shards_found else None
    try:
        existing = out.info()
    except ShardError:
        return f"an unreadable {ShardSet.HEADER}"
    if existing.fingerprint == fp:
        return None
    mine = {
        "model": mhash,
        "seed": cfg.seed,
        "samples_per_shard": cfg.samples_per_shard,
        "batch_size": cfg.batch_size,
        "sampling": to_dict(sampling),
        "format": ShardSet.FORMAT,
    }
    theirs = {
        "model": existing.model_hash,
        "seed": existing.seed,
        "samples_per_shard": existing.samples_per_shard,
        "batch_size": existing.batch_size,
        "sampling": existing.sampling,
        "format": existing.format,
    }
    differ = [k for k in mine if mine[k] != theirs[k]] or ["fingerprint"]
    return f"a dataset from model {str(existing.model_hash or '?')[:12]} that differs in {', '.join(differ)} (fingerprint {existing.fingerprint})"


def inspect_output(
    model_dir: str | Path,
    out_url: str,
    cfg: SynthesisConfig,
    sampling: SamplingConfig,
    condition: Condition | None = None,
) -> Prepared:
    """Decide the shards left to write. Reads only: writes, probes and deletes nothing."""
    info = _model_info(model_dir)
    plan = Plan(cfg.n, cfg.samples_per_shard, cfg.seed)
    mhash = model_hash(model_dir)
    fp = fingerprint(
        mhash,
        to_dict(sampling),
        cfg.seed,
        cfg.samples_per_shard,
        ShardSet.FORMAT,
        cfg.batch_size,
        condition.identity() if condition is not None else None,
    )
    out = ShardSet(out_url)
    try:
        listing = out.listing()
    except Exception as e:  # any backend error: report the URL, never credentials
        raise storage.StorageError(
            f"output {storage.redact_url(out_url)} cannot be listed: {type(e).__name__}: {storage.error_line(e)}"
        ) from None
    finished, corrupt = out.read_markers(listing)
    conflict = _conflict(out, listing, len(finished) + len(corrupt), fp, mhash, cfg, sampling)
    beyond = sorted(s for s in list(finished) + list(corrupt) if s >= plan.num_shards)
    if conflict is None and beyond:  # a conflict, so --overwrite clears it: the fingerprint leaves out n
        conflict = (
            f"shards up to {max(beyond)} from a larger --n (--n {cfg.n} plans only {plan.num_shards}, and a "
            "smaller --n would leave extra pairs readable; the original --n resumes it)"
        )
    if conflict:
        return Prepared(plan, fp, mhash, info, plan.tasks(), [], {}, [], {}, conflict, [])

    todo, skipped, resized, markers = [], [], [], {}
    for task in plan.tasks():
        done = finished.get(task.shard)
        if done is None:  # not written, or its marker is unreadable (in corrupt)
            todo.append(task)
        elif done.count != task.count:  # --n changed: the last shard grows or shrinks
            resized.append(task.shard)
            todo.append(task)
        elif problem := out.check(done, listing, fp, cfg.verify, num_classes=len(info["classes"])):
            corrupt[task.shard] = problem
            todo.append(task)
        else:
            skipped.append(task.shard)
            markers[task.shard] = done.marker
    stale = sorted(set(corrupt) | set(resized))
    return Prepared(plan, fp, mhash, info, todo, skipped, corrupt, resized, markers, None, stale)


def check_inputs(model_dir: str | Path, out_url: str, cfg: SynthesisConfig, sampling: SamplingConfig) -> None:
    """Raise a one-line error for a bad model folder, step count or plan, or an output that cannot be
    written; before a run takes its lease, so bad input never leaves a lock behind."""
    check_model_folder(model_dir)
    sampling.check_steps(num_train_timesteps(model_dir))
    Plan(cfg.n, cfg.samples_per_shard, cfg.seed)
    storage.check_writable(out_url)


def prepare(
    model_dir: str | Path,
    out_url: str,
    cfg: SynthesisConfig,
    sampling: SamplingConfig,
    overwrite: bool = False,
    condition: Condition | None = None,
    check: Callable[[], None] = lambda: None,
) -> Prepared:
    """Decide the shards left to write (inputs already checked by check_inputs). Refuses, or with
    overwrite deletes, another dataset in the output (after `check`, the run's lease). Starts nothing."""
    prep = inspect_output(model_dir, out_url, cfg, sampling, condition)
    if prep.conflict is None:
        return prep
    if not overwrite:
        raise PlanError(
            f"{storage.redact_url(out_url)} already holds {prep.conflict}, not this run's (fingerprint {prep.fingerprint}). "
            "Choose a new prefix, or pass --overwrite to delete it and write this one."
        )
    log.warning("--overwrite: removing %s from %s", prep.conflict, storage.redact_url(out_url))
    check()  # planning may have outlasted the lease: deleting is a write too
    ShardSet(out_url).clear()
    return inspect_output(model_dir, out_url, cfg, sampling, condition)


def dry_run(
    model_dir: str | Path,
    out_url: str,
    cfg: SynthesisConfig,
    sampling: SamplingConfig,
    overwrite: bool = False,
    condition: Condition | None = None,
) -> dict:
    """The plan as a JSON-able dict: shards, pairs, what is already done, estimated bytes. Changes nothing."""
    sampling = sampling_for(model_dir, sampling)
    sampling.check_steps(num_train_timesteps(model_dir))
    prep = inspect_output(model_dir, out_url, cfg, sampling, condition)
    info, plan = prep.model_info, prep.plan
    per_pair = estimate_bytes_per_pair(int(info["resolution"]), len(info["classes"]))
    typical = estimate_bytes_per_pair(int(info["resolution"]), len(info["classes"]), typical=True)
    todo_pairs = sum(t.count for t in prep.todo)
    return {
        "out": storage.redact_url(out_url),
        "pairs": plan.n,
        "shards": plan.num_shards,
        "samples_per_shard": plan.samples_per_shard,
        "batch_size": cfg.batch_size,
        "shards_to_write": len(prep.todo),
        "pairs_to_write": todo_pairs,
        "shards_already_done": len(prep.skipped),
        "shards_corrupt": {str(k): v for k, v in sorted(prep.corrupt.items())},
        "conflict": prep.conflict,
        "would_refuse": bool(prep.conflict) and not overwrite,
        "resolution": int(info["resolution"]),
        "classes": info["classes"],
        "sampler": sampling.sampler,
        "steps": sampling.steps,
        "estimated_bytes_per_pair": per_pair,  # at most (an under-trained model's noisy soft labels)
        "estimated_bytes": per_pair * plan.n,
        "estimated_bytes_to_write": per_pair * todo_pairs,
        "typical_bytes_per_pair": typical,  # a trained model's smooth soft labels
        "typical_bytes": typical * plan.n,
        "seed": cfg.seed,
        "fingerprint": prep.fingerprint,
    }


def dry_run_lines(plan: dict) -> list[str]:
    """--dry-run: what a run would write, its size, and what the output already holds."""
    lines = [
        f"plan: {plan['pairs']} pairs in {plan['shards']} shards of {plan['samples_per_shard']} -> {plan['out']}",
        f"  to write: {plan['shards_to_write']} shards ({plan['pairs_to_write']} pairs); already done: {plan['shards_already_done']}; corrupt: {len(plan['shards_corrupt'])}",
        f"  {plan['resolution']} px, {len(plan['classes'])} classes, {plan['sampler']} x {plan['steps']} steps, batch {plan['batch_size']}, seed {plan['seed']}",
        f"  estimated size: {plan['typical_bytes'] / 1e9:.3f} GB typical ({plan['typical_bytes_per_pair'] / 1e3:.1f} kB per pair), "
        f"{plan['estimated_bytes'] / 1e9:.3f} GB at most ({plan['estimated_bytes_per_pair'] / 1e3:.1f} kB per pair)",
    ]
    if plan["conflict"]:
        action = (
            "a run would refuse it (pass --overwrite or a new prefix)"
            if plan["would_refuse"]
            else "--overwrite would delete it"
        )
        lines.append(f"  the output holds {plan['conflict']}: {action}")
    return lines


def _train_stats(recorded: dict) -> dict:
    """What the divergence check compares against: the training class fractions, max-probability 1
    (one-hot labels), and the training images' SAR statistics when the model folder recorded them."""
    out = {"class_fractions": recorded.get("class_fractions"), "mean_confidence": 1.0}
    if SAR in recorded:
        out[SAR] = recorded[SAR]
    return out


def _dataset_header(prep: Prepared, cfg: SynthesisConfig, sampling: SamplingConfig, model_dir: str) -> DatasetInfo:
    info = prep.model_info
    return DatasetInfo(
        fingerprint=prep.fingerprint,
        model_hash=prep.model_hash,
        model=str(model_dir),
        b=info["b"],
        classes=info["classes"],
        resolution=info["resolution"],
        prediction_type=info["prediction_type"],
        radiometry=info.get("radiometry"),
        sampler=sampling.sampler,
        steps=sampling.steps,
        sampling=to_dict(sampling),
        seed=cfg.seed,
        seed_rule="pair seed = SeedSequence([seed, shard, index]) -> 63 bits (dakter_scale.synth.plan.pair_seed)",
        planned=prep.plan.n,
        samples_per_shard=cfg.samples_per_shard,
        batch_size=cfg.batch_size,
        num_shards=prep.plan.num_shards,
        code_version=__version__,
        train_stats=_train_stats(info.get("train_stats", {})),
    )


# -- the driver loop (dist/driver.py) ----------------------------------------------------------------


def writer_args(
    model: Any,
    out_url: str,
    cfg: SynthesisConfig,
    sampling: SamplingConfig,
    fp: str,
    lease: dict | None = None,
    condition: Condition | None = None,
) -> dict:
    """The ShardWriter's arguments (all but the device), the same for every strategy."""
    return dict(
        model=model,
        out_url=out_url,
        sampling=to_dict(sampling),
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        threads=cfg.threads_per_actor,
        fingerprint=fp,
        lease=lease,
        condition=condition,
    )


def _own_markers(out: ShardSet, markers: dict[int, dict], fp: str) -> dict[int, dict]:
    """The markers this run counts, read back from storage: each must still be there with this run's
    fingerprint and tar (a shard of another run, written over ours, is never counted)."""
    stored, _ = out.read_markers()
    own = {}
    for shard, marker in markers.items():
        now = stored.get(shard)
        if (
            now is None
            or now.marker.get("fingerprint") not in (fp, marker.get("fingerprint"))
            or now.marker.get("sha256") != marker.get("sha256")
        ):
            log.warning("shard %d changed under this run (another writer?): not counted; a rerun rewrites it", shard)
            continue
        own[shard] = marker
    return own


def remove_dead_temporaries(out: ShardSet, lease: Lease) -> None:
    """What killed writers left, once a run's writers have all returned: only temporaries nothing has
    written to since this run took the prefix (a writer still streaming keeps its file fresh). Without
    a lease, only those untouched for an hour."""
    lease.check()  # removing temporaries is a write too: only while the prefix is still this run's
    for name in out.remove_temporaries(
        min_age=max(0.0, time.time() - lease.started) if lease.supported else UNLOCKED_TEMP_AGE
    ):
        log.info("removed %s left by a killed writer", name)


# -- the whole run -----------------------------------------------------------------------------


def synthesize(
    model_dir: str | Path,
    out_url: str,
    cfg: SynthesisConfig,
    sampling: SamplingConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    use_ray: bool = True,
    device: str = "auto",
    break_lock: bool = False,
    condition: Condition | None = None,
    reference: list[float] | None = None,
) -> Summary:
    """Write cfg.n pairs to out_url, skipping finished shards. Never raises for a failed shard:
    failures are in the returned Summary (summary.ok is False). Bad input raises before any worker starts.

    The run holds out_url's lease (data/lease.py) from before it looks at what the prefix holds until
    dataset.json is written: a second run on the same prefix is refused (LeaseError) rather than
    mixing its shards in; break_lock takes the prefix from a holder that looks alive.

    condition: what each pair is drawn given (targeted synthesis, synth/targeted.py; part of the
    set's fingerprint). reference: the class mix the divergence check compares the set
    with (default: the training data's; a targeted set's is its target's)."""
    if device not in DEVICES:
        raise PlanError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if use_ray and importlib.util.find_spec("ray") is None:
        # e.g. an air-gapped GPU image with no Ray wheel: the same worker runs in this process
        log.warning(
            "Ray is not installed (pip install 'dakter-scale[ray]'): synthesizing in this process instead of with Ray actors"
        )
        use_ray = False
    if not use_ray and device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PlanError("--device cuda with --actors 0: this process sees no CUDA device")
    t0 = time.time()
    sampling = sampling_for(model_dir, sampling)  # a distilled folder's own sampler
    check_inputs(model_dir, out_url, cfg, sampling)
    lease = Lease(out_url, f"synthesis of {cfg.n} pairs (seed {cfg.seed})", cfg.lease_seconds).acquire(
        break_lock=break_lock
    )
    try:
        return _synthesize(
            model_dir, out_url, cfg, sampling, lease, overwrite, progress, use_ray, device, t0, condition, reference
        )
    finally:
        lease.release()


def _synthesize(
    model_dir: str | Path,
    out_url: str,
    cfg: SynthesisConfig,
    sampling: SamplingConfig,
    lease: Lease,
    overwrite: bool,
    progress: bool,
    use_ray: bool,
    device: str,
    t0: float,
    condition: Condition | None,
    reference: list[float] | None,
) -> Summary:
    prep = prepare(model_dir, out_url, cfg, sampling, overwrite=overwrite, condition=condition, check=lease.check)
    plan = prep.plan
    summary = Summary(
        out=storage.redact_url(out_url),
        planned_pairs=plan.n,
        planned_shards=plan.num_shards,
        skipped=list(prep.skipped),
        corrupt=dict(prep.corrupt),
        started_at=t0,
    )
    out = ShardSet(out_url)
    header = _dataset_header(prep, cfg, sampling, str(model_dir))
    for shard, problem in sorted(prep.corrupt.items()):
        log.warning("shard %d is corrupt (%s): removing its marker and regenerating it", shard, problem)
    for shard in prep.resized:
        log.info("shard %d changes size with --n %d: rewriting it", shard, plan.n)
    if prep.stale_markers:
        lease.check()  # removing markers is a write: only while the prefix is this run's
    for shard in prep.stale_markers:  # before any rewrite, so no reader trusts a shard being replaced
        out.remove_marker(shard)
    if prep.skipped:
        log.info("%d of %d shards are already done; %d to write", len(prep.skipped), plan.num_shards, len(prep.todo))
    if prep.todo:
        lease.check()  # a run whose lease lapsed while it planned writes nothing
        out.begin(header, prep.markers)

    markers = dict(prep.markers)
    todo_pairs = sum(t.count for t in prep.todo)
    bar = Progress(todo_pairs, len(prep.todo), bar=progress, name="synthesize", units=("shards", "pairs"))
    final_failures: dict[int, str] = {}

    def on_result(task: ShardTask, marker: dict | None, reason: str | None, retrying: bool) -> None:
        lease.check()  # a run that lost its prefix stops here (LeaseError), its finished shards kept
        if marker is not None:
            markers[task.shard] = marker
            final_failures.pop(task.shard, None)
            summary.written.append(task.shard)
            summary.pairs_written += task.count
            summary.timeline.append([round(time.time() - t0, 3), task.shard, task.count])
            bar.update(task.count)
            return
        summary.retried.append({"shard": task.shard, "attempt": task.attempt, "reason": reason})
        final_failures[task.shard] = reason or "unknown error"

    try:
        if prep.todo:
            args = writer_args(
                str(check_model_folder(model_dir)),
                out_url,
                cfg,
                sampling,
                prep.fingerprint,
                lease=lease.ref(),
                condition=condition,
            )
            workers = Workers(cfg.actors, cfg.threads_per_actor, cfg.max_in_flight, cfg.retries, cfg.call_timeout_s)
            summary.strategy = run_tasks(prep.todo, ShardWriter, args, workers, use_ray, device, on_result)
        remove_dead_temporaries(out, lease)
    finally:  # a run stopped by an error (no actor could start, a lost lease) leaves no bar on the terminal
        bar.close()
    summary.failed = {s: r for s, r in final_failures.items() if s not in markers}
    summary.seconds = time.time() - t0

    written = [markers[s] for s in summary.written if s in markers]
    busy = sum(m.get("seconds", 0.0) for m in written)
    stalled = sum(m.get("writer_wait_seconds", 0.0) for m in written)
    if busy > 0 and stalled / busy > WRITER_STALL_WARNING:
        log.warning(
            "the sampler waited for encoding and uploads %.0f %% of the shard time: give each actor more CPU threads (--threads-per-actor)",
            100 * stalled / busy,
        )

    lease.check()
    own = _own_markers(out, markers, prep.fingerprint)
    for shard in sorted(set(markers) - set(own)):  # the run did not deliver these: it must not end as if it had
        summary.failed[shard] = "changed under this run (another writer?): not counted; a rerun rewrites it"
    markers = own
    dataset, warnings = out.finish(
        header,
        markers,
        threshold=cfg.divergence_threshold,
        reference=reference,
        train_sar=header.train_stats.get(SAR),
        enl_ratio=cfg.enl_ratio_threshold,
        histogram_tv=cfg.histogram_threshold,
        class_share_ratio=cfg.class_share_ratio_threshold,
        against="the target's class mix" if reference else "the training data's",
        complete=summary.ok and len(markers) == plan.num_shards,
    )
    lease.check()
    write_dataset_card(out_url)
    summary.dataset = dataset.to_json()
    for w in warnings:
        log.warning("!" * 78)
        log.warning("GENERATED DATA DIVERGES FROM THE TRAINING DATA: %s", w)
        log.warning("Students trained on such labels can end up worse than with no augmentation.")
        log.warning("!" * 78)
    return summary
