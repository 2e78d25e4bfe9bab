"""Run a synthesis plan: decide which shards are left, run them locally or on Ray actors, report.

The driver owns no sampling and no format (both are data/shardset.py's): it lists what is done
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

import collections
import importlib.util
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from dakter_scale import __version__
from dakter_scale.config import SamplingConfig, SynthesisConfig, to_dict
from dakter_scale.data import storage
from dakter_scale.data.shardset import (
    COMPLETE,
    DATASET_FILE,
    FORMAT,
    IN_PROGRESS,
    INCOMPLETE,
    DatasetInfo,
    ShardError,
    ShardSet,
    divergence,
    marker_count,
    marker_stats,
    stats_lines,
)
from dakter_scale.diffusion.model import check_model_folder, model_hash
from dakter_scale.synth.plan import Plan, PlanError, ShardTask, estimate_bytes_per_pair, fingerprint

log = logging.getLogger("dakter_scale")

DEVICES = ("auto", "cpu", "cuda")
NO_ACTOR_WARNING_S = 60.0  # warn when no actor has started after this long (missing resources?)
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
            out.append(f"  found corrupt (marker kept no longer; rewritten unless failed below): {len(self.corrupt)} shards")
            out += [f"    shard {s}: {reason}" for s, reason in sorted(self.corrupt.items())]
        if self.retried:
            out.append(f"  failed attempts (retried up to the limit): {len(self.retried)}")
            out += [f"    shard {r['shard']} attempt {r['attempt'] + 1}: {r['reason']}" for r in self.retried[:20]]
        out.append(f"  failed for good: {len(self.failed)} shards")
        out += [f"    shard {s}: {reason}" for s, reason in sorted(self.failed.items())]
        return out + (stats_lines(DatasetInfo.from_json(self.dataset)) if self.dataset else [])


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


def _conflict(out: ShardSet, listing: dict, shards_found: int, fp: str, mhash: str, cfg: SynthesisConfig, sampling: SamplingConfig) -> str | None:
    """What other dataset the output holds, if any, described by what differs from this run."""
    if DATASET_FILE not in listing:
        return f"{shards_found} shards of an unknown dataset (no {DATASET_FILE})" if shards_found else None
    try:
        existing = out.info()
    except ShardError:
        return f"an unreadable {DATASET_FILE}"
    if existing.fingerprint == fp:
        return None
    mine = {"model": mhash, "seed": cfg.seed, "samples_per_shard": cfg.samples_per_shard, "batch_size": cfg.batch_size, "sampling": to_dict(sampling), "format": FORMAT}
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


def inspect_output(model_dir: str | Path, out_url: str, cfg: SynthesisConfig, sampling: SamplingConfig) -> Prepared:
    """Decide the shards left to write. Reads only: writes, probes and deletes nothing."""
    info = _model_info(model_dir)
    plan = Plan(cfg.n, cfg.samples_per_shard, cfg.seed)
    mhash = model_hash(model_dir)
    fp = fingerprint(mhash, to_dict(sampling), cfg.seed, cfg.samples_per_shard, FORMAT, cfg.batch_size)
    out = ShardSet(out_url)
    try:
        listing = out.listing()
    except Exception as e:  # any backend error: report the URL, never credentials
        raise storage.StorageError(f"output {out_url} cannot be listed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    finished, corrupt = out.read_markers(listing)
    conflict = _conflict(out, listing, len(finished) + len(corrupt), fp, mhash, cfg, sampling)
    if conflict:
        return Prepared(plan, fp, mhash, info, plan.tasks(), [], {}, [], {}, conflict, [])
    beyond = sorted(s for s in list(finished) + list(corrupt) if s >= plan.num_shards)
    if beyond:
        raise PlanError(
            f"{out_url} holds shards up to {max(beyond)} but --n {cfg.n} plans only {plan.num_shards}: "
            "a smaller --n would leave extra pairs readable. Use the original --n, a new prefix, or --overwrite."
        )

    todo, skipped, resized, markers = [], [], [], {}
    for task in plan.tasks():
        done = finished.get(task.shard)
        if done is None:  # not written, or its marker is unreadable (in corrupt)
            todo.append(task)
        elif done.count != task.count:  # --n changed: the last shard grows or shrinks
            resized.append(task.shard)
            todo.append(task)
        elif problem := out.check(done, listing, fp, cfg.verify):
            corrupt[task.shard] = problem
            todo.append(task)
        else:
            skipped.append(task.shard)
            markers[task.shard] = done.marker
    stale = sorted(set(corrupt) | set(resized))
    return Prepared(plan, fp, mhash, info, todo, skipped, corrupt, resized, markers, None, stale)


def prepare(model_dir: str | Path, out_url: str, cfg: SynthesisConfig, sampling: SamplingConfig, overwrite: bool = False) -> Prepared:
    """Validate inputs (model folder, plan, writable output) and decide the shards left to write.
    Refuses, or with overwrite deletes, another dataset in the output. Starts nothing."""
    check_model_folder(model_dir)
    Plan(cfg.n, cfg.samples_per_shard, cfg.seed)
    storage.check_writable(out_url)
    prep = inspect_output(model_dir, out_url, cfg, sampling)
    if prep.conflict is None:
        return prep
    if not overwrite:
        raise PlanError(
            f"{out_url} already holds {prep.conflict}, not this run's (fingerprint {prep.fingerprint}). "
            "Choose a new prefix, or pass --overwrite to delete it and write this one."
        )
    log.warning("--overwrite: removing %s from %s", prep.conflict, out_url)
    ShardSet(out_url).clear()
    return inspect_output(model_dir, out_url, cfg, sampling)


def dry_run(model_dir: str | Path, out_url: str, cfg: SynthesisConfig, sampling: SamplingConfig, overwrite: bool = False) -> dict:
    """The plan as a JSON-able dict: shards, pairs, what is already done, estimated bytes. Changes nothing."""
    check_model_folder(model_dir)
    prep = inspect_output(model_dir, out_url, cfg, sampling)
    info, plan = prep.model_info, prep.plan
    per_pair = estimate_bytes_per_pair(int(info["resolution"]), len(info["classes"]))
    typical = estimate_bytes_per_pair(int(info["resolution"]), len(info["classes"]), typical=True)
    todo_pairs = sum(t.count for t in prep.todo)
    return {
        "out": out_url,
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
        train_stats={"class_fractions": info.get("train_stats", {}).get("class_fractions"), "mean_confidence": 1.0},
    )


# -- progress -----------------------------------------------------------------------------------


class Progress:
    """One line: shards and pairs done, pairs/s, ETA. A tqdm bar on a terminal; otherwise (logs, `ray job
    submit`, DAKTER_PROGRESS=0) the same line is logged after each shard, at most every `every` seconds."""

    def __init__(self, total_pairs: int, total_shards: int, bar: bool, every: float = 30.0):
        self.total_pairs, self.total_shards = total_pairs, total_shards
        self.pairs = self.shards = 0
        self.t0 = self.last_log = time.time()
        self.every = every
        self.window: collections.deque = collections.deque([(self.t0, 0)], maxlen=16)
        self.bar = None
        if bar and total_pairs and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_pairs, unit="pair", desc="synthesize", dynamic_ncols=True, smoothing=0.1)
            self.bar.set_postfix_str(f"shards 0/{total_shards}")

    def rate(self) -> float:
        (t_a, p_a), (t_b, p_b) = self.window[0], self.window[-1]
        return (p_b - p_a) / (t_b - t_a) if t_b > t_a and p_b > p_a else 0.0

    def line(self) -> str:
        rate = self.rate()
        eta = (self.total_pairs - self.pairs) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
        return f"synthesize: shards {self.shards}/{self.total_shards}, pairs {self.pairs}/{self.total_pairs}, {rate:.2f} pairs/s, ETA {eta_text}"

    def update(self, pairs: int) -> None:
        self.pairs += pairs
        self.shards += 1
        now = time.time()
        self.window.append((now, self.pairs))
        if self.bar is not None:
            self.bar.update(pairs)
            self.bar.set_postfix_str(f"shards {self.shards}/{self.total_shards}")
        elif now - self.last_log >= self.every or self.shards == self.total_shards:
            self.last_log = now
            log.info(self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- execution strategies -------------------------------------------------------------------------

Callback = Callable[[ShardTask, "dict | None", "str | None"], None]


def _writer_args(model: Any, out_url: str, cfg: SynthesisConfig, sampling: SamplingConfig, fp: str) -> dict:
    return dict(model=model, out_url=out_url, sampling=to_dict(sampling), batch_size=cfg.batch_size, seed=cfg.seed, threads=cfg.threads_per_actor, fingerprint=fp)


def run_local(tasks: list[ShardTask], writer_args: dict, retries: int, on_result: Callback, device: str = "auto") -> dict:
    """Run shards one after another in this process (no Ray): the same worker, the same retries.
    The writer sets torch's thread count to its own while it runs; the caller's is restored after."""
    import torch

    from dakter_scale.synth.worker import ShardWriter

    threads = torch.get_num_threads()
    t0 = time.time()
    try:
        writer = ShardWriter(**writer_args, device=None if device == "auto" else device)
        info = {"strategy": "local", "workers": 1, "startup_seconds": round(time.time() - t0, 3), "worker": writer.ready()}
        queue = collections.deque(tasks)
        while queue:
            task = queue.popleft()
            try:
                marker = writer(task)
            except Exception as e:  # a shard failure is recorded and retried, never fatal to the run
                on_result(task, None, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
                if task.attempt < retries:
                    queue.append(task.retry())
                continue
            on_result(task, marker, None)
    finally:
        torch.set_num_threads(threads)
    return info


def ray_actor_resources(cfg: SynthesisConfig, device: str = "auto") -> tuple[int, dict, str]:
    """(number of actors, per-actor resource request, device) for the connected Ray cluster.

    auto: one actor per GPU (num_gpus=1, and threads_per_actor CPUs for its encoder threads) when the
    cluster has GPUs now, else CPU actors of threads_per_actor torch threads (cpus // threads of them).
    cuda: GPU actors even if no GPU is up yet (an autoscaler adds GPU nodes for them). An explicit
    --actors N overrides the count."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if device == "cuda" or (device == "auto" and gpus >= 1):
        n = max(1, gpus) if cfg.actors == "auto" else int(cfg.actors)
        return n, {"num_gpus": 1, "num_cpus": cfg.threads_per_actor}, "cuda"
    cpus = int(resources.get("CPU", 1))
    n = max(1, cpus // cfg.threads_per_actor) if cfg.actors == "auto" else int(cfg.actors)
    return n, {"num_cpus": cfg.threads_per_actor}, "cpu"


def _init_ray() -> dict:
    """Connect to the cluster in RAY_ADDRESS (set by `ray job submit`) or the latest `ray start` on this
    machine; else start a local one. Returns what happened and how long it took."""
    import ray

    t0 = time.time()
    if ray.is_initialized():
        return {"ray": "already initialised", "ray_init_seconds": 0.0}
    # The dashboard serves only `ray job submit` and the web UI: a cluster started just for this run skips
    # it (a process less to start on small machines). Ray ignores the flag when it connects to a cluster.
    ctx = ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    return {"ray": getattr(ctx, "address_info", {}).get("gcs_address", "?"), "ray_init_seconds": round(time.time() - t0, 3)}


def run_ray(tasks: list[ShardTask], writer_args: dict, cfg: SynthesisConfig, on_result: Callback, model_dir: Path, device: str = "auto") -> dict:
    """Shards on Ray actors, one model load per actor, bounded in flight, crashed actors replaced.

    When an actor dies, the shard it was running (its oldest unfinished call: an actor runs its calls
    in order) is charged a failed attempt; calls queued behind it are resubmitted uncharged."""
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError

    from dakter_scale.synth.worker import ShardWriter, pack_model_folder

    t0 = time.time()
    info = {"strategy": "ray", **_init_ray()}
    n_actors, resources, device = ray_actor_resources(cfg, device)
    n_actors = max(1, min(n_actors, len(tasks)))
    per_actor = max(1, (cfg.max_in_flight or 2 * n_actors) // n_actors)
    # The model travels through Ray's object store, so worker nodes need no shared file system.
    args = dict(writer_args, model=ray.put(pack_model_folder(model_dir)), device=device)
    # Ray starts workers at niceness 15 so that its own processes stay responsive; an actor is this run's
    # main work, and at nice 15 on a shared machine it gets a sliver of a core (4.7x slower here beside two
    # busy processes: bench/bench_synthesis.py). Actors run at the driver's niceness instead (0 for
    # `ray job submit` entrypoints).
    runtime_env = {"env_vars": {"RAY_worker_niceness": str(os.nice(0))}}
    Remote = ray.remote(max_restarts=0, max_task_retries=0, runtime_env=runtime_env, **resources)(ShardWriter)
    info.update(actors=n_actors, resources=resources, device=device, in_flight_per_actor=per_actor, niceness=os.nice(0))
    log.info("ray: %d actors, %s each, up to %d shards in flight", n_actors, resources, n_actors * per_actor)

    # Per actor: its unfinished calls in submission order. An ObjectRef in the kwargs is resolved by Ray
    # before __init__ runs; ready() answers once the model is loaded.
    calls: dict[Any, collections.deque] = {}
    pending_ready: dict[Any, Any] = {}

    def start_actor() -> None:
        actor = Remote.remote(**args)
        calls[actor] = collections.deque()
        pending_ready[actor.ready.remote()] = actor

    for _ in range(n_actors):
        start_actor()
    queue = collections.deque(tasks)
    in_flight: dict[Any, tuple[Any, ShardTask]] = {}
    ready_times: list[float] = []
    ready_info: list[dict] = []
    warned = False

    while queue or in_flight:
        for actor in sorted(calls, key=lambda a: len(calls[a])):
            while queue and len(calls[actor]) < per_actor:
                task = queue.popleft()
                ref = actor.__call__.remote(task)
                in_flight[ref] = (actor, task)
                calls[actor].append(ref)
        ready, _ = ray.wait(list(pending_ready) + list(in_flight), num_returns=1, timeout=2.0)
        if not ready_times and not warned and time.time() - t0 > NO_ACTOR_WARNING_S:
            warned = True
            log.warning("no actor has started after %.0f s; the cluster may lack %s per actor (an autoscaler may still be adding nodes)", time.time() - t0, resources)
        for ref in ready:
            if ref in pending_ready:
                pending_ready.pop(ref)
                try:
                    where = ray.get(ref)
                    ready_times.append(time.time() - t0)
                    ready_info.append(dict(where, ready_seconds=round(ready_times[-1], 3)))
                    log.info("actor ready after %.1f s: %s", ready_times[-1], where)
                except RayError:
                    pass  # it died while starting: its calls fail and it is replaced below
                continue
            actor, task = in_flight.pop(ref)
            position = calls[actor].index(ref) if actor in calls and ref in calls[actor] else -1
            if position >= 0:
                del calls[actor][position]
            try:
                on_result(task, ray.get(ref), None)
                continue
            except RayActorError as e:
                reason = f"actor died ({type(e).__name__}): {str(e).splitlines()[0][:200]}"
                if actor in calls:  # the first failed call seen from this actor: replace the actor
                    older, newer = list(calls[actor])[:position], list(calls[actor])[max(position, 0):]
                    del calls[actor]
                    with_ray_kill(actor)
                    start_actor()
                    # Calls older than this one stay in flight: the oldest was running and is charged
                    # when its error arrives. Newer calls, and this one if older ones exist, never started.
                    uncharged = [in_flight.pop(r)[1] for r in newer if r in in_flight] + ([task] if older else [])
                    for queued in uncharged:
                        log.warning("shard %d resubmitted: its actor died before starting it", queued.shard)
                        queue.appendleft(queued)
                    if older:
                        continue
            except RayTaskError as e:
                cause = e.cause if getattr(e, "cause", None) is not None else e
                reason = f"{type(cause).__name__}: {str(cause).splitlines()[0][:300] if str(cause) else ''}"
            except RayError as e:
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            on_result(task, None, reason)
            if task.attempt < cfg.retries:
                queue.append(task.retry())
    for actor in list(calls):
        with_ray_kill(actor)
    info["first_actor_ready_seconds"] = round(ready_times[0], 3) if ready_times else None
    info["actors_started"] = ready_info
    return info


def with_ray_kill(actor) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already gone
        pass


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
) -> Summary:
    """Write cfg.n pairs to out_url, skipping finished shards. Never raises for a failed shard:
    failures are in the returned Summary (summary.ok is False). Bad input raises before any worker starts."""
    if device not in DEVICES:
        raise PlanError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if use_ray and importlib.util.find_spec("ray") is None:
        # e.g. an air-gapped GPU image with no Ray wheel: the same worker runs in this process
        log.warning("Ray is not installed (pip install 'dakter-scale[ray]'): synthesizing in this process instead of with Ray actors")
        use_ray = False
    if not use_ray and device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PlanError("--device cuda with --actors 0: this process sees no CUDA device")
    t0 = time.time()
    prep = prepare(model_dir, out_url, cfg, sampling, overwrite=overwrite)
    plan = prep.plan
    summary = Summary(
        out=out_url, planned_pairs=plan.n, planned_shards=plan.num_shards, skipped=list(prep.skipped), corrupt=dict(prep.corrupt), started_at=t0
    )
    out = ShardSet(out_url)
    header = _dataset_header(prep, cfg, sampling, str(model_dir))
    for shard, problem in sorted(prep.corrupt.items()):
        log.warning("shard %d is corrupt (%s): removing its marker and regenerating it", shard, problem)
    for shard in prep.resized:
        log.info("shard %d changes size with --n %d: rewriting it", shard, plan.n)
    for shard in prep.stale_markers:  # before any rewrite, so no reader trusts a shard being replaced
        out.remove_marker(shard)
    if prep.skipped:
        log.info("%d of %d shards are already done; %d to write", len(prep.skipped), plan.num_shards, len(prep.todo))
    if prep.todo:
        out.write_info(header.replace(status=IN_PROGRESS, count=marker_count(prep.markers.values())))

    markers = dict(prep.markers)
    todo_pairs = sum(t.count for t in prep.todo)
    bar = Progress(todo_pairs, len(prep.todo), bar=progress)
    final_failures: dict[int, str] = {}

    def on_result(task: ShardTask, marker: dict | None, reason: str | None) -> None:
        if marker is not None:
            markers[task.shard] = marker
            final_failures.pop(task.shard, None)
            summary.written.append(task.shard)
            summary.pairs_written += task.count
            summary.timeline.append([round(time.time() - t0, 3), task.shard, task.count])
            bar.update(task.count)
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
            summary.strategy = run_ray(prep.todo, args, cfg, on_result, Path(model_dir), device=device)
        else:
            summary.strategy = run_local(prep.todo, args, cfg.retries, on_result, device=device)
        for name in out.remove_temporaries():  # what killed local writers left; no writer is active any more
            log.info("removed %s left by a killed writer", name)
    bar.close()
    summary.failed = {s: r for s, r in final_failures.items() if s not in markers}
    summary.seconds = time.time() - t0

    written = [markers[s] for s in summary.written if s in markers]
    busy = sum(m.get("seconds", 0.0) for m in written)
    stalled = sum(m.get("writer_wait_seconds", 0.0) for m in written)
    if busy > 0 and stalled / busy > WRITER_STALL_WARNING:
        log.warning(
            "the sampler waited for encoding and uploads %.0f %% of the shard time: give each actor more CPU threads (--threads-per-actor)", 100 * stalled / busy
        )

    generated = marker_stats(markers, len(prep.model_info["classes"]))
    div, warnings = divergence(generated, header.train_stats["class_fractions"], cfg.divergence_threshold)
    dataset = header.replace(
        status=COMPLETE if summary.ok and len(markers) == plan.num_shards else INCOMPLETE,
        count=marker_count(markers.values()),
        generated_stats=generated,
        divergence=div,
        warnings=warnings,
    )
    out.write_info(dataset)
    summary.dataset = dataset.to_json()
    for w in warnings:
        log.warning("!" * 78)
        log.warning("GENERATED DATA DIVERGES FROM THE TRAINING DATA: %s", w)
        log.warning("Students trained on such labels can end up worse than with no augmentation.")
        log.warning("!" * 78)
    return summary
