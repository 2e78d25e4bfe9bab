"""Real (labelled) datasets behind one string spec, and the patches the models train on.

Specs:
  ``synthetic:N[?size=S&test=M&seed=X]``  the built-in simulated SAR scenes (N train, M test)
  ``osd:PATH``   the Oil Spill Detection dataset layout (Krestenitis et al. 2019), 5 classes
  ``sos:PATH[?sat=palsar|sentinel]``  the SOS layout (Zhu et al.), oil vs background

PATH may be any fsspec URL (a local folder, ``s3://bucket/osd``, ...). A source lists its files
once, pairs every image with its label, and raises ``DataError`` naming the file for an image
without a label, a label without an image, an unreadable image, a colour or class id that is no
class, or an empty split. Images are read as 8-bit grayscale and normalised to [-1, 1].
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import math
import posixpath
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator, Sequence
from urllib.parse import parse_qsl

import fsspec
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dakter_scale.core.joint import ImageStats
from dakter_scale.data import synthetic_sar
from dakter_scale.data.osd import CLASSES, DB_MAX, DB_MIN, OSD_COLOURS
from dakter_scale.data.sar_stats import SarCounts, enl_window
from dakter_scale.data.storage import ForkSafeFS
from dakter_scale.errors import UserError

SOS_CLASSES = ("background", "oil")
SPLITS = ("train", "test")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")  # IMAGE_FORMATS' files; a TIFF in a split is refused when listed


class DataError(UserError, ValueError):
    """Unusable input data; the message names the file or spec."""


# -- reading files ----------------------------------------------------------------------------


# Pillow decodes dozens of formats, each its own attack surface: these two are what datasets and plain
# scenes are. A file is read whole, so its size is capped, and its pixel count before it is decoded.
IMAGE_FORMATS = ("PNG", "JPEG")
IMAGE_MAX_BYTES = 128 << 20
IMAGE_MAX_PIXELS = 1 << 27  # 134 megapixels: 11,585 pixels a side


def _read_image_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    size = fs.size(path)
    if size is not None and size > IMAGE_MAX_BYTES:
        raise DataError(f"{path}: {size} bytes, more than the {IMAGE_MAX_BYTES} allowed for an image")
    with fs.open(path, "rb") as f:
        data = f.read(IMAGE_MAX_BYTES + 1)
    if len(data) > IMAGE_MAX_BYTES:
        raise DataError(f"{path}: more than the {IMAGE_MAX_BYTES} bytes allowed for an image")
    return data


def _open_image(data: bytes, path: str) -> Image.Image:
    """A PNG or JPEG whose header is read (no pixel decoded yet), within IMAGE_MAX_PIXELS."""
    try:
        im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise DataError(f"{path}: unreadable image: not a PNG or JPEG (only those formats are decoded)") from None
    if im.width * im.height > IMAGE_MAX_PIXELS:
        im.close()
        raise DataError(
            f"{path}: {im.width} x {im.height} pixels, more than the {IMAGE_MAX_PIXELS} allowed for an image"
        )
    return im


@contextlib.contextmanager
def _reading(path: str, what: str = "image") -> Iterator[None]:
    """Pillow's errors while reading `path` as one-line DataErrors naming it."""
    try:
        yield
    except DataError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's size limit: refused before any pixel is decoded
        raise DataError(f"{path}: {what} too large to read ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable {what} ({e})") from None


def read_gray(fs: fsspec.AbstractFileSystem, path: str, indices: bool = False) -> np.ndarray:
    """An image file as uint8 (H, W) grayscale (a 3-channel grayscale JPEG keeps its first channel).
    indices: a palette ("P") image gives its palette indices, not their colours' grey (a class-id mask
    saved with a palette, as OSD's labels_1D may be: the ids are the indices)."""
    with _reading(path), _open_image(_read_image_bytes(fs, path), path) as im:
        im.load()
        if indices and im.mode == "P":
            arr = np.asarray(im)
        elif im.mode in ("L", "P"):
            arr = np.asarray(im.convert("L"))
        elif im.mode in ("I;16", "I;16B", "I", "F"):
            raise DataError(
                f"{path}: {im.mode} images are not 8-bit; convert them to 8-bit grayscale first (radiometry must be explicit)"
            )
        else:
            arr = np.asarray(im.convert("RGB"))[..., 0]
    return np.ascontiguousarray(arr, dtype=np.uint8)


