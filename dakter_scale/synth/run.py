"""Run a synthesis plan: decide which shards are left, run them locally or on Ray actors, report.

The driver owns no sampling: it lists what is done (markers), checks finished shards (size, or
sha256 with verify="sha256"), refuses to mix datasets in one prefix, keeps a bounded number of
shards in flight, retries failed shards (actor crash, storage error) with the reason logged,
shows one progress line, aggregates per-shard statistics into dataset.json, and warns loudly when
the generated labels drift from the training data (a diverged sampler makes augmentation harmful).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dakter_scale import __version__
from dakter_scale.config import SamplingConfig, SynthesisConfig, to_dict
from dakter_scale.data import shards, storage
from dakter_scale.diffusion.model import check_model_folder, model_hash
from dakter_scale.synth.plan import Plan, PlanError, ShardTask, estimate_bytes_per_pair, fingerprint
from dakter_scale.synth.worker import ShardWriter, pack_model_folder

log = logging.getLogger("dakter_scale")

MIN_MEAN_CONFIDENCE = 0.5  # below this the soft labels are closer to uniform than to a segmentation


@dataclass
class Summary:
    out: str
    planned_pairs: int
    planned_shards: int
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    corrupt: dict[int, str] = field(default_factory=dict)  # found broken, then rewritten (or failed)
    retried: list[dict] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    pairs_written: int = 0
    seconds: float = 0.0
    dataset: dict = field(default_factory=dict)

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
            out.append(f"  found corrupt and regenerated: {len(self.corrupt)} shards")
            out += [f"    shard {s}: {reason}" for s, reason in sorted(self.corrupt.items())]
        if self.retried:
            out.append(f"  retried: {len(self.retried)} attempts")
        out.append(f"  failed: {len(self.failed)} shards")
        out += [f"    shard {s}: {reason}" for s, reason in sorted(self.failed.items())]
        gen = self.dataset.get("generated_stats")
        if gen:
            out.append("  generated class fractions " + _fmt(gen["class_fractions"]) + f", mean max-probability {gen['mean_confidence']:.3f}")
            train = self.dataset.get("train_stats", {})
            if train.get("class_fractions"):
                out.append("  training   class fractions " + _fmt(train["class_fractions"]) + " (hard labels: max-probability 1)")
        return out


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


# -- planning ---------------------------------------------------------------------------------


@dataclass
class Prepared:
    plan: Plan
    fingerprint: str
    model_hash: str
    model_info: dict
    todo: list[ShardTask]
    skipped: list[int]
    corrupt: dict[int, str]
    markers: dict[int, dict]


def _dataset_header(prep: "Prepared", out_url: str, cfg: SynthesisConfig, sampling: SamplingConfig, model_dir: str) -> dict:
    info = prep.model_info
    return {
        "format": shards.FORMAT,
        "fingerprint": prep.fingerprint,
        "model_hash": prep.model_hash,
        "model": str(model_dir),
        "b": info["b"],
        "classes": info["classes"],
        "resolution": info["resolution"],
        "prediction_type": info["prediction_type"],
        "radiometry": info.get("radiometry"),
        "sampler": sampling.sampler,
        "steps": sampling.steps,
        "sampling": to_dict(sampling),
        "seed": cfg.seed,
        "planned": prep.plan.n,
        "samples_per_shard": cfg.samples_per_shard,
        "num_shards": prep.plan.num_shards,
        "code_version": __version__,
        "train_stats": {"class_fractions": info.get("train_stats", {}).get("class_fractions"), "mean_confidence": 1.0},
    }


def _sha256(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare(model_dir: str | Path, out_url: str, cfg: SynthesisConfig, sampling: SamplingConfig, overwrite: bool = False) -> Prepared:
    """Validate inputs and decide the shards left to write. Starts nothing."""
    model_dir = check_model_folder(model_dir)
    info = json.loads((Path(model_dir) / "dakter.json").read_text())
    plan = Plan(cfg.n, cfg.samples_per_shard, cfg.seed)
    mhash = model_hash(model_dir)
    fp = fingerprint(mhash, to_dict(sampling), cfg.seed, cfg.samples_per_shard, shards.FORMAT)
    storage.check_writable(out_url)
    fs, root = storage.url_to_fs(out_url)

    existing = shards.read_dataset_info(out_url)
    listing = {p.rsplit("/", 1)[-1]: d for p, d in ((e["name"], e) for e in fs.ls(root, detail=True))} if fs.exists(root) else {}
    marker_names = sorted(n for n in listing if n.startswith("shard-") and n.endswith(".json"))
    if existing is not None and existing.get("fingerprint") != fp or (existing is None and marker_names):
        if not overwrite:
            what = f"a dataset from model {existing.get('model_hash', '?')[:12]} (fingerprint {existing.get('fingerprint')})" if existing else f"{len(marker_names)} shards of an unknown dataset"
            raise PlanError(
                f"{out_url} already holds {what}; this run's model/sampling/seed/samples-per-shard differ (fingerprint {fp}). "
                "Choose a new prefix, or pass --overwrite to delete it and write this one."
            )
        log.warning("--overwrite: removing the dataset in %s", out_url)
        # Markers first, so no reader trusts a shard while it is being removed.
        for name in marker_names:
            fs.rm(storage.join(root, name))
        for name in sorted(listing):
            if name.startswith("shard-") or name == shards.DATASET_FILE:
                if fs.exists(storage.join(root, name)):
                    fs.rm(storage.join(root, name), recursive=True)
        listing, marker_names = {}, []

    markers: dict[int, dict] = {}
    if marker_names:
        blobs = fs.cat([storage.join(root, n) for n in marker_names])
        for path, blob in blobs.items():
            m = json.loads(blob)
            markers[int(m["shard"])] = m
    beyond = sorted(s for s in markers if s >= plan.num_shards)
    if beyond:
        raise PlanError(
            f"{out_url} holds shards up to {max(beyond)} but --n {cfg.n} plans only {plan.num_shards}: "
            "a smaller --n would leave extra pairs readable. Use the original --n, a new prefix, or --overwrite."
        )

    todo, skipped, corrupt = [], [], {}
    for task in plan.tasks():
        m = markers.get(task.shard)
        if m is None:
            todo.append(task)
            continue
        tar_name = shards.shard_name(task.shard, "tar")
        problem = None
        if m.get("count") != task.count:
            problem = None  # --n changed: the last shard grows; rewrite quietly
            todo.append(task)
            markers.pop(task.shard)
            continue
        if tar_name not in listing:
            problem = "marker present but the tar is missing"
        elif int(listing[tar_name].get("size", -1)) != int(m["tar_bytes"]):
            problem = f"marker present but the tar has {listing[tar_name].get('size')} bytes, the marker records {m['tar_bytes']}"
        elif shards.shard_name(task.shard, "parquet") not in listing:
            problem = "marker present but the parquet manifest is missing"
        elif cfg.verify == "sha256" and _sha256(fs, storage.join(root, tar_name)) != m["sha256"]:
            problem = "marker present but the tar's sha256 differs from the marker's"
        if problem:
            corrupt[task.shard] = problem
            todo.append(task)
            markers.pop(task.shard)
        else:
            skipped.append(task.shard)
    return Prepared(plan, fp, mhash, info, todo, skipped, corrupt, markers)


def dry_run(model_dir: str | Path, out_url: str, cfg: SynthesisConfig, sampling: SamplingConfig, overwrite: bool = False) -> dict:
    prep = prepare(model_dir, out_url, cfg, sampling, overwrite=overwrite) if storage.url_to_fs(out_url)[0].exists(storage.url_to_fs(out_url)[1]) else None
    if prep is None:
        model_dir = check_model_folder(model_dir)
        info = json.loads((Path(model_dir) / "dakter.json").read_text())
        plan = Plan(cfg.n, cfg.samples_per_shard, cfg.seed)
        todo = plan.num_shards
        todo_pairs = plan.n
        skipped = 0
    else:
        info, plan = prep.model_info, prep.plan
        todo, todo_pairs, skipped = len(prep.todo), sum(t.count for t in prep.todo), len(prep.skipped)
    per_pair = estimate_bytes_per_pair(int(info["resolution"]), len(info["classes"]))
    return {
        "out": out_url,
        "pairs": plan.n,
        "shards": plan.num_shards,
        "samples_per_shard": plan.samples_per_shard,
        "shards_to_write": todo,
        "pairs_to_write": todo_pairs,
        "shards_already_done": skipped,
        "resolution": int(info["resolution"]),
        "classes": info["classes"],
        "sampler": sampling.sampler,
        "steps": sampling.steps,
        "estimated_bytes_per_pair": per_pair,
        "estimated_bytes": per_pair * plan.n,
        "seed": cfg.seed,
    }


# -- execution strategies -------------------------------------------------------------------------

Callback = Callable[[ShardTask, dict | None, str | None], None]


def _writer_args(model: Any, out_url: str, cfg: SynthesisConfig, sampling: SamplingConfig, fp: str) -> dict:
    return dict(model=model, out_url=out_url, sampling=to_dict(sampling), batch_size=cfg.batch_size, seed=cfg.seed, threads=cfg.threads_per_actor, fingerprint=fp)


def run_local(tasks: list[ShardTask], writer_args: dict, retries: int, on_result: Callback) -> None:
    """Run shards one after another in this process (no Ray): the same worker, the same retries."""
    writer = ShardWriter(**writer_args)
    queue = collections.deque(tasks)
    while queue:
        task = queue.popleft()
        try:
            on_result(task, writer(task), None)
        except Exception as e:  # a shard failure is recorded and retried, never fatal to the run
            reason = f"{type(e).__name__}: {e}"
            on_result(task, None, reason)
            if task.attempt < retries:
                queue.append(ShardTask(task.shard, task.start, task.count, task.attempt + 1))


def ray_actor_resources(cfg: SynthesisConfig) -> tuple[int, dict]:
    """(number of actors, per-actor resource request) for the connected Ray cluster."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus >= 1:
        n = gpus if cfg.actors == "auto" else int(cfg.actors)
        return n, {"num_gpus": 1, "num_cpus": 1}
    cpus = int(resources.get("CPU", 1))
    n = max(1, cpus // cfg.threads_per_actor) if cfg.actors == "auto" else int(cfg.actors)
    return n, {"num_cpus": cfg.threads_per_actor}


def run_ray(tasks: list[ShardTask], writer_args: dict, cfg: SynthesisConfig, on_result: Callback, model_dir: Path) -> int:
    """Shards on Ray actors, one model load per actor, bounded in flight, crashed actors replaced."""
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError

    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING, log_to_driver=True)
    n_actors, resources = ray_actor_resources(cfg)
    n_actors = max(1, min(n_actors, len(tasks)))
    per_actor = max(1, (cfg.max_in_flight or 2 * n_actors) // n_actors)
    # The model travels through Ray's object store, so worker nodes need no shared file system.
    args = dict(writer_args, model=ray.put(pack_model_folder(model_dir)))
    Remote = ray.remote(max_restarts=0, max_task_retries=0, **resources)(ShardWriter)
    # An ObjectRef nested in the kwargs is resolved by Ray before __init__ runs.
    actors = [Remote.remote(**args) for _ in range(n_actors)]
    log.info("ray: %d actors, %s each, up to %d shards in flight", n_actors, resources, n_actors * per_actor)
    load = {a: 0 for a in actors}
    queue = collections.deque(tasks)
    in_flight: dict[Any, tuple[Any, ShardTask]] = {}

    def replace(dead) -> None:
        if dead in load:
            load.pop(dead)
            with_ray_kill(dead)
            fresh = Remote.remote(**args)
            load[fresh] = 0

    while queue or in_flight:
        for actor in sorted(load, key=load.get):
            while queue and load.get(actor, per_actor) < per_actor:
                task = queue.popleft()
                in_flight[actor.__call__.remote(task)] = (actor, task)
                load[actor] += 1
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=2.0)
        for ref in ready:
            actor, task = in_flight.pop(ref)
            if actor in load:
                load[actor] -= 1
            try:
                on_result(task, ray.get(ref), None)
                continue
            except RayActorError as e:
                reason = f"actor died ({type(e).__name__}): {str(e).splitlines()[0][:200]}"
                replace(actor)
            except RayTaskError as e:
                cause = e.cause if getattr(e, "cause", None) is not None else e
                reason = f"{type(cause).__name__}: {str(cause).splitlines()[0][:300] if str(cause) else ''}"
            except RayError as e:
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            on_result(task, None, reason)
            if task.attempt < cfg.retries:
                queue.append(ShardTask(task.shard, task.start, task.count, task.attempt + 1))
    for actor in list(load):
        with_ray_kill(actor)
    return n_actors


