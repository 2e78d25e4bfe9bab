"""Cards: the README.md beside every artefact, in the Hugging Face card convention (YAML metadata between
``---`` lines, then Markdown), so that a model folder, a student folder or a shard set found on a bucket
or the Hub says what made it, what it holds and what it is not for.

This module owns the three cards and their metadata; each is written by the function that made the
artefact, after the artefact's own files, and only adds README.md:
  * the generator's model folder (diffusion/train.py): ``library_name: diffusers``, classes, b, the data
    and its class shares, the steps trained and the last loss, the default sampler and its network
    evaluations per pair;
  * a student folder (student/train.py): ``library_name: segmentation-models-pytorch``, architecture,
    encoder, the real and generated data, the ratio and labels, the last loss, and the evaluation's
    metrics when the run evaluated (``model-index``, which the Hub shows as results);
  * a shard set (synth/run.py, synth/targeted.py, synth/filter.py): a webdataset dataset card whose
    ``configs`` list the finished shards (the done markers') as its data files, the pair count, classes,
    class shares, mean confidence, ENL, the sampler and evaluations per pair, the divergence warnings.

A card holds no wall-clock numbers (timings stay in logs/train.json and the markers), so an
unchanged run writes the same card. README.md is not a shard set's member: ShardSet lists shards by
their markers (``shard-NNNNNN.json``) and clears only ``shard-*`` files and dataset.json, so the card
is neither read as a shard nor removed with one; a rerun writes it again.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from dakter_scale.data import storage
from dakter_scale.data.sar_stats import SAR
from dakter_scale.data.shardset import DatasetInfo, ShardSet

CARD_FILE = "README.md"
TAGS = ["dakter-scale", "sar", "synthetic-aperture-radar", "oil-spill", "remote-sensing"]
HOMEPAGE = "DAKTer (arXiv 2412.08116)"


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a user would type it from the repository's root (a job as
    ``jobs/NAME.py`` wherever the checkout is, so that the same run in two checkouts writes the same card;
    other absolute local paths, also after ``--flag=``, relative to the working folder: a card names no
    folder of the machine that wrote it), each argument's credentials redacted before quoting (redacting
    the quoted line took the closing quote with a secret)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and os.path.basename(os.path.dirname(os.path.abspath(argv[0]))) == "jobs":
        argv[0] = "jobs/" + os.path.basename(argv[0])
    return shlex.join(["python", *(storage.redact_url(_relative(a)) for a in argv)])


def _relative(arg: str) -> str:
    """An absolute local path (or --flag=PATH) relative to the working folder; anything else as given."""
    flag, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    if "://" in value or not os.path.isabs(value):
        return arg
    try:
        return f"{flag}{eq}{os.path.relpath(value)}"
    except ValueError:  # another drive
        return arg


def render(metadata: dict[str, Any], body: str) -> str:
    """A card: YAML metadata between --- lines, then the Markdown body."""
    return (
        "---\n"
        + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000)
        + "---\n\n"
        + body.strip()
        + "\n"
    )


def _round(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v, digits) for v in value]
    return value


def _shares(classes: list[str], fractions: list[float] | None) -> dict[str, float] | None:
    return {name: round(float(f), 4) for name, f in zip(classes, fractions)} if fractions else None


def _table(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows if value is not None)])


def _share_table(classes: list[str], columns: dict[str, list[float] | None]) -> str:
    columns = {name: values for name, values in columns.items() if values}
    if not columns:
        return ""
    head = "| class | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns)
    rows = [
        f"| {name} | " + " | ".join(f"{values[i]:.4f}" for values in columns.values()) + " |"
        for i, name in enumerate(classes)
    ]
    return head + "\n" + "\n".join(rows)


def _simulated(spec: str | None) -> bool:
    return str(spec or "").startswith("synthetic:")


def _data_limit(spec: str | None) -> str:
    if _simulated(spec):
        return "Trained on simulated scenes (the built-in Sentinel-1-like simulator, `synthetic:`), not on real SAR acquisitions: it says nothing about real oil spills."
    return f"Trained on `{spec}` only: scenes of another sensor, polarisation, incidence range or radiometric convention are outside what it has seen."


def _license(stated: str | None) -> dict[str, str]:
    """The card's licence metadata: the training data's (data.license) or, unstated, the Hub's "other"
    with a name that says whose terms apply: an artefact made from data carries the data's terms."""
    return {"license": stated} if stated else {"license": "other", "license_name": "training-data-terms"}