def read_rgb(fs: fsspec.AbstractFileSystem, path: str) -> np.ndarray:
    with _reading(path, "label image"), _open_image(_read_image_bytes(fs, path), path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def colour_to_class(rgb: np.ndarray, colours: Sequence[tuple[int, int, int]], path: str) -> np.ndarray:
    """Map an RGB colour mask to class ids; any other colour is an error naming the file and colour."""
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(colours)}
    mask = np.full(code.shape, 255, dtype=np.uint8)
    for value, cls in table.items():
        mask[code == value] = cls
    bad = mask == 255
    if bad.any():
        y, x = np.argwhere(bad)[0]
        colour = tuple(int(c) for c in rgb[y, x])
        raise DataError(
            f"{path}: colour {colour} at pixel (x={x}, y={y}) is no OSD class; expected one of {list(colours)}"
        )
    return mask


# -- sources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One labelled image: where its files are (or its seed, for simulated scenes)."""

    name: str
    image: str = ""
    label: str = ""
    seed: int = -1


class Source(abc.ABC):
    """A labelled dataset: per split, an ordered list of items that load as (image, mask) uint8 arrays."""

    spec: str
    classes: tuple[str, ...]
    radiometry: str = "8-bit grayscale, dB-scaled as delivered"
    pixel_spacing_m: float | None = None  # ground metres per image pixel, where the dataset states it

    def convention(self) -> dict:
        """The radiometric convention a student trained on this source records (scene/radiometry.py):
        8-bit dB-scaled codes whose window the files do not state."""
        return {"kind": "db8"}

    @abc.abstractmethod
    def items(self, split: str) -> list[Item]:
        """The split's items in a stable order (may be empty)."""

    @abc.abstractmethod
    def load(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 (H, W), mask uint8 (H, W) of class ids)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_items(self, split: str) -> list[Item]:
        if split not in SPLITS:
            raise DataError(f"{self.spec}: unknown split {split!r}; expected one of {SPLITS}")
        items = self.items(split)
        if not items:
            raise DataError(f"{self.spec}: split {split!r} is empty")
        return items


