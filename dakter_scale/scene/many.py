"""Many scenes through the dist runner (docs/inference.md, "Many scenes").

``predict_many`` lists the scenes (``list_scenes``: a glob, a list file or a URL prefix), names each
one's output folder (``scene_name``, refusing names that would escape --out or collide), skips a scene
whose predict.json this student made with these options, and runs a ``SceneWorker`` (a scene/predict.py
``Predictor``) per Ray actor or in this process through dist.driver.drive: the same queue, retry rule and
progress line as synthesis. The run holds --out's lease (data/lease.py) and ends with
predict_summary.json and the STAC collection of the scenes' items.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from dakter_scale.data import storage
from dakter_scale.dist.driver import Workers
from dakter_scale.scene import outputs, stac
from dakter_scale.scene.predict import PredictError, PredictOptions, Predictor, check_out, student_hash

log = logging.getLogger("dakter_scale")


@dataclass(frozen=True)
class SceneTask:
    """One scene of a many-scene run (a dist.driver Task), written to the folder OUT/``folder``."""

    url: str
    folder: str
    attempt: int = 0

    @property
    def name(self) -> str:
        """What the driver's log lines call it."""
        return f"scene {self.folder}"

    def retry(self) -> "SceneTask":
        return replace(self, attempt=self.attempt + 1)


def list_scenes(spec: str) -> list[str]:
    """GLOB (local or fsspec), LIST_FILE (one path or URL a line, # comments) or URL_PREFIX (every scene
    directly under it: GeoTIFFs, images, *.SAFE folders, .zip) -> sorted scene URLs."""
    from dakter_scale.scene.read import IMAGE_EXTS, TIFF_EXTS

    fs, path = storage.url_to_fs(spec)
    protocol = spec.split("://", 1)[0] + "://" if "://" in spec else ""

    def full(p: str) -> str:
        return protocol + p if protocol and not p.startswith(protocol) else p

    try:
        if any(ch in path for ch in "*?["):
            return sorted(full(p) for p in fs.glob(path))
        if fs.isdir(path):
            found = []
            for entry in fs.ls(path, detail=True):
                name = entry["name"].rstrip("/")
                low = name.lower()
                if (entry["type"] == "directory" and low.endswith(".safe")) or (
                    entry["type"] != "directory" and low.endswith(TIFF_EXTS + IMAGE_EXTS + (".zip",))
                ):
                    found.append(full(name))
            return sorted(found)
        if fs.isfile(path):
            with fs.open(path, "r") as f:
                return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    except Exception as e:
        raise PredictError(
            f"--scenes {storage.redact_url(spec)}: cannot be listed: {type(e).__name__}: {storage.error_line(e)}"
        ) from None
    raise PredictError(f"--scenes {storage.redact_url(spec)}: no such glob match, folder or list file")


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")
SUMMARY = "predict_summary.json"
# What a many-scene run writes beside the scene folders (and data/lease.py's lock-NNNNNN.json, LOCK_RE).
RUN_FILES = (SUMMARY, stac.COLLECTION_FILE)


def scene_name(url: str) -> str:
    """The output sub-folder of a scene: its file or folder name without the extension, every character
    outside letters, digits and ``._+-`` replaced by ``_``. A PredictError when what is left is empty or
    starts with a dot (``...tif`` would be ``..``: outputs beside --out; ``.x.tif`` a hidden folder), or
    is the name of a file the run writes beside the scene folders (RUN_FILES, the lease's locks)."""
    from dakter_scale.data.lease import LOCK_RE

    base = url.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".SAFE.zip", ".safe.zip", ".zip", ".SAFE", ".safe", ".tiff", ".tif", ".png", ".jpeg", ".jpg"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    name = _UNSAFE_NAME.sub("_", base)
    if not name or name.startswith("."):
        raise PredictError(
            f"--scenes: scene {storage.redact_url(url)} would be written to a folder named {name!r}; rename the scene (its name may not be empty or start with a dot)"
        )
    if name in RUN_FILES or LOCK_RE.match(name):
        raise PredictError(
            f"--scenes: scene {storage.redact_url(url)} would be written to a folder named {name!r}, the name of a file of the run itself; rename the scene"
        )
    return name