def _license_limit(stated: str | None, spec: str | None) -> str:
    if stated:
        return f"Licence: `{stated}`, the training data's as its maker stated it (`data.license`)."
    source = f"`{spec}`" if spec else "its model's training data"
    return (
        f"Licence: not stated. It is made from {source}, whose terms apply; state them with `data.license=ID` "
        "(an SPDX or Hub licence id) when it is made."
    )


def _last_loss(record: dict | None) -> float | None:
    loss = ((record or {}).get("last_log") or {}).get("loss")
    return round(float(loss), 6) if isinstance(loss, (int, float)) else None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- the generator's model folder ----------------------------------------------------------------------


def model_card(info: dict, record: dict | None = None, command: str | None = None) -> str:
    """The card of a model folder from its dakter.json (`info`) and its run's logs/train.json (`record`)."""
    classes = list(info["classes"])
    train = info.get("train_stats") or {}
    sampling = info.get("sampling") or {}
    sar = train.get(SAR) or {}
    from dakter_scale.data.sar_stats import SarCounts, enl_from_counts, finite_or_none

    enl = finite_or_none(enl_from_counts(SarCounts.from_json(sar).enl)) if sar and not SarCounts.problem(sar) else None
    metadata = {
        **_license(info.get("data_license")),
        "library_name": "diffusers",
        "pipeline_tag": "unconditional-image-generation",
        "tags": [*TAGS, "joint-diffusion", "soft-labels", "dakter"],
        "dakter": {
            "artefact": "joint diffusion model (SAR image + soft label)",
            "classes": classes,
            "resolution": info.get("resolution"),
            "channels": info.get("channels"),
            "b": _round(info.get("b"), 6),
            "b_mode": info.get("b_mode"),
            "prediction_type": info.get("prediction_type"),
            "label_prediction_type": info.get("label_prediction_type"),
            "radiometry": info.get("radiometry"),
            "data": {
                "spec": info.get("data_spec"),
                "images": train.get("images"),
                "class_shares": _shares(classes, train.get("class_fractions")),
                "enl": _round(enl),
            },
            "training": {
                "steps": info.get("steps_trained"),
                "last_loss": _last_loss(record),
                "processes": (record or {}).get("processes"),
            },
            "sampler": sampling.get("sampler"),
            "evaluations_per_pair": sampling.get("steps"),
            "command": command,
            "code_version": info.get("code_version"),
        },
    }
    made = [
        ("command", f"`{command}`" if command else None),
        ("training data", f"`{info.get('data_spec')}`"),
        ("training images", train.get("images")),
        ("steps trained", info.get("steps_trained")),
        ("last training loss", _last_loss(record)),
        ("prediction type", info.get("prediction_type")),
        ("radiometry", info.get("radiometry")),
        ("training patches' ENL", None if enl is None else f"{enl:.2f}"),
        ("code version", info.get("code_version")),
    ]
    body = f"""
# DAKTer joint diffusion model: {", ".join(classes)} at {info.get("resolution")} px

A diffusers `UNet2DModel` over 1 + {len(classes)} channels that draws a SAR image and its soft label together
({HOMEPAGE}). The label channels are scaled by b = {info.get("b", float("nan")):.4f} ({info.get("b_mode")}), so that
image and label share one signal-to-noise ratio along the forward process. `dakter.json` holds what this card
summarises; the weights are `unet/diffusion_pytorch_model.safetensors`.

## How it was made
{_table(made)}

## Classes and their pixel shares in the training data
{_share_table(classes, {"training share": train.get("class_fractions")})}

## Use
Draw pairs into a shard set (default sampler {sampling.get("sampler")}, {sampling.get("steps")} network evaluations per pair):

    python jobs/synthesize.py --model THIS_FOLDER --n 1000 --out runs/shards

## Limits
- {_data_limit(info.get("data_spec"))}
- {_license_limit(info.get("data_license"), info.get("data_spec"))}
- Draws {info.get("resolution")} px patches in the radiometry of its training data ({info.get("radiometry")}); it is a data generator for training segmentation students, not a segmenter.
- Generated labels are soft and can disagree with the image; check a set's divergence warnings (dataset.json) before training on it.
"""
    return render(metadata, body)


def write_model_card(folder: str | Path, command: str | None = None) -> Path:
    """README.md in a written model folder, from its dakter.json and logs/train.json."""
    folder = Path(folder)
    info = json.loads((folder / "dakter.json").read_text())
    path = folder / CARD_FILE
    path.write_text(
        model_card(info, _read_json(folder / "logs" / "train.json"), command_line() if command is None else command)
    )
    return path