class SyntheticSource(Source):
    radiometry = "simulated Sentinel-1 VV sigma0, dB window [-35, 5] -> 8-bit"

    def convention(self) -> dict:
        # The simulator follows the OSD window (osd.DB_MIN, DB_MAX). Its objects are sized in fractions of
        # the scene, not in metres, so the source states no pixel spacing.
        return {"kind": "sigma0_db8", "db_min": DB_MIN, "db_max": DB_MAX}

    def __init__(self, n_train: int, n_test: int, size: int, seed: int, spec: str):
        self.n = {"train": n_train, "test": n_test}
        self.size = size
        self.seed = seed
        self.spec = spec
        self.classes = CLASSES

    def items(self, split: str) -> list[Item]:
        return [
            Item(name=f"{split}-{i:05d}", seed=synthetic_sar.scene_seed(self.seed, split, i))
            for i in range(self.n[split])
        ]

    def load(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        return _simulated(item.seed, self.size)


@lru_cache(maxsize=8192)
def _simulated(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A simulated scene, kept in memory: trainers and evaluations read the same scenes many times,
    and on a GPU the simulator (about 3 ms per 64 px scene) would otherwise feed it slower than it
    trains. Read-only, so that no caller can change the cached copy."""
    image, mask = synthetic_sar.simulate_scene(seed, size, size)
    image.flags.writeable = False
    mask.flags.writeable = False
    return image, mask


def _list_files(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    if not fs.isdir(folder):
        return []
    return sorted(p for p in fs.ls(folder, detail=False) if not fs.isdir(p))


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def _by_key(paths: list[str], key: Callable[[str], str | None], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in paths:
        if (k := key(p)) is None:
            continue
        if k in out:
            raise DataError(f"{out[k]} and {p}: two {what} named {k!r}; keep one")
        out[k] = p
    return out


def _pair(
    images: list[str],
    labels: list[str],
    where: str,
    image_key: Callable[[str], str | None],
    label_key: Callable[[str], str | None],
) -> list[Item]:
    """Pair images and labels by key; a file on either side without its partner, or two files of one
    key (a.jpg and a.png: one was dropped unseen), is an error."""
    img_by = _by_key(images, image_key, "images")
    lab_by = _by_key(labels, label_key, "labels")
    for k in sorted(img_by):
        if k not in lab_by:
            raise DataError(f"{img_by[k]}: image without a label (looked for its label in {where})")
    for k in sorted(lab_by):
        if k not in img_by:
            raise DataError(f"{lab_by[k]}: label without an image (in {where})")

    def order(k: str):
        return (0, int(k), k) if k.isdigit() else (1, 0, k)

    return [Item(name=k, image=img_by[k], label=lab_by[k]) for k in sorted(img_by, key=order)]


class _Stored(Source):
    """A source whose files are at an fsspec URL: ``fs`` is opened again in a forked DataLoader worker
    (storage.ForkSafeFS), where s3fs and gcsfs refuse the parent's instance."""

    _opened: ForkSafeFS

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._opened.fs


def _refuse_tiffs(files: list[str]) -> None:
    """Refuse a split holding TIFF images when listed: listed, they failed mid-training when first drawn
    (only PNG and JPEG are decoded)."""
    tiffs = [p for p in files if p.lower().endswith((".tif", ".tiff"))]
    if tiffs:
        raise DataError(f"{tiffs[0]}: TIFF images are not read here (PNG or JPEG only): convert them to 8-bit PNG")


class OSDSource(_Stored):
    """``{train,test}/images/*.jpg`` with ``labels_1D/*.png`` (class ids) or ``labels/*.png`` (RGB colours)."""

    def __init__(self, root: str, spec: str):
        self._opened = ForkSafeFS(root)
        self.root = self._opened.root
        self.spec = spec
        self.classes = CLASSES
        if not self.fs.isdir(self.root):
            raise DataError(f"{spec}: {root} is not a folder")
        self._cache: dict[str, list[Item]] = {}

    def items(self, split: str) -> list[Item]:
        if split in self._cache:
            return self._cache[split]
        base = posixpath.join(self.root, split)
        files = _list_files(self.fs, posixpath.join(base, "images"))
        _refuse_tiffs(files)
        images = [p for p in files if p.lower().endswith(IMAGE_EXTS)]
        # Class-id masks (labels_1D) when there are any, else the RGB colour masks (labels).
        label_dir = posixpath.join(base, "labels_1D")
        labels = [p for p in _list_files(self.fs, label_dir) if p.lower().endswith(".png")]
        if not labels:
            label_dir = posixpath.join(base, "labels")
            labels = [p for p in _list_files(self.fs, label_dir) if p.lower().endswith(".png")]
        if not images and not labels:
            raise DataError(f"{self.spec}: split {split!r} is empty (no files in {base}/images)")
        items = _pair(images, labels, label_dir, _stem, _stem)
        self._cache[split] = items
        return items

    def load(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        image = read_gray(self.fs, item.image)
        if posixpath.basename(posixpath.dirname(item.label)) == "labels_1D":
            mask = read_gray(self.fs, item.label, indices=True)
            if mask.max(initial=0) >= len(self.classes):
                raise DataError(
                    f"{item.label}: class id {int(mask.max())} is no OSD class (expected 0..{len(self.classes) - 1})"
                )
        else:
            mask = colour_to_class(read_rgb(self.fs, item.label), OSD_COLOURS, item.label)
        if mask.shape != image.shape:
            raise DataError(
                f"{item.label}: label size {mask.shape[::-1]} differs from image {item.image} size {image.shape[::-1]}"
            )
        return image, mask


_SOS_IMAGE = re.compile(r"^(.*)_sat\.(jpg|jpeg|png|tif|tiff)$", re.IGNORECASE)
_SOS_MASK = re.compile(r"^(.*)_mask\.png$", re.IGNORECASE)


class SOSSource(_Stored):
    """``{train,test}/{palsar,sentinel}/N_sat.jpg`` with ``N_mask.png`` (0 background, 255 or 1 oil)."""

    SATELLITES = ("palsar", "sentinel")

    def __init__(self, root: str, spec: str, satellites: Sequence[str] = SATELLITES):
        self._opened = ForkSafeFS(root)
        self.root = self._opened.root
        self.spec = spec
        self.classes = SOS_CLASSES
        self.satellites = tuple(satellites)
        for s in self.satellites:
            if s not in self.SATELLITES:
                raise DataError(f"{spec}: unknown SOS satellite {s!r}; expected palsar or sentinel")
        if not self.fs.isdir(self.root):
            raise DataError(f"{spec}: {root} is not a folder")

    def items(self, split: str) -> list[Item]:
        out: list[Item] = []
        for sat in self.satellites:
            folder = posixpath.join(self.root, split, sat)
            files = _list_files(self.fs, folder)
            images = [p for p in files if _SOS_IMAGE.match(posixpath.basename(p))]
            _refuse_tiffs(images)
            masks = [p for p in files if _SOS_MASK.match(posixpath.basename(p))]
            for item in _pair(
                images,
                masks,
                folder,
                lambda p: _SOS_IMAGE.match(posixpath.basename(p)).group(1),
                lambda p: _SOS_MASK.match(posixpath.basename(p)).group(1),
            ):
                out.append(Item(name=f"{sat}/{item.name}", image=item.image, label=item.label))
        return out

    def load(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        image = read_gray(self.fs, item.image)
        raw = read_gray(self.fs, item.label, indices=True)
        values = np.unique(raw)
        if not set(values.tolist()) <= {0, 1, 255}:
            bad = [int(v) for v in values if v not in (0, 1, 255)][:5]
            raise DataError(
                f"{item.label}: mask values {bad} are no SOS class (expected 0 = background, 255 or 1 = oil)"
            )
        mask = (raw > 0).astype(np.uint8)
        if mask.shape != image.shape:
            raise DataError(
                f"{item.label}: mask size {mask.shape[::-1]} differs from image {item.image} size {image.shape[::-1]}"
            )
        return image, mask


def _query(spec: str, rest: str, allowed: dict[str, type]) -> tuple[str, dict]:
    path, _, query = rest.partition("?")
    params: dict = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            raise DataError(f"{spec}: unknown option {key!r}; known: {', '.join(allowed)}")
        try:
            params[key] = allowed[key](value)
        except ValueError:
            raise DataError(f"{spec}: option {key}={value!r} is not a valid {allowed[key].__name__}") from None
    return path, params


def _count(text: str, spec: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{spec}: {text!r} is not a count") from None
    if not (value >= 1 and value.is_integer()):
        raise DataError(f"{spec}: the count must be a positive integer, got {text!r}")
    return int(value)


@lru_cache(maxsize=16)
def open_source(spec: str) -> Source:
    """Parse a data spec into a Source (cached: listing a bucket once per process is enough)."""
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise DataError(f"data spec {spec!r} has no kind; use synthetic:N, osd:PATH or sos:PATH")
    if kind == "synthetic":
        count, params = _query(spec, rest, {"size": int, "test": int, "seed": int})
        n = _count(count, spec)
        size = params.get("size", 128)
        if size < 16:
            raise DataError(f"{spec}: size must be >= 16, got {size}")
        n_test = params.get("test", max(8, math.ceil(n / 4)))
        return SyntheticSource(n, n_test, size, params.get("seed", 0), spec)
    if kind == "osd":
        path, _ = _query(spec, rest, {})
        return OSDSource(path, spec)
    if kind == "sos":
        path, params = _query(spec, rest, {"sat": str})
        sats = [params["sat"]] if "sat" in params else SOSSource.SATELLITES
        return SOSSource(path, spec, sats)
    raise DataError(f"data spec {spec!r}: unknown kind {kind!r}; use synthetic:N, osd:PATH or sos:PATH")


# -- normalisation and patches ------------------------------------------------------------------


_NORMALISE = (np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)).astype(np.float32)


def normalise(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [-1, 1] (x = u / 127.5 - 1; a table lookup for numpy input)."""
    if isinstance(image, np.ndarray):
        return torch.from_numpy(_NORMALISE[image])
    return image.to(torch.float32) / 127.5 - 1.0


def denormalise(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 (rounded, clamped)."""
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def random_patch(
    image: np.ndarray,
    mask: np.ndarray,
    resolution: int,
    crop: int,
    scale: tuple[float, float],
    flip: bool,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training patch: random crop (side crop * s, s ~ U(scale)), resized to resolution, flips.

    crop = 0 takes the whole image. Returns x (1, R, R) float in [-1, 1] and mask (R, R) int64.
    The crop is reflect-padded when the image is smaller than the crop.
    """
    x = normalise(image)[None, None]
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    h, w = image.shape
    if crop > 0:
        s = scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=gen))
        side = max(8, int(round(crop * s)))
        if h < side or w < side:
            ph, pw = max(0, side - h), max(0, side - w)
            pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = torch.nn.functional.pad(x, pad, mode=mode)
            m = torch.nn.functional.pad(m, pad, mode=mode)
            h, w = x.shape[-2:]
        top = int(torch.randint(0, h - side + 1, (), generator=gen))
        left = int(torch.randint(0, w - side + 1, (), generator=gen))
        x = x[..., top : top + side, left : left + side]
        m = m[..., top : top + side, left : left + side]
    if x.shape[-2:] != (resolution, resolution):
        x = torch.nn.functional.interpolate(
            x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
        )
        m = torch.nn.functional.interpolate(m, size=(resolution, resolution), mode="nearest")
    if flip:
        if bool(torch.rand((), generator=gen) < 0.5):
            x, m = x.flip(-1), m.flip(-1)
        if bool(torch.rand((), generator=gen) < 0.5):
            x, m = x.flip(-2), m.flip(-2)
    return x[0].contiguous(), m[0, 0].to(torch.int64).contiguous()


class PatchDataset(torch.utils.data.Dataset):
    """Map-style dataset of random training patches; patch i of epoch e is a function of (seed, e, i).

    Images are decoded on each access (sources are cheap to read or simulate); the random crop uses
    a generator seeded from (seed, epoch, index), so a run is reproducible whatever the workers.
    """

    def __init__(
        self,
        source: Source,
        split: str,
        resolution: int,
        crop: int = 0,
        scale=(1.0, 1.0),
        flip: bool = True,
        seed: int = 0,
    ):
        self.source = source
        self.items = source.split_items(split)
        self.resolution, self.crop, self.scale, self.flip, self.seed = resolution, crop, tuple(scale), flip, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """key: (index, epoch), or an index alone for epoch 0."""
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        image, mask = self.source.load(self.items[i])
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0]))
        return random_patch(image, mask, self.resolution, self.crop, self.scale, self.flip, gen)


def whole_pairs(
    source: Source, resolution: int, split: str = "train", max_images: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """The first max_images pairs of a split as whole images resized to resolution, no flips:
    (images, masks), each (N, R, R) uint8. The donors of pasted instances (the pasted route of
    targeted synthesis, copy-paste augmentation of students)."""
    items = source.split_items(split)[:max_images]
    gen = torch.Generator().manual_seed(0)  # unused without crop and flips
    pairs = [random_patch(*source.load(item), resolution, 0, (1.0, 1.0), False, gen) for item in items]
    return np.stack([denormalise(x[0]).numpy() for x, _ in pairs]), np.stack(
        [m.numpy().astype(np.uint8) for _, m in pairs]
    )


def patch_dataset(source: Source, cfg, split: str = "train", seed: int = 0) -> PatchDataset:
    """The PatchDataset a DataConfig describes."""
    return PatchDataset(source, split, cfg.resolution, cfg.crop, (cfg.scale_min, cfg.scale_max), cfg.flip, seed)


# -- statistics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitStats:
    images: int
    size: tuple[int, int] | None  # (W, H), None when sizes are mixed
    class_fractions: tuple[float, ...]
    image_stats: ImageStats
    read: int  # how many images the statistics cover


def split_stats(source: Source, split: str, max_images: int | None = None, progress: bool = False) -> SplitStats:
    """Counts, size, class pixel fractions and normalised-image moments of one split.

    With max_images, an evenly spaced subset is read for the moments and fractions (the count and
    the size check still cover the listing only); by default every image is read.
    """
    items = source.split_items(split)
    chosen = _evenly_spaced(items, max_images)
    k = source.num_classes
    counts = np.zeros(k, dtype=np.int64)
    stats = ImageStats(0.0, 0.0, 0)
    sizes = set()
    it = chosen
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(chosen, desc=f"reading {split}", unit="img", leave=False)
    for item in it:
        image, mask = source.load(item)
        sizes.add((image.shape[1], image.shape[0]))
        counts += np.bincount(mask.reshape(-1), minlength=k)[:k]
        stats = stats.merge(ImageStats.of(normalise(image)))
    total = counts.sum()
    fractions = tuple(float(c / total) for c in counts) if total else tuple(0.0 for _ in range(k))
    return SplitStats(
        images=len(items),
        size=next(iter(sizes)) if len(sizes) == 1 else None,
        class_fractions=fractions,
        image_stats=stats,
        read=len(chosen),
    )


def split_digests(source: Source, split: str) -> list[str]:
    """sha256 of each item of a split, over its image and mask as loaded (shape, then bytes): the same
    scene has the same digest under any spec, so two splits that share a scene can be told."""
    out = []
    for item in source.split_items(split):
        image, mask = source.load(item)
        h = hashlib.sha256(np.asarray(image.shape + mask.shape, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(image).tobytes())
        h.update(np.ascontiguousarray(mask).tobytes())
        out.append(h.hexdigest())
    return out


def split_fingerprint(digests: list[str]) -> str:
    """One sha256 over a split's item digests, in order: what a study records of the split it scored."""
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _evenly_spaced(items: list, max_images: int | None) -> list:
    """All items, or an evenly spaced subset of max_images of them."""
    if max_images is None or len(items) <= max_images:
        return items
    idx = np.linspace(0, len(items) - 1, max_images).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


def sar_counts(source: Source, cfg, split: str = "train", max_images: int | None = None) -> SarCounts:
    """SAR statistics (data/sar_stats.py) of one split's training patches as the model sees them (cfg a
    DataConfig: crop and resize to cfg.resolution, no flips, which change neither), over an evenly
    spaced subset of max_images images; the crop of image i is seeded by i."""
    counts = SarCounts(enl_window(cfg.resolution))
    for i, item in enumerate(_evenly_spaced(source.split_items(split), max_images)):
        image, mask = source.load(item)
        x, m = random_patch(
            image,
            mask,
            cfg.resolution,
            cfg.crop,
            (cfg.scale_min, cfg.scale_max),
            False,
            torch.Generator().manual_seed(i),
        )
        counts.add(denormalise(x[0]).numpy()[None], m.numpy()[None])
    return counts
