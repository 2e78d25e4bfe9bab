"""The joint diffusion model and its folder.

A model folder is a diffusers-format folder plus the DAKTer metadata:
  DIR/unet/config.json, DIR/unet/diffusion_pytorch_model.safetensors   UNet2DModel (EMA weights)
  DIR/scheduler/scheduler_config.json                                  the training noise schedule
  DIR/dakter.json    b, classes, resolution, prediction type, normalisation, radiometry, data spec,
                     training-set statistics (class fractions, image moments), sampling defaults
  DIR/config.yaml    the resolved config that trained it
A distilled folder (jobs/distill.py) is the same plus dakter.json "distilled": the teacher (path and
model_hash), the method, the evaluations per pair and the timesteps of its own sampler, which
``sampling_for`` makes the only one it runs with: a progressive folder at its own steps only, a
consistency folder at any step count whose grid lies on the grid it was trained on ("trained_timesteps").
Weights are safetensors only: loading a model folder never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dakter_scale import __version__
from dakter_scale.config import SamplingConfig, UNetConfig
from dakter_scale.core.distill import distill_timesteps, steps_on_grid
from dakter_scale.errors import UserError

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel

FORMAT = "dakter-model/1"
INFO_FILE = "dakter.json"
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


DISTILLED = "distilled"  # dakter.json's record of a distilled folder, and the sampler it fixes
# the record's "method" (config.DISTILL_METHODS); records written without one are progressive
PROGRESSIVE, CONSISTENCY = "progressive", "consistency"


class ModelFolderError(UserError, ValueError):
    """A model folder that cannot be used; the message names the folder and the missing part."""


class DistilledSamplerError(ModelFolderError):
    """A distilled folder asked for a sampler or step count it was not made for, or the distilled sampler
    asked of a folder that is not distilled; the message names the flag."""


def build_unet(cfg: UNetConfig, resolution: int, channels: int) -> "UNet2DModel":
    """A UNet2DModel over `channels` = 1 + K input and output channels."""
    from diffusers import UNet2DModel  # imported here: drivers that only check folders start seconds faster

    levels = len(cfg.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if cfg.attention:
        down[-1] = "AttnDownBlock2D"
        up[0] = "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=resolution,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
    )


def build_scheduler(
    num_train_timesteps: int, beta_schedule: str, prediction_type: str, rescale_zero_terminal_snr: bool = False
) -> "DDPMScheduler":
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=False,
        rescale_betas_zero_snr=rescale_zero_terminal_snr,
    )


@dataclass
class JointDiffusion:
    """A loaded model folder: the UNet, its training scheduler and the DAKTer metadata."""

    unet: "UNet2DModel"
    scheduler: "DDPMScheduler"
    info: dict[str, Any]
    path: Path | None = None

    @property
    def b(self) -> float:
        return float(self.info["b"])

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.info["classes"])

    @property
    def resolution(self) -> int:
        return int(self.info["resolution"])

    @property
    def prediction_type(self) -> str:
        """What the network predicts for the image channel."""
        return str(self.info["prediction_type"])

    @property
    def label_prediction_type(self) -> str:
        """What it predicts for the label channels (older folders: the same as the image)."""
        return str(self.info.get("label_prediction_type", self.info["prediction_type"]))


def model_info(
    *,
    b: float,
    b_mode: str,
    classes,
    resolution: int,
    prediction_type: str,
    label_prediction_type: str,
    data_spec: str,
    radiometry: str,
    train_stats: dict,
    sampling: dict,
    steps_trained: int,
    data_license: str = "",
) -> dict:
    return {
        "format": FORMAT,
        "b": float(b),
        "b_mode": str(b_mode),
        "classes": list(classes),
        "resolution": int(resolution),
        "channels": 1 + len(classes),
        "prediction_type": prediction_type,
        "label_prediction_type": label_prediction_type,
        "normalisation": {"image": "x = uint8 / 127.5 - 1", "label": "y = b * (2 * onehot - 1)"},
        "radiometry": radiometry,
        "data_spec": data_spec,
        **({"data_license": data_license} if data_license else {}),  # only when stated: older folders stay as they were
        "train_stats": train_stats,
        "sampling": sampling,
        "steps_trained": int(steps_trained),
        "code_version": __version__,
    }


def save_model_folder(directory: str | Path, unet: "UNet2DModel", scheduler: "DDPMScheduler", info: dict) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(d / "unet", safe_serialization=True)
    scheduler.save_pretrained(d / "scheduler")
    (d / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return d


def check_model_folder(directory: str | Path) -> Path:
    """Raise ModelFolderError naming what is missing; cheap (no weights are read)."""
    d = Path(directory)
    if not d.is_dir():
        raise ModelFolderError(f"model folder {d} does not exist")
    for part in (INFO_FILE, WEIGHTS, "unet/config.json", "scheduler/scheduler_config.json"):
        if not (d / part).is_file():
            raise ModelFolderError(f"model folder {d} has no {part}; train one with jobs/train_diffusion.py")
    try:
        info = json.loads((d / INFO_FILE).read_text())
    except json.JSONDecodeError as e:
        raise ModelFolderError(f"{d / INFO_FILE} is not valid JSON: {e}") from None
    for key in ("b", "classes", "resolution", "prediction_type"):
        if key not in info:
            raise ModelFolderError(f"{d / INFO_FILE} lacks the field {key!r}")
    return d


def _load_unet(unet_class: Any, folder: Path) -> Any:
    """The UNet of a model folder, built from its config and filled from its safetensors file.

    Not ``from_pretrained``: that builds the network inside accelerate's ``init_empty_weights``,
    which swaps ``nn.Module.register_parameter`` process-wide and restores whatever it found on
    entry; two threads loading at once can leave it swapped for good, and every module built later
    in the process (a student, another model) then lives on the meta device. Seen in this project's
    tests when two synthesis runs loaded the model in threads.
    """
    from safetensors.torch import load_file

    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise ModelFolderError(f"{weights} is missing")
    unet = unet_class.from_config(unet_class.load_config(folder))
    try:
        unet.load_state_dict(load_file(weights))
    except RuntimeError as e:
        raise ModelFolderError(
            f"{weights} does not fit {folder / 'config.json'}: {str(e).splitlines()[0][:200]}"
        ) from None
    return unet


def load_model_folder(directory: str | Path, device: str | torch.device = "cpu") -> JointDiffusion:
    from diffusers import DDPMScheduler, UNet2DModel

    d = check_model_folder(directory)
    info = json.loads((d / INFO_FILE).read_text())
    unet = _load_unet(UNet2DModel, d / "unet").to(device).eval()
    scheduler = DDPMScheduler.from_pretrained(d / "scheduler")
    if unet.config.in_channels != 1 + len(info["classes"]):
        raise ModelFolderError(
            f"{d}: the UNet has {unet.config.in_channels} channels but dakter.json lists {len(info['classes'])} classes"
        )
    return JointDiffusion(unet=unet, scheduler=scheduler, info=info, path=d)


def num_train_timesteps(directory: str | Path) -> int:
    """The training schedule's length, from the folder's scheduler config (no weights read)."""
    d = check_model_folder(directory)
    return int(json.loads((d / "scheduler/scheduler_config.json").read_text())["num_train_timesteps"])


def model_hash(directory: str | Path) -> str:
    """sha256 over the weights and dakter.json: what identifies the model a dataset came from."""
    d = check_model_folder(directory)
    h = hashlib.sha256()
    for part in (WEIGHTS, INFO_FILE, "scheduler/scheduler_config.json"):
        with open(d / part, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def distilled_timesteps(info: dict) -> list[int] | None:
    """The timesteps a distilled folder's sampler steps from (dakter.json "distilled"), None for a model
    that is not distilled."""
    record = info.get(DISTILLED)
    return None if record is None else [int(t) for t in record["timesteps"]]


def distilled_method(info: dict) -> str | None:
    """A distilled folder's method (progressive, consistency), None for a model that is not distilled."""
    record = info.get(DISTILLED)
    return None if record is None else str(record.get("method", PROGRESSIVE))


