"""Where a run's tasks execute, behind one signature: ``Strategy(worker, args, workers, device)``, then
``start(tasks)``, ``free()`` (how many more tasks it takes now), ``submit(task)``, ``poll()`` (finished
calls), ``close()`` (what ran where, for the summary). ``LocalStrategy`` builds the worker in this
process; ``RayStrategy`` one per Ray actor. The same worker class runs in both.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from typing import Any

from dakter_scale.data.storage import error_line
from dakter_scale.dist.driver import Callback, Outcome, Task, Workers, drive
from dakter_scale.errors import UserError

log = logging.getLogger("dakter_scale")

NO_ACTOR_WARNING_S = 60.0  # warn when an actor has not started after this long (missing resources?)
START_FAILURES = 3  # actors that died while starting, none ever ready, before a run stops (per actor planned)


class WorkersCannotStart(UserError, RuntimeError):
    """No worker could be built: every actor died while starting (a model its node cannot load, say).
    Replacing them without end would only repeat it, once per task and attempt."""


def _start_reason(e: BaseException) -> str:
    """Why an actor died while starting, in one line: where its __init__ raised, the exception's own last
    line (Ray's message holds the whole remote traceback, in colour), else the message's first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return error_line(lines[-1] if getattr(e, "actor_init_failed", False) and lines else text)


def _reason(e: BaseException, limit: int = 300) -> str:
    """A failed task's reason as logged and recorded: one line, credentials redacted (a worker's error
    may name a presigned or user:password URL)."""
    return f"{type(e).__name__}: {error_line(e, limit)}"


class LocalStrategy:
    """One worker in this process (no Ray), one task at a time. A worker may set torch's thread count
    to its own while it runs; close() gives the caller's back."""

    def __init__(self, worker: type, args: dict, workers: Workers, device: str = "auto"):
        self.worker, self.args, self.device = worker, args, device
        if workers.call_timeout:
            log.warning(
                "the call timeout applies to Ray actors only: a local run cannot stop a call in its own process"
            )
        self.pending: Task | None = None
        self.info: dict = {"strategy": "local"}
        self.threads: int | None = None

    def start(self, tasks: int) -> None:
        import torch

        self.threads = torch.get_num_threads()
        t0 = time.time()
        self.writer = self.worker(**self.args, device=None if self.device == "auto" else self.device)
        self.info = {
            "strategy": "local",
            "workers": 1,
            "startup_seconds": round(time.time() - t0, 3),
            "worker": self.writer.ready(),
        }

    def free(self) -> int:
        return 0 if self.pending else 1

    def submit(self, task: Task) -> None:
        self.pending = task

    def poll(self) -> list[Outcome]:
        task, self.pending = self.pending, None
        try:
            return [Outcome(task, result=self.writer(task))]
        except Exception as e:  # a task's failure is the driver's to record and retry, never fatal to the run
            return [Outcome(task, reason=_reason(e))]

    def close(self) -> dict:
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        return self.info


def ray_actor_resources(cfg: Workers, device: str = "auto") -> tuple[int, dict, str]:
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
    return {
        "ray": getattr(ctx, "address_info", {}).get("gcs_address", "?"),
        "ray_init_seconds": round(time.time() - t0, 3),
    }


def _at_niceness(worker: type, niceness: int, scratch: str) -> type:
    """The worker class, for ray.remote, whose constructor first raises its actor's niceness to the given
    one (the driver's), so that the model load, the calls (run on the same thread) and the threads they
    start (torch's) run at it; and points the actor's temporary files (a model folder it unpacks) into
    the run's folder `scratch` under the node's temp dir, which the driver removes at the end: an actor
    killed while loading (a call timeout, a stop) cannot remove its own. One place for every worker class;
    each reports os.nice(0) in its ready info."""

    class AtNiceness(worker):
        def __init__(self, *args, **kwargs):
            import tempfile

            if os.path.basename(tempfile.gettempdir()) != scratch:  # once per process
                tempfile.tempdir = os.path.join(tempfile.gettempdir(), scratch)
            os.makedirs(tempfile.tempdir, exist_ok=True)
            # One already nicer keeps its own: an unprivileged process may raise its niceness, never lower
            # it. Nothing from this module but os: the class travels by value, its actor does not import it.
            try:
                os.nice(max(0, niceness - os.nice(0)))
            except OSError:  # a priority is no reason to lose the actor; its ready info reports what it has
                pass
            super().__init__(*args, **kwargs)

    AtNiceness.__name__ = AtNiceness.__qualname__ = worker.__name__  # Ray names the actor by it (ray::Name)
    return AtNiceness


def _kill(actor) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already gone
        pass


def _returned(ref) -> bool:
    """Whether a call has already returned, with its result or its worker's error, not its actor's death."""
    import ray
    from ray.exceptions import RayActorError, RayError

    if not ray.wait([ref], timeout=0)[0]:
        return False
    try:
        ray.get(ref)
    except RayActorError:
        return False
    except RayError:  # the worker raised: the call ran
        pass
    return True


class RayStrategy:
    """Workers on Ray actors, one build (model load) per actor, a bounded number of calls per actor,
    crashed actors replaced. The worker class's ``pack(args, put)`` turns its arguments into what
    travels to other nodes (a model folder through the object store: ``put`` is ray.put).

    When an actor dies, the task it was running (its oldest unfinished call: an actor runs its calls
    in order) fails and is charged an attempt; calls queued behind it never started (Outcome.started
    is False) and are resubmitted uncharged. With ``Workers.call_timeout``, a call that has run that long
    (timed from when its actor finished the call before it) is presumed hung: the actor is killed and
    replaced, the call is charged a failed attempt and the calls queued behind it are resubmitted. An actor
    that dies while starting ran none of its calls: all are resubmitted uncharged, its start counted."""

    def __init__(self, worker: type, args: dict, workers: Workers, device: str = "auto"):
        self.worker, self.args, self.cfg, self.device = worker, args, workers, device
        self.info: dict = {"strategy": "ray"}
        # Per actor: its unfinished calls in submission order.
        self.calls: dict[Any, collections.deque] = {}
        self.ready_times: list[float] = []
        self.ready_info: list[dict] = []
        self.start_failures: list[str] = []  # why actors died while starting
        # Per ready actor: when its oldest unfinished call began running (None: idle).
        self.head_since: dict[Any, float | None] = {}
        self.started_at: dict[Any, float] = {}  # per actor: when it was asked to start
        self.scratch = f"dakter-run-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # the actors' temp folder (_at_niceness)

    def start(self, tasks: int) -> None:
        import ray

        self.t0 = time.time()
        self.info.update(_init_ray())
        n_actors, self.resources, device = ray_actor_resources(self.cfg, self.device)
        n_actors = max(1, min(n_actors, tasks))
        self.per_actor = max(1, (self.cfg.max_in_flight or 2 * n_actors) // n_actors)
        # The model travels through Ray's object store, so worker nodes need no shared file system.
        self.packed = dict(self.worker.pack(self.args, ray.put), device=device)
        # Ray starts workers at niceness 15 so that its own processes stay responsive; an actor is this run's
        # main work, and at nice 15 on a shared machine it gets a sliver of a core (4.7x slower here beside two
        # busy processes: bench/bench_synthesis.py). Actors run at the driver's niceness instead (0 for
        # `ray job submit` entrypoints). Ray adds RAY_worker_niceness to its raylet's niceness, which is the
        # driver's when the driver started the cluster (passing the driver's own doubled it) and its own when
        # the driver joined one: workers start at the raylet's (0 added), each actor raises its own.
        niceness = os.nice(0)
        runtime_env = {"env_vars": {"RAY_worker_niceness": "0"}}
        self.Remote = ray.remote(max_restarts=0, max_task_retries=0, runtime_env=runtime_env, **self.resources)(
            _at_niceness(self.worker, niceness, self.scratch)
        )
        self.info.update(
            actors=n_actors,
            resources=self.resources,
            device=device,
            in_flight_per_actor=self.per_actor,
            niceness=niceness,
        )
        log.info(
            "ray: %d actors, %s each, up to %d tasks in flight", n_actors, self.resources, n_actors * self.per_actor
        )
        # An ObjectRef in the kwargs is resolved by Ray before __init__ runs; ready() answers once the
        # model is loaded.
        self.pending_ready: dict[Any, Any] = {}
        self.in_flight: dict[Any, tuple[Any, Task]] = {}
        self.warned: set = set()  # actors already named in a not-started warning
        for _ in range(n_actors):
            self._start_actor()

    def _start_actor(self) -> None:
        actor = self.Remote.remote(**self.packed)
        self.calls[actor] = collections.deque()
        self.pending_ready[actor.ready.remote()] = actor
        self.started_at[actor] = time.time()

    def free(self) -> int:
        return sum(self.per_actor - len(calls) for calls in self.calls.values())

    def submit(self, task: Task) -> None:
        actor = min(self.calls, key=lambda a: len(self.calls[a]))
        if actor in self.head_since and not self.calls[actor]:
            self.head_since[actor] = time.time()
        ref = actor.__call__.remote(task)
        self.in_flight[ref] = (actor, task)
        self.calls[actor].append(ref)

    def poll(self) -> list[Outcome]:
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        ready, _ = ray.wait(list(self.pending_ready) + list(self.in_flight), num_returns=1, timeout=2.0)
        self._warn_not_started()
        outcomes = []
        for ref in ready:
            if ref in self.pending_ready:
                actor = self.pending_ready.pop(ref)
                try:
                    where = ray.get(ref)
                    if actor in self.calls:
                        self.head_since[actor] = time.time() if self.calls[actor] else None
                    self.ready_times.append(time.time() - self.t0)
                    self.ready_info.append(dict(where, ready_seconds=round(self.ready_times[-1], 3)))
                    log.info("actor ready after %.1f s: %s", self.ready_times[-1], where)
                except RayActorError as e:  # it died while starting: none of its calls ran; it is replaced
                    self._start_failed(_start_reason(e))
                    if actor in self.calls:
                        outcomes += [Outcome(t, started=False) for t in self._replace(actor)]
                except RayError as e:
                    self._start_failed(_start_reason(e))
                continue
            actor, task = self.in_flight.pop(ref)
            calls = self.calls.get(actor)
            position = calls.index(ref) if calls is not None and ref in calls else -1
            if position >= 0:
                del calls[position]
                if position == 0 and actor in self.head_since:  # the next queued call starts now
                    self.head_since[actor] = time.time() if calls else None
            try:
                outcomes.append(Outcome(task, result=ray.get(ref)))
                continue
            except RayActorError as e:
                if getattr(e, "actor_init_failed", False):  # it never ran: its actor died in __init__
                    outcomes.append(Outcome(task, started=False))
                    if calls is not None:  # its first failed call seen: its start counts once, it is replaced
                        # now, not on its failed ready: that one may stay pending for minutes (Ray 2.60) while
                        # each call resubmitted to it fails at once, a busy loop on the same task.
                        self.pending_ready = {r: a for r, a in self.pending_ready.items() if a != actor}
                        self._start_failed(_start_reason(e))
                        outcomes += [Outcome(t, started=False) for t in self._replace(actor)]
                    continue
                reason = f"actor died ({type(e).__name__}): {_start_reason(e)}"
                if calls is not None:  # the first failed call seen from this actor: replace the actor
                    older, newer = list(calls)[:position], list(calls)[max(position, 0) :]
                    del self.calls[actor]
                    self.head_since.pop(actor, None)
                    self.started_at.pop(actor, None)
                    _kill(actor)
                    self._start_actor()
                    # Older calls that finished stay in flight, collected with their results; of the rest,
                    # the oldest was running and is charged when its error arrives. Every other unfinished
                    # call, and this one if an older one was running, never started.
                    running = [r for r in older if not _returned(r)]
                    unstarted = [self.in_flight.pop(r)[1] for r in running[1:] + newer if r in self.in_flight] + (
                        [task] if running else []
                    )
                    outcomes += [Outcome(t, started=False) for t in unstarted]
                    if running:
                        continue
            except RayTaskError as e:
                reason = _reason(e.cause if getattr(e, "cause", None) is not None else e)
            except RayError as e:
                reason = _reason(e)
            outcomes.append(Outcome(task, reason=reason))
        return outcomes + self._timed_out()

    def _warn_not_started(self) -> None:
        """Warn once per actor not started after NO_ACTOR_WARNING_S, also while others run: calls are
        queued on it all the same (--actors above the slots the cluster has would wait silently)."""
        now = time.time()
        waiting = [a for a in self.pending_ready.values() if now - self.started_at.get(a, now) > NO_ACTOR_WARNING_S]
        if not set(waiting) - self.warned:
            return
        self.warned.update(waiting)
        log.warning(
            "%s after %.0f s; the cluster may lack %s per actor (an autoscaler may still be adding nodes), "
            "and the calls queued on %s wait",
            f"{len(waiting)} of {self.info['actors']} actors have not started"
            if self.ready_times
            else "no actor has started",
            NO_ACTOR_WARNING_S,
            self.resources,
            "them" if len(waiting) > 1 else "it",
        )

    def _start_failed(self, reason: str) -> None:
        """Count an actor that could not start; stop the run once START_FAILURES per planned actor have
        failed and none was ever ready (replacing them would only repeat it)."""
        self.start_failures.append(reason)
        if not self.ready_times and len(self.start_failures) >= START_FAILURES * self.info["actors"]:
            raise WorkersCannotStart(
                f"no Ray actor could start ({len(self.start_failures)} failed while starting, none ready): {reason}"
            )

    def _replace(self, actor) -> list[Task]:
        """Kill an actor, start another in its place; its unfinished calls' tasks, oldest first."""
        refs = list(self.calls.pop(actor, ()))
        self.head_since.pop(actor, None)
        self.started_at.pop(actor, None)
        _kill(actor)
        self._start_actor()
        return [self.in_flight.pop(r)[1] for r in refs if r in self.in_flight]

    def _timed_out(self) -> list[Outcome]:
        """With call_timeout: kill and replace each actor whose running call has passed it (that call
        fails, one attempt charged; the calls queued behind it never started), and each actor that has
        not started within it (a model load stalled on a mount: its queued calls never started)."""
        import ray

        limit = self.cfg.call_timeout
        if not limit:
            return []
        outcomes, now = [], time.time()
        for ref, actor in list(self.pending_ready.items()):
            if now - self.started_at.get(actor, now) > limit:
                del self.pending_ready[ref]
                outcomes += [Outcome(t, started=False) for t in self._replace(actor)]
                self._start_failed(f"did not start within the call timeout ({limit:g} s)")
        for actor, since in list(self.head_since.items()):
            calls = self.calls.get(actor)
            if since is None or now - since <= limit or not calls:
                continue
            if ray.wait([calls[0]], timeout=0)[0]:  # finished, not yet collected: the next poll takes it
                continue
            tasks = self._replace(actor)
            if tasks:
                reason = f"timed out: still running after {now - since:.0f} s (call timeout {limit:g} s); its actor was killed"
                outcomes.append(Outcome(tasks[0], reason=reason))
                outcomes += [Outcome(t, started=False) for t in tasks[1:]]
        return outcomes

    def close(self) -> dict:
        for actor in list(self.calls):
            _kill(actor)
        # what killed actors left in the run's temp folder, on this node (a cluster's other nodes keep
        # theirs in their temp dir, named by the run)
        shutil.rmtree(os.path.join(tempfile.gettempdir(), self.scratch), ignore_errors=True)
        self.info["first_actor_ready_seconds"] = round(self.ready_times[0], 3) if self.ready_times else None
        self.info["actors_started"] = self.ready_info
        return self.info


def run_tasks(
    tasks: list, worker: type, args: dict, workers: Workers, use_ray: bool, device: str, on_result: Callback
) -> dict:
    """drive() the tasks on Ray actors (use_ray) or in this process, each failed task tried again up to
    workers.retries times: the one place that picks the strategy and reads the retry count."""
    strategy = (RayStrategy if use_ray else LocalStrategy)(worker, args, workers, device)
    return drive(tasks, strategy, workers.retries, on_result)