def scene_folders(urls: list[str]) -> list[str]:
    """Each scene's output folder name (scene_name), or a PredictError naming the names two scenes share
    (counted once: linear in the number of scenes)."""
    names = [scene_name(u) for u in urls]
    dupes = sorted(n for n, count in Counter(names).items() if count > 1)
    if dupes:
        raise PredictError(f"--scenes: several scenes would write to the same folder: {', '.join(dupes[:5])}")
    return names


def _check_done_alike(record: Path, made_by: dict) -> None:
    """A finished scene is skipped only when this run would make it again: the same student weights and
    options. Otherwise a PredictError: a skip would leave another run's results under this run's summary."""
    try:
        done = json.loads(record.read_text())
        differs = [
            what
            for what, was, now in (
                ("student weights", done["student"]["sha256"], made_by["sha256"]),
                ("options", done["options"], made_by["options"]),
            )
            if was != now
        ]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PredictError(
            f"{record}: unreadable ({type(e).__name__}); remove its folder to predict the scene again"
        ) from None
    if differs:
        raise PredictError(
            f"--out {record.parent.parent}: {record.parent.name} was predicted with other {' and '.join(differs)} (its predict.json); give another --out, or remove {record.parent.name}/ to predict it again"
        )


def _remove_leftovers(folder: Path) -> None:
    """What a failed scene's writer left in its folder when it could not clean up (RasterSink.abort runs
    on a Python exception, not when an actor is killed): the work rasters, predict.json.tmp and storage's
    NAME.tmp-XXXXXXXXXXXX temporaries. Called once every attempt has returned; anything else stays."""
    work = folder / outputs.WORK
    if not work.is_symlink():  # a link is never followed out of --out
        shutil.rmtree(work, ignore_errors=True)
    for tmp in folder.glob("*.tmp"):
        if tmp.is_file() or tmp.is_symlink():
            tmp.unlink(missing_ok=True)
    fs, path = storage.url_to_fs(str(folder))
    storage.remove_temporaries(fs, path)


class SceneWorker:
    """A Predictor behind the driver's worker protocol: built once per process or actor (one model load),
    called per scene; returns a small marker (the record's summary) or raises."""

    def __init__(
        self,
        student: str | dict[str, bytes],
        out: str,
        options: dict,
        device: str | None = None,
        threads: int = 1,
        lease_ref: dict | None = None,
        student_folder: str | None = None,
        **_: Any,
    ):
        from dakter_scale.dist.folder import load_shipped

        t0 = time.time()
        if device == "cpu" or (device is None and not torch.cuda.is_available()):
            torch.set_num_threads(max(1, threads))
        opts = dict(options)
        opts["classes"] = tuple(opts["classes"])
        opts["db_window"] = tuple(opts["db_window"]) if opts.get("db_window") else None
        self.predictor = load_shipped(student, lambda d: Predictor(d, PredictOptions(**opts), device=device))
        if isinstance(student, dict):  # shipped through Ray: records name the driver's folder, not the copy
            self.predictor.student_dir = student_folder or self.predictor.student_dir
        self.out, self.lease_ref = out, lease_ref
        self.load_seconds = time.time() - t0

    def ready(self) -> dict:
        import os

        return {
            "device": str(self.predictor.device),
            "pid": os.getpid(),
            "load_seconds": round(self.load_seconds, 3),
            "torch_threads": torch.get_num_threads(),
            "niceness": os.nice(0),
        }

    def __call__(self, task: SceneTask) -> dict:
        record = self.predictor(task.url, Path(self.out) / task.folder, lease_ref=self.lease_ref)
        return {
            "scene": task.folder,
            "slicks": record["slicks"],
            "seconds": record["timings"]["total_seconds"],
            "tiles": record["tiling"]["count"],
        }

    @staticmethod
    def pack(args: dict, put) -> dict:
        """Arguments for actors on other nodes: the student folder's files travel through the object
        store (``put``: ray.put), so worker nodes need no shared file system."""
        from dakter_scale.dist.folder import pack_folder

        return dict(args, student=put(pack_folder(args["student"])), student_folder=str(args["student"]))


