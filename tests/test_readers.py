"""OSD and SOS readers on folders the tests write; every bad input gives an error naming the file."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dakter_scale.data import osd, real
from dakter_scale.data.real import DataError, open_source, split_stats

ROOT = Path(__file__).resolve().parents[1]
OSD_COLOURS = osd.OSD_COLOURS


def write_osd(root: Path, masks: dict[str, list[np.ndarray]], colour: bool = True, index: bool = True, size=(24, 16)):
    """OSD layout: images/*.jpg (3-channel gray), labels/*.png (RGB), labels_1D/*.png (ids)."""
    rng = np.random.default_rng(0)
    for split, ms in masks.items():
        for sub in ("images", "labels", "labels_1D"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(ms):
            gray = rng.integers(0, 255, m.shape, dtype=np.uint8)
            Image.fromarray(np.stack([gray] * 3, -1)).save(root / split / "images" / f"{i:04d}.jpg", quality=95)
            if colour:
                rgb = np.array(OSD_COLOURS, dtype=np.uint8)[m]
                Image.fromarray(rgb).save(root / split / "labels" / f"{i:04d}.png")
            if index:
                Image.fromarray(m.astype(np.uint8)).save(root / split / "labels_1D" / f"{i:04d}.png")


def make_masks(n, h=16, w=24, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 5, (h, w)).astype(np.uint8) for _ in range(n)]


def write_sos(root: Path, counts: dict[tuple[str, str], int], h=20, w=20):
    rng = np.random.default_rng(1)
    out = {}
    for (split, sat), n in counts.items():
        d = root / split / sat
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            m = (rng.random((h, w)) < 0.3).astype(np.uint8)
            Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(d / f"{i}_sat.jpg")
            Image.fromarray(m * 255).save(d / f"{i}_mask.png")
            out.setdefault(split, []).append(m)
    return out


def fractions(masks, k):
    counts = np.bincount(np.concatenate([m.reshape(-1) for m in masks]), minlength=k)
    return (counts / counts.sum()).tolist()


# -- OSD ------------------------------------------------------------------------------------------


def test_a_tiff_image_in_a_split_is_refused_when_listed_not_when_first_drawn(tmp_path):
    from dakter_scale.data.real import DataError

    write_osd(tmp_path, {"train": make_masks(2), "test": make_masks(1)}, colour=False)
    Image.fromarray(np.zeros((16, 24), dtype=np.uint8)).save(tmp_path / "train" / "images" / "0009.tif")
    with pytest.raises(DataError, match=r"0009\.tif: TIFF images are not read here \(PNG or JPEG only\)"):
        open_source(f"osd:{tmp_path}").split_items("train")


def test_a_class_id_mask_saved_with_a_palette_is_read_by_its_indices(tmp_path):
    """A labels_1D mask saved as a palette image: its pixels are the ids. Read through the palette's grey,
    OSD colours gave "class id 179 is no OSD class", and a dark palette moved oil to look-alike."""
    masks = {"train": make_masks(2, seed=3), "test": make_masks(1, seed=4)}
    write_osd(tmp_path, masks, colour=False, index=True)
    for split, ms in masks.items():
        for i, m in enumerate(ms):
            im = Image.fromarray(m.astype(np.uint8), mode="L").convert("P")
            im.putpalette([c for rgb in OSD_COLOURS for c in rgb] + [0] * (768 - 3 * len(OSD_COLOURS)))
            im.putdata(m.reshape(-1).tolist())
            im.save(tmp_path / split / "labels_1D" / f"{i:04d}.png")
            assert Image.open(tmp_path / split / "labels_1D" / f"{i:04d}.png").mode == "P"
    src = open_source(f"osd:{tmp_path}")
    for split, ms in masks.items():
        for item, m in zip(src.split_items(split), ms):
            assert np.array_equal(src.load(item)[1], m)


@pytest.mark.parametrize("colour,index", [(True, True), (True, False), (False, True)])
def test_osd_reader_counts_and_fractions(tmp_path, colour, index):
    masks = {"train": make_masks(5, seed=1), "test": make_masks(3, seed=2)}
    write_osd(tmp_path, masks, colour=colour, index=index)
    src = open_source(f"osd:{tmp_path}")
    assert src.classes == ("sea", "oil", "look-alike", "ship", "land")
    for split in ("train", "test"):
        s = split_stats(src, split)
        assert s.images == len(masks[split]) and s.size == (24, 16)
        assert list(s.class_fractions) == pytest.approx(fractions(masks[split], 5))
    image, mask = src.load(src.split_items("train")[2])
    assert image.shape == (16, 24) and np.array_equal(mask, masks["train"][2])


def test_inspect_data_json_matches_files(tmp_path):
    masks = {"train": make_masks(4, seed=3), "test": make_masks(2, seed=4)}
    write_osd(tmp_path, masks)
    out = subprocess.run(
        [sys.executable, str(ROOT / "jobs/inspect_data.py"), f"osd:{tmp_path}", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)  # stdout is exactly one JSON object
    assert set(result) >= {"splits", "classes", "b_auto"}
    for split in ("train", "test"):
        assert result["splits"][split]["images"] == len(masks[split])
        assert result["splits"][split]["size"] == [24, 16]
        assert result["splits"][split]["class_fractions"] == pytest.approx(fractions(masks[split], 5))
    # b_auto is the RMS of the normalised training images, read back from the JPEGs.
    imgs = [np.asarray(Image.open(p))[..., 0] for p in sorted((tmp_path / "train/images").glob("*.jpg"))]
    x = np.concatenate([i.reshape(-1) for i in imgs]).astype(np.float64) / 127.5 - 1
    assert result["b_auto"] == pytest.approx(float(np.sqrt((x**2).mean())), rel=1e-6)


def test_osd_image_without_label(tmp_path):
    write_osd(tmp_path, {"train": make_masks(2), "test": make_masks(1)})
    (tmp_path / "train/labels_1D/0001.png").unlink()
    with pytest.raises(DataError, match=r"0001\.jpg: image without a label"):
        open_source(f"osd:{tmp_path}").split_items("train")


def test_osd_label_without_image(tmp_path):
    write_osd(tmp_path, {"train": make_masks(2), "test": make_masks(1)})
    (tmp_path / "train/images/0000.jpg").unlink()
    with pytest.raises(DataError, match=r"0000\.png: label without an image"):
        open_source(f"osd:{tmp_path}").split_items("train")


def test_osd_unreadable_image(tmp_path):
    write_osd(tmp_path, {"train": make_masks(2), "test": make_masks(1)})
    (tmp_path / "train/images/0001.jpg").write_bytes(b"this is not a jpeg")
    src = open_source(f"osd:{tmp_path}")
    with pytest.raises(DataError, match=r"0001\.jpg: unreadable image"):
        split_stats(src, "train")


def test_osd_colour_that_is_no_class(tmp_path):
    write_osd(tmp_path, {"train": make_masks(2), "test": make_masks(1)}, index=False)
    bad = np.array(Image.open(tmp_path / "train/labels/0000.png"))
    bad[3, 5] = (12, 200, 7)
    Image.fromarray(bad).save(tmp_path / "train/labels/0000.png")
    src = open_source(f"osd:{tmp_path}")
    with pytest.raises(DataError, match=r"0000\.png: colour \(12, 200, 7\) at pixel \(x=5, y=3\) is no OSD class"):
        split_stats(src, "train")


def test_osd_class_id_that_is_no_class(tmp_path):
    write_osd(tmp_path, {"train": make_masks(1), "test": make_masks(1)})
    Image.fromarray(np.full((16, 24), 9, dtype=np.uint8)).save(tmp_path / "train/labels_1D/0000.png")
    with pytest.raises(DataError, match=r"0000\.png: class id 9 is no OSD class"):
        split_stats(open_source(f"osd:{tmp_path}"), "train")


def test_osd_empty_split(tmp_path):
    write_osd(tmp_path, {"train": make_masks(2), "test": []})
    with pytest.raises(DataError, match="split 'test' is empty"):
        open_source(f"osd:{tmp_path}").split_items("test")


def test_osd_missing_folder(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        open_source(f"osd:{tmp_path}/nope")


# -- SOS ------------------------------------------------------------------------------------------


def test_sos_reader_counts_and_fractions(tmp_path):
    masks = write_sos(
        tmp_path, {("train", "palsar"): 3, ("train", "sentinel"): 2, ("test", "palsar"): 1, ("test", "sentinel"): 2}
    )
    src = open_source(f"sos:{tmp_path}")
    assert src.classes == ("background", "oil")
    for split in ("train", "test"):
        s = split_stats(src, split)
        assert s.images == len(masks[split]) and s.size == (20, 20)
        assert list(s.class_fractions) == pytest.approx(fractions(masks[split], 2))
    only = open_source(f"sos:{tmp_path}?sat=palsar")
    assert len(only.split_items("train")) == 3
    out = subprocess.run(
        [sys.executable, str(ROOT / "jobs/inspect_data.py"), f"sos:{tmp_path}", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["splits"]["train"]["images"] == 5 and result["classes"] == ["background", "oil"]
    assert result["splits"]["test"]["class_fractions"] == pytest.approx(fractions(masks["test"], 2))


def test_sos_errors(tmp_path):
    write_sos(tmp_path, {("train", "palsar"): 2, ("test", "palsar"): 1})
    (tmp_path / "train/palsar/1_mask.png").unlink()
    with pytest.raises(DataError, match=r"1_sat\.jpg: image without a label"):
        open_source(f"sos:{tmp_path}").split_items("train")
    (tmp_path / "test/palsar/0_sat.jpg").unlink()
    with pytest.raises(DataError, match=r"0_mask\.png: label without an image"):
        open_source(f"sos:{tmp_path}").split_items("test")


def test_sos_bad_mask_value_and_unknown_satellite(tmp_path):
    write_sos(tmp_path, {("train", "sentinel"): 1, ("test", "sentinel"): 1})
    Image.fromarray(np.full((20, 20), 128, dtype=np.uint8)).save(tmp_path / "train/sentinel/0_mask.png")
    with pytest.raises(DataError, match=r"0_mask\.png: mask values \[128\]"):
        split_stats(open_source(f"sos:{tmp_path}"), "train")
    with pytest.raises(DataError, match="unknown SOS satellite"):
        open_source(f"sos:{tmp_path}?sat=landsat")


# -- specs and patches ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,match",
    [
        ("nothing", "no kind"),
        ("foo:bar", "unknown kind"),
        ("synthetic:abc", "not a count"),
        ("synthetic:0", "positive"),
        ("synthetic:5?colour=red", "unknown option"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(DataError, match=match):
        open_source(spec)


def test_synthetic_spec_and_deterministic_patches():
    src = open_source("synthetic:6?size=32&test=3&seed=4")
    assert len(src.split_items("train")) == 6 and len(src.split_items("test")) == 3
    ds = real.PatchDataset(src, "train", resolution=16, crop=24, scale=(0.5, 1.5), flip=True, seed=1)
    x1, m1 = ds[(2, 0)]
    x2, m2 = ds[(2, 0)]
    x3, _ = ds[(2, 1)]
    assert x1.shape == (1, 16, 16) and m1.shape == (16, 16) and m1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(m1, m2) and not torch.equal(x1, x3)
    assert float(x1.min()) >= -1 and float(x1.max()) <= 1


def test_osd_layout_written_by_simulator_reads_back(tmp_path):
    from dakter_scale.data.synthetic_sar import scene_seed, simulate_scene, write_osd_layout

    write_osd_layout(tmp_path, 3, 2, height=40, width=72, seed=5, progress=False)
    src = open_source(f"osd:{tmp_path}")
    image, mask = src.load(src.split_items("train")[1])
    ref_image, ref_mask = simulate_scene(scene_seed(5, "train", 1), 40, 72)
    assert np.array_equal(mask, ref_mask)
    assert np.abs(image.astype(int) - ref_image.astype(int)).mean() < 3  # JPEG, quality 95


def test_a_tiff_image_in_an_sos_split_is_refused_when_listed(tmp_path):
    write_sos(tmp_path, {("train", "palsar"): 2, ("test", "palsar"): 1})
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(tmp_path / "train" / "palsar" / "7_sat.tif")
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(tmp_path / "train" / "palsar" / "7_mask.png")
    with pytest.raises(DataError, match=r"7_sat\.tif: TIFF images are not read here \(PNG or JPEG only\)"):
        open_source(f"sos:{tmp_path}?sat=palsar").split_items("train")


def test_two_images_of_one_name_are_refused_naming_both(tmp_path):
    """0001.jpg and 0001.png pair with one label: one of them was dropped without a word."""
    write_osd(tmp_path, {"train": make_masks(2), "test": make_masks(1)}, colour=False)
    Image.fromarray(np.zeros((16, 24), dtype=np.uint8)).save(tmp_path / "train" / "images" / "0001.png")
    with pytest.raises(DataError, match=r"0001\.jpg and .*0001\.png: two images named '0001'"):
        open_source(f"osd:{tmp_path}").split_items("train")


def test_osd_data_on_s3_streams_through_a_forked_dataloader_worker(tmp_path, s3_bucket):
    """s3fs refuses, in a forked DataLoader worker, the instance the parent used ("not fork-safe"): the
    source opens its file system again there (storage.ForkSafeFS)."""
    import fsspec

    from dakter_scale.data.stream import RealStream, stream_loader

    write_osd(tmp_path / "osd", {"train": make_masks(3), "test": make_masks(1)}, colour=False)
    fsspec.filesystem("s3").put(str(tmp_path / "osd"), f"{s3_bucket}/osd", recursive=True)
    source = open_source(f"osd:{s3_bucket}/osd")
    dataset = real.PatchDataset(source, "train", 16)
    x, _ = dataset[0]  # the parent reads first: its s3fs instance and event loop are in use
    loader = stream_loader(RealStream(dataset, seed=0), num_workers=1)
    try:
        items = [next(loader) for _ in range(4)]
    finally:
        loader.close()
    assert all(it["x"].shape == (1, 16, 16) for it in items)