def with_ray_kill(actor) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already gone
        pass


# -- the whole run -----------------------------------------------------------------------------


def _generated_stats(markers: dict[int, dict], num_classes: int) -> dict:
    count = sum(int(m["count"]) for m in markers.values())
    if count == 0:
        return {}
    fractions = np.zeros(num_classes)
    for m in markers.values():
        fractions += np.asarray(m["sum_class_fractions"], dtype=np.float64)
    return {
        "pairs": count,
        "class_fractions": (fractions / count).tolist(),
        "mean_confidence": sum(m["sum_mean_confidence"] for m in markers.values()) / count,
        "mean_entropy": sum(m["sum_mean_entropy"] for m in markers.values()) / count,
    }


def divergence(generated: dict, train_fractions: list[float] | None, threshold: float) -> tuple[dict, list[str]]:
    """Compare the generated set with the training data; return the numbers and loud warnings."""
    if not generated:
        return {}, []
    warnings = []
    out: dict[str, Any] = {"threshold": threshold, "min_mean_confidence": MIN_MEAN_CONFIDENCE, "mean_confidence": generated["mean_confidence"]}
    if train_fractions:
        tv = 0.5 * float(np.abs(np.asarray(generated["class_fractions"]) - np.asarray(train_fractions)).sum())
        out["class_fraction_tv"] = tv
        if tv > threshold:
            warnings.append(
                f"generated class pixel fractions differ from the training data's by total variation {tv:.3f} > {threshold}: "
                f"generated {_fmt(generated['class_fractions'])} vs training {_fmt(train_fractions)}"
            )
    if generated["mean_confidence"] < MIN_MEAN_CONFIDENCE:
        warnings.append(
            f"mean max-probability of the soft labels is {generated['mean_confidence']:.3f} < {MIN_MEAN_CONFIDENCE}: "
            "the labels are close to uniform (a diverged or under-trained sampler)"
        )
    out["diverged"] = bool(warnings)
    return out, warnings