# -- a student folder --------------------------------------------------------------------------------


def _metric(value: Any) -> float | None:
    """A metric for the card: None when missing or not finite (an empty split's NaN mIoU is no result:
    the Hub's model-index wants a number, and YAML's .nan is none)."""
    return round(float(value), 6) if isinstance(value, (int, float)) and math.isfinite(value) else None


def student_card(
    info: dict,
    record: dict | None = None,
    evaluation: dict | None = None,
    command: str | None = None,
    name: str = "student",
) -> str:
    """The card of a student folder from its student.json (`info`), logs/train.json (`record`) and, when the
    run evaluated it, the metrics of student/evaluate.py (`evaluation`)."""
    classes = list(info["classes"])
    evaluated = None
    if evaluation:
        evaluated = {
            "data": evaluation.get("data"),
            "split": evaluation.get("split"),
            "images": evaluation.get("images"),
            "miou": _metric(evaluation.get("miou")),
            "mean_f1": _metric(evaluation.get("mean_f1")),
            "pixel_accuracy": _metric(evaluation.get("pixel_accuracy")),
            "iou": {c: _metric(v) for c, v in zip(classes, evaluation.get("iou") or [])},
        }
    metadata: dict[str, Any] = {
        **_license(info.get("data_license")),
        "library_name": "segmentation-models-pytorch",
        "pipeline_tag": "image-segmentation",
        "tags": [
            *TAGS,
            "semantic-segmentation",
            "knowledge-distillation" if info.get("labels") == "soft" else "segmentation",
        ],
        "dakter": {
            "artefact": "segmentation student",
            "arch": info.get("arch"),
            "encoder": info.get("encoder"),
            "encoder_depth": info.get("encoder_depth"),
            "classes": classes,
            "resolution": info.get("resolution"),
            "radiometry": info.get("radiometry"),
            "pixel_spacing_m": info.get("pixel_spacing_m"),
            "data": {
                "real": info.get("real"),
                "synthetic": info.get("synthetic"),
                "synthetic_fingerprint": info.get("synthetic_fingerprint"),
                "ratio": info.get("ratio"),
                "labels": info.get("labels"),
            },
            "training": {
                "steps": info.get("steps"),
                "batch_size_per_rank": info.get("batch_size_per_rank"),
                "ranks": info.get("ranks"),
                "generated_share": _round(info.get("generated_share")),
                "last_loss": _last_loss(record),
            },
            "evaluation": evaluated,
            "command": command,
        },
    }
    metrics = []
    if evaluated:
        metrics = [
            {"type": "mean_iou", "name": "mIoU", "value": evaluated["miou"]},
            {"type": "f1", "name": "mean F1", "value": evaluated["mean_f1"]},
            {"type": "accuracy", "name": "pixel accuracy", "value": evaluated["pixel_accuracy"]},
        ]
        metrics += [
            {"type": "iou", "name": f"IoU {c}", "value": v} for c, v in evaluated["iou"].items() if v is not None
        ]
    metrics = [m for m in metrics if m["value"] is not None]
    if metrics:  # a model-index result needs at least one metric
        metadata["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-segmentation", "name": "Semantic segmentation"},
                        "dataset": {
                            "name": str(evaluated["data"]),
                            "type": str(evaluated["data"]).split(":", 1)[0],
                            "split": evaluated["split"],
                        },
                        "metrics": metrics,
                    }
                ],
            }
        ]
    trained = (
        "real data only"
        if info.get("labels") == "none"
        else f"real data plus generated pairs at ratio {info.get('ratio')} ({'KD on soft labels' if info.get('labels') == 'soft' else 'CE on hard labels'})"
    )
    eval_section = "Not evaluated by the run that made it: `python jobs/evaluate.py --student THIS_FOLDER --data SPEC` measures it."
    if evaluated:
        eval_section = (
            f"On `{evaluated['data']}` [{evaluated['split']}, {evaluated['images']} images], one confusion matrix over the split:\n\n"
            + _table(
                [
                    ("mIoU", evaluated["miou"]),
                    ("mean F1", evaluated["mean_f1"]),
                    ("pixel accuracy", evaluated["pixel_accuracy"]),
                    *((f"IoU {c}", v if v is not None else "–") for c, v in evaluated["iou"].items()),
                ]
            )
        )
    made = [
        ("command", f"`{command}`" if command else None),
        ("real data", f"`{info.get('real')}`"),
        ("generated data", f"`{info.get('synthetic')}`" if info.get("synthetic") else None),
        ("labels", info.get("labels")),
        ("ratio", info.get("ratio")),
        ("steps", info.get("steps")),
        ("batch per rank x ranks", f"{info.get('batch_size_per_rank')} x {info.get('ranks')}"),
        (
            "generated share of samples",
            None if info.get("generated_share") is None else f"{info['generated_share']:.3f}",
        ),
        ("last training loss", _last_loss(record)),
    ]
    body = f"""
# DAKTer segmentation student: {info.get("arch")} ({info.get("encoder")})

A segmentation-models-pytorch `{info.get("arch")}` that segments SAR patches into {", ".join(classes)}, trained on {trained}
({HOMEPAGE}). `student.json` holds what this card summarises; the weights are `model.safetensors`.

## How it was made
{_table(made)}

## Evaluation
{eval_section}

## Use

    python jobs/predict.py --student THIS_FOLDER --scene scene.tif --out runs/predictions
    python jobs/evaluate.py --student THIS_FOLDER --data SPEC --split test

## Limits
- {_data_limit(info.get("real"))}
- {_license_limit(info.get("data_license"), info.get("real"))}
- Expects 8-bit SAR patches in the radiometric convention recorded in student.json ("radiometry"); jobs/predict.py converts scenes to it or refuses them.
"""
    return render(metadata, body)