@dataclass
class ManySummary:
    out: str
    scenes: int
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    retried: list[dict] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    slicks: int = 0
    seconds: float = 0.0
    strategy: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict:
        return dict(asdict(self), ok=self.ok)

    def lines(self) -> list[str]:
        out = [
            f"predict to {self.out}: {self.scenes} scenes",
            f"  written: {len(self.written)} scenes ({self.slicks} slicks, {self.seconds:.1f} s)",
            f"  skipped as already done: {len(self.skipped)} scenes",
        ]
        if self.retried:
            out.append(f"  failed attempts (retried up to the limit): {len(self.retried)}")
            out += [f"    {r['scene']} attempt {r['attempt'] + 1}: {r['reason']}" for r in self.retried[:20]]
        out.append(f"  failed for good: {len(self.failed)} scenes")
        out += [f"    {name}: {reason}" for name, reason in sorted(self.failed.items())]
        return out


RunSettings = Workers  # actors, threads per actor, calls in flight, retries of a many-scene run


def predict_many(
    student: str,
    scenes_spec: str,
    out: str,
    options: PredictOptions,
    *,
    settings: RunSettings = RunSettings(),
    use_ray: bool = True,
    device: str = "auto",
    progress: bool = True,
) -> ManySummary:
    """Every scene of ``scenes_spec`` into ``out/NAME/``; skips scenes whose predict.json exists (made by
    this student with these options; else a PredictError before any scene runs). Never
    raises for a failed scene: failures are in the summary (summary.ok is False). ``out``'s lease is held
    for the run; each scene checks it before its predict.json."""
    from dakter_scale.data.lease import Lease

    # Bad flags and a bad student fail here, before any scene or actor starts.
    Predictor(student, options, device="cpu")
    urls = list_scenes(scenes_spec)
    if not urls:
        raise PredictError(f"--scenes {storage.redact_url(scenes_spec)}: no scenes found")
    names = scene_folders(urls)
    for url in urls:
        check_out(url, out)
    Path(out).mkdir(parents=True, exist_ok=True)
    with Lease(str(out), purpose=f"predict --scenes {storage.redact_url(scenes_spec)}").acquire() as lease:
        return _predict_many(student, urls, names, out, options, settings, use_ray, device, progress, lease)


def _predict_many(
    student: str,
    urls: list[str],
    names: list[str],
    out: str,
    options: PredictOptions,
    settings: RunSettings,
    use_ray: bool,
    device: str,
    progress: bool,
    lease,
) -> ManySummary:
    from dakter_scale.dist.driver import Progress
    from dakter_scale.dist.strategies import run_tasks

    t0 = time.time()
    summary = ManySummary(out=storage.redact_url(out), scenes=len(urls))
    tasks, made_by = [], {"sha256": student_hash(student), "options": options.to_json()}
    for url, name in zip(urls, names):
        record = Path(out) / name / outputs.RECORD
        if record.exists():
            _check_done_alike(record, made_by)
            summary.skipped.append(name)
        else:
            tasks.append(SceneTask(url, name))
    if summary.skipped:
        log.info("%d of %d scenes are already done; %d to predict", len(summary.skipped), len(urls), len(tasks))
    bar = Progress(len(tasks), len(tasks), bar=progress, name="predict", units=("scenes", "scenes"))
    failures: dict[str, str] = {}

    def on_result(task: SceneTask, marker: dict | None, reason: str | None, retrying: bool) -> None:
        if marker is not None:
            summary.written.append(task.folder)
            summary.slicks += int(marker.get("slicks", 0))
            failures.pop(task.folder, None)
            bar.update(1)
            return
        summary.retried.append({"scene": task.folder, "attempt": task.attempt, "reason": reason})
        failures[task.folder] = reason or "unknown error"

    if tasks:
        args = dict(
            student=str(student),
            out=str(out),
            options=options.to_json() | {"land": options.land},
            threads=settings.threads_per_actor,
            lease_ref=lease.ref(),
        )
        summary.strategy = run_tasks(tasks, SceneWorker, args, settings, use_ray, device, on_result)
    bar.close()
    summary.failed = {n: r for n, r in failures.items() if n not in summary.written}
    if summary.failed:
        lease.check()  # removing is a write too: only while --out is still this run's
        for name in summary.failed:
            _remove_leftovers(Path(out) / name)
    summary.seconds = round(time.time() - t0, 3)
    (Path(out) / SUMMARY).write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    stac.write_collection(Path(out), names)  # last: the catalogue of the scenes' item.json files
    return summary