def synthesize(
    model_dir: str | Path,
    out_url: str,
    cfg: SynthesisConfig,
    sampling: SamplingConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    use_ray: bool = True,
) -> Summary:
    """Write cfg.n pairs to out_url, skipping finished shards. Never raises for a failed shard:
    failures are in the returned Summary (summary.ok is False)."""
    t0 = time.time()
    prep = prepare(model_dir, out_url, cfg, sampling, overwrite=overwrite)
    plan = prep.plan
    summary = Summary(out=out_url, planned_pairs=plan.n, planned_shards=plan.num_shards, skipped=list(prep.skipped), corrupt=dict(prep.corrupt))
    fs, root = storage.url_to_fs(out_url)
    header = _dataset_header(prep, out_url, cfg, sampling, str(model_dir))
    storage.write_json(fs, storage.join(root, shards.DATASET_FILE), dict(header, status="in progress", count=sum(int(m["count"]) for m in prep.markers.values())))
    for shard, problem in sorted(prep.corrupt.items()):
        log.warning("shard %d is corrupt (%s): removing its marker and regenerating it", shard, problem)
        marker = storage.join(root, shards.shard_name(shard, "json"))
        if fs.exists(marker):
            fs.rm(marker)
    if prep.skipped:
        log.info("%d of %d shards are already done; %d to write", len(prep.skipped), plan.num_shards, len(prep.todo))

    markers = dict(prep.markers)
    bar = None
    todo_pairs = sum(t.count for t in prep.todo)
    if progress and prep.todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=todo_pairs, unit="pair", desc="synthesize", dynamic_ncols=True, smoothing=0.1)
        bar.set_postfix_str(f"shards 0/{len(prep.todo)}")
    final_failures: dict[int, str] = {}

    def on_result(task: ShardTask, marker: dict | None, reason: str | None) -> None:
        if marker is not None:
            markers[task.shard] = marker
            final_failures.pop(task.shard, None)
            summary.written.append(task.shard)
            summary.pairs_written += task.count
            if bar is not None:
                bar.update(task.count)
                bar.set_postfix_str(f"shards {len(summary.written)}/{len(prep.todo)}")
            return
        will_retry = task.attempt < cfg.retries
        summary.retried.append({"shard": task.shard, "attempt": task.attempt, "reason": reason})
        final_failures[task.shard] = reason or "unknown error"
        (log.warning if will_retry else log.error)(
            "shard %d attempt %d failed: %s%s", task.shard, task.attempt + 1, reason, "; retrying" if will_retry else "; giving up"
        )

    if prep.todo:
        args = _writer_args(str(check_model_folder(model_dir)), out_url, cfg, sampling, prep.fingerprint)
        if use_ray:
            run_ray(prep.todo, args, cfg, on_result, Path(model_dir))
        else:
            run_local(prep.todo, args, cfg.retries, on_result)
    if bar is not None:
        bar.close()
    summary.failed = {s: r for s, r in final_failures.items() if s not in markers}
    summary.retried = [r for r in summary.retried]
    summary.seconds = time.time() - t0

    generated = _generated_stats(markers, len(prep.model_info["classes"]))
    div, warnings = divergence(generated, header["train_stats"]["class_fractions"], cfg.divergence_threshold)
    dataset = dict(
        header,
        status="complete" if summary.ok and len(markers) == plan.num_shards else "incomplete",
        count=sum(int(m["count"]) for m in markers.values()),
        generated_stats=generated,
        divergence=div,
        warnings=warnings,
    )
    storage.write_json(fs, storage.join(root, shards.DATASET_FILE), dataset)
    summary.dataset = dataset
    for w in warnings:
        log.warning("!" * 78)
        log.warning("GENERATED DATA DIVERGES FROM THE TRAINING DATA: %s", w)
        log.warning("Students trained on such labels can end up worse than with no augmentation.")
        log.warning("!" * 78)
    return summary