def write_student_card(folder: str | Path, evaluation: dict | None = None, command: str | None = None) -> Path:
    """README.md in a written student folder, from its student.json, logs/train.json and the run's evaluation."""
    folder = Path(folder)
    info = json.loads((folder / "student.json").read_text())
    path = folder / CARD_FILE
    path.write_text(
        student_card(
            info,
            _read_json(folder / "logs" / "train.json"),
            evaluation,
            command_line() if command is None else command,
            name=folder.name or "student",
        )
    )
    return path


# -- a shard set -------------------------------------------------------------------------------------


# The Hub's size_categories values (huggingface_hub DatasetCardData): a count outside them is not
# accepted as a size category, so the last bins are the Hub's own, not "n>10M".
SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
)


def _size_category(n: int) -> str:
    for limit, name in SIZE_CATEGORIES:
        if n < limit:
            return name
    return "n>1T"


def dataset_card(
    info: DatasetInfo,
    shards: list[int],
    command: str | None = None,
    data_spec: str | None = None,
    data_license: str | None = None,
) -> str:
    """The card of a shard set from its dataset.json (`info`), its finished shards' ids and the data its
    model was trained on (`data_spec` and its `data_license`, from the model folder's dakter.json when it
    can be read)."""
    classes = list(info.classes or [])
    gen = info.generated_stats or {}
    div = info.divergence or {}
    target = info.target or {}
    train = info.train_stats or {}
    sar = gen.get(SAR) or {}
    evaluations = info.steps * int(target.get("resample", 1)) if info.steps else None
    count = int(info.count or 0)
    metadata = {
        **_license(data_license),
        "tags": [*TAGS, "webdataset", "synthetic", "soft-labels", "dakter"],
        "task_categories": ["image-segmentation"],
        "size_categories": [_size_category(count)],
        # always the default config, an empty list of files while no shard is finished: without one,
        # load_dataset(THE_SET) guesses the data files and reads the unfinished shards' parquet manifests
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": [ShardSet.tar_name(s) for s in shards]}],
            }
        ],
        "dakter": {
            "artefact": "shard set of generated (SAR image, soft label) pairs",
            "format": info.format,
            "status": info.status,
            "pairs": count,
            "shards": len(shards),
            "samples_per_shard": info.samples_per_shard,
            "classes": classes,
            "resolution": info.resolution,
            "fingerprint": info.fingerprint,
            "model": info.model,
            "model_hash": info.model_hash,
            "b": _round(info.b, 6),
            "sampler": info.sampler,
            "steps": info.steps,
            "evaluations_per_pair": evaluations,
            "seed": info.seed,
            "model_data": data_spec,
            "class_shares": _shares(classes, gen.get("class_fractions")),
            "training_class_shares": _shares(classes, train.get("class_fractions")),
            "mean_confidence": _round(gen.get("mean_confidence")),
            "mean_entropy": _round(gen.get("mean_entropy")),
            "enl": _round(sar.get("enl")),
            "class_fraction_tv": _round(div.get("class_fraction_tv")),
            "diverged": div.get("diverged"),
            "warnings": list(info.warnings or []),
            "filter": _round({k: v for k, v in info.filter.items() if k != "seconds"})
            if info.filter
            else None,  # no wall-clock numbers
            "target": _round(
                {k: target[k] for k in ("spec", "route", "shares", "achieved", "met", "resample") if k in target}
            )
            if target
            else None,
            "command": command,
            "code_version": info.code_version,
        },
    }
    origin = (
        f"drawn by `{info.model}` with {info.sampler} x {info.steps} steps ({evaluations} network evaluations per pair), seed {info.seed}"
        if info.model
        else "derived from another set's pairs (copied byte for byte)"
    )
    if info.filter:
        origin = f"kept by the label-alignment filter from `{info.filter.get('source', '?')}`"
    warnings = (
        "\n".join(f"- {w}" for w in info.warnings or [])
        or "- none: the set's class shares, confidence and SAR statistics are within the divergence check's limits."
    )
    made = [
        ("command", f"`{command}`" if command else None),
        ("model", f"`{info.model}` ({str(info.model_hash or '')[:12]})" if info.model else None),
        ("b", None if info.b is None else f"{info.b:.4f}"),
        ("sampler", info.sampler),
        ("network evaluations per pair", evaluations),
        ("seed", info.seed),
        ("pairs per shard", info.samples_per_shard),
        ("fingerprint", info.fingerprint),
        (
            "target",
            f"{target.get('spec')} by {target.get('route')}: {'met' if target.get('met') else 'NOT MET'}"
            if target
            else None,
        ),
    ]
    body = f"""
# DAKTer shard set: {count} generated pairs, {", ".join(classes)} at {info.resolution} px

{count} (SAR image, soft label) pairs in {len(shards)} WebDataset shards ({HOMEPAGE}), {origin}.
Status: {info.status}. `dataset.json` holds what this card summarises; each shard's done marker
(`shard-NNNNNN.json`) holds its pair count, tar size and sha256.

Per pair (key `SSSSSS-IIIIII`): `KEY.image.png` (8-bit SAR image), `KEY.soft.png` ({len(classes)} probability maps stacked
vertically, levels summing to 255 at every pixel), `KEY.json` (seed, class fractions, confidence).

## How it was made
{_table(made)}

## Class pixel shares
{_share_table(classes, {"generated": gen.get("class_fractions"), "training": train.get("class_fractions")})}

Mean max-probability of the soft labels: {gen.get("mean_confidence", float("nan")):.3f}; ENL of the images: {"–" if sar.get("enl") is None else f"{sar['enl']:.2f}"}.

## Divergence warnings
{warnings}

## Read it

    from dakter_scale.data import webdataset_pipeline
    for sample in webdataset_pipeline("THIS_URL", labels="soft"):
        sample["image"], sample["soft"]          # (1, H, W) in [-1, 1]; (K, H, W) probabilities

Only the shards listed above (those with a done marker) are finished. The toolkit's reader (`ShardSet.read`,
and `dakter_scale.data.interop.checked_pipeline` over it) checks each tar against its marker as it reads it;
the stock readers' pipelines check the sizes once, when built (README, "Reading a set in your own code").

## Limits
- Generated pairs, not observations: labels are the model's soft estimates and can disagree with the image.
- {_license_limit(data_license, data_spec)}
- {"The model behind them was trained on simulated scenes (`synthetic:`), not on real SAR acquisitions." if _simulated(data_spec) else "They inherit the limits of the model that drew them (its card)."}
"""
    return render(metadata, body)


def write_dataset_card(url: str, command: str | None = None) -> str:
    """README.md at a shard set's root, from its dataset.json and finished shards; returns its URL.
    Written atomically beside the shards (storage.write_bytes), after dataset.json."""
    shards = ShardSet(url)
    info = shards.info()
    if info is None:
        raise FileNotFoundError(f"{storage.redact_url(url)}: no dataset.json to describe")
    finished, _ = shards.read_markers()
    model_info = _read_json(Path(info.model) / "dakter.json") if info.model and "://" not in info.model else None
    model_info = model_info or {}
    text = dataset_card(
        info,
        sorted(finished),
        command_line() if command is None else command,
        model_info.get("data_spec"),
        model_info.get("data_license"),
    )
    storage.write_bytes(shards.fs, shards.path(CARD_FILE), text.encode())
    return storage.full_url(shards.fs, shards.path(CARD_FILE))