def distilled_grid(info: dict, num_train_timesteps: int, steps: int) -> list[int] | None:
    """The timesteps a distilled folder samples `steps` steps on, None if it cannot: a progressive folder's
    own (`steps` must be their count); a consistency folder's grid of `steps` steps (core.distill's) where
    it lies on the grid the folder was trained on. None too for a model that is not distilled."""
    own = distilled_timesteps(info)
    if own is None:
        return None
    if distilled_method(info) != CONSISTENCY:
        return own if steps == len(own) else None
    trained = [int(t) for t in info[DISTILLED]["trained_timesteps"]]
    return (
        distill_timesteps(num_train_timesteps, steps) if steps in steps_on_grid(num_train_timesteps, trained) else None
    )


def sampling_for(directory: str | Path, sampling: SamplingConfig) -> SamplingConfig:
    """The sampling settings a model folder runs with. A distilled folder fixes its sampler and step
    count: the defaults become its own (sampler "distilled", its evaluations per pair), the same values
    pass, anything else is refused in one line naming the flag (a consistency folder also passes every step
    count distilled_grid allows). The distilled sampler is refused for a folder that is not distilled.
    Other folders' settings pass unchanged."""
    import dataclasses

    d = check_model_folder(directory)
    info = json.loads((d / INFO_FILE).read_text())
    timesteps = distilled_timesteps(info)
    if timesteps is None:
        if sampling.sampler == DISTILLED:
            raise DistilledSamplerError(
                f"--sampler {DISTILLED}: {d} is not a distilled model folder (make one with jobs/distill.py)"
            )
        return sampling
    steps, default = len(timesteps), SamplingConfig()
    if (sampling.sampler, sampling.steps) == (default.sampler, default.steps):
        sampling = dataclasses.replace(sampling, sampler=DISTILLED, steps=steps)
    if sampling.sampler != DISTILLED:
        raise DistilledSamplerError(
            f"--sampler {sampling.sampler}: {d} is distilled for its own sampler ({DISTILLED}, {steps} steps); drop --sampler (sampling.sampler) or use the teacher's folder"
        )
    if distilled_method(info) == CONSISTENCY:
        num_train = num_train_timesteps(d)
        if distilled_grid(info, num_train, sampling.steps) is None:
            trained = info[DISTILLED]["trained_timesteps"]
            raise DistilledSamplerError(
                f"--steps {sampling.steps}: {d} is consistency-distilled on a grid of {len(trained)} levels and samples at "
                f"{', '.join(map(str, steps_on_grid(num_train, trained)))} steps; drop --steps (sampling.steps) for its {steps}"
            )
    elif sampling.steps != steps:
        raise DistilledSamplerError(
            f"--steps {sampling.steps}: {d} is distilled for {steps} steps; drop --steps (sampling.steps) or distil for {sampling.steps} with jobs/distill.py"
        )
    if sampling.eta != default.eta:
        raise DistilledSamplerError(f"sampling.eta {sampling.eta}: {d}'s distilled sampler is deterministic (eta 0)")
    sampling.validate()
    return sampling
