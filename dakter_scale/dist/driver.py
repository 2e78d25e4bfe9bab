"""The driver loop: a queue of tasks, a strategy that runs them, the retry rule, the progress line.

A task is any frozen value with an ``attempt``, ``retry()`` (the same task, one attempt later) and a
``name`` the logs show (``Task``). A worker is a plain class, built once per process or actor and
called once per task; it returns a small JSON-able result (a shard's marker, a scene's summary) or
raises. A strategy (dist/strategies.py) decides where workers run; ``drive`` alone decides what runs
next and what is retried.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

log = logging.getLogger("dakter_scale")


class Task(Protocol):
    attempt: int

    @property
    def name(self) -> str: ...

    def retry(self) -> "Task": ...


@dataclass(frozen=True)
class Outcome:
    """One finished call: the worker's result, or why it failed. started=False: its worker died
    before starting it, so it is resubmitted without being charged an attempt."""

    task: Any  # a Task
    result: dict | None = None
    reason: str | None = None
    started: bool = True


class Strategy(Protocol):
    def start(self, tasks: int) -> None: ...

    def free(self) -> int: ...

    def submit(self, task: Task) -> None: ...

    def poll(self) -> list[Outcome]: ...

    def close(self) -> dict: ...


@dataclass(frozen=True)
class Workers:
    """How many workers run where, and how often a failed task is tried again."""

    actors: int | str = "auto"  # Ray actors: a number, or auto (one per GPU, else cpus // threads_per_actor)
    threads_per_actor: int = 1
    max_in_flight: int = 0  # tasks submitted at once; 0 = 2 per actor
    retries: int = 1  # extra attempts per task after a failure (strategies.run_tasks gives it to drive)
    # A call that has run this many seconds is presumed hung (a stalled mount or object-store write, a wedged
    # GPU): Ray kills its actor, the call is a failed attempt, its actor is replaced. 0: no limit.
    call_timeout: float = 0.0


Callback = Callable[[Any, "dict | None", "str | None", bool], None]


def drive(tasks: list, strategy: Strategy, retries: int, on_result: Callback) -> dict:
    """Run tasks on a strategy until each has a result or has failed retries + 1 times: the one place
    that keeps the queue and the retry rule, and logs each failed attempt (a warning while it will be
    retried, an error at the last). on_result(task, result, reason, retrying) hears every attempt.
    Returns what the strategy reports about where the tasks ran."""
    queue, running = collections.deque(tasks), 0
    try:
        strategy.start(len(tasks))
        while queue or running:
            while queue and strategy.free() > 0:
                strategy.submit(queue.popleft())
                running += 1
            for outcome in strategy.poll():
                running -= 1
                task = outcome.task
                if not outcome.started:
                    log.warning("%s resubmitted: its actor died before starting it", task.name)
                    queue.appendleft(task)
                    continue
                retrying = outcome.result is None and task.attempt < retries
                if outcome.result is None:
                    (log.warning if retrying else log.error)(
                        "%s attempt %d failed: %s%s",
                        task.name,
                        task.attempt + 1,
                        outcome.reason,
                        "; retrying" if retrying else "; giving up",
                    )
                on_result(task, outcome.result, outcome.reason, retrying)
                if retrying:
                    queue.append(task.retry())
    finally:
        info = strategy.close()
    return info


def _hms(seconds: float) -> str:
    """HH:MM:SS, hours past 24 counted on (strftime's %H would wrap a 30 h ETA to 06)."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}:{secs:02d}"


class Progress:
    """One line: tasks and items done, items/s, ETA. A tqdm bar on a terminal; otherwise (logs, `ray job
    submit`, DAKTER_PROGRESS=0) the same line is logged after each task, at most every `every` seconds.
    units: what a task and an item are called (shards and pairs; scenes and scenes)."""

    def __init__(
        self, total_items: int, total_tasks: int, bar: bool, name: str, units: tuple[str, str], every: float = 30.0
    ):
        self.total_items, self.total_tasks = total_items, total_tasks
        self.name, self.units = name, units
        self.items = self.tasks = 0
        self.t0 = self.last_log = time.time()
        self.every = every
        self.window: collections.deque = collections.deque([(self.t0, 0)], maxlen=16)
        self.bar = None
        if bar and total_items and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_items, unit=units[1].rstrip("s"), desc=name, dynamic_ncols=True, smoothing=0.1)
            self.bar.set_postfix_str(f"{units[0]} 0/{total_tasks}")

    def rate(self) -> float:
        (t_a, p_a), (t_b, p_b) = self.window[0], self.window[-1]
        return (p_b - p_a) / (t_b - t_a) if t_b > t_a and p_b > p_a else 0.0

    def line(self) -> str:
        rate = self.rate()
        eta = (self.total_items - self.items) / rate if rate > 0 else float("nan")
        eta_text = _hms(eta) if eta == eta else "?"
        if self.units[0] == self.units[1]:
            return f"{self.name}: {self.units[0]} {self.tasks}/{self.total_tasks}, {rate:.2f} {self.units[1]}/s, ETA {eta_text}"
        return f"{self.name}: {self.units[0]} {self.tasks}/{self.total_tasks}, {self.units[1]} {self.items}/{self.total_items}, {rate:.2f} {self.units[1]}/s, ETA {eta_text}"

    def update(self, items: int) -> None:
        self.items += items
        self.tasks += 1
        now = time.time()
        self.window.append((now, self.items))
        if self.bar is not None:
            self.bar.update(items)
            self.bar.set_postfix_str(f"{self.units[0]} {self.tasks}/{self.total_tasks}")
        elif now - self.last_log >= self.every or self.tasks == self.total_tasks:
            self.last_log = now
            log.info(self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
