"""Scenes from strangers (issue 29): hostile scene files, written here, run through jobs/predict.py.

Each case exits 2 with one line on stderr naming the file or the flag, no traceback, within seconds, with
its peak memory measured and bounded; no input byte changes and nothing is written anywhere (--out
included: the checks come before the output folder is made). The matrix runs jobs/predict.py's main() once
per case in one child process (``CHILD``: a fresh interpreter per case costs ~6-15 s on the shared CPU),
with stderr captured at the file descriptor (GDAL's C messages included) and the peak RSS reset before
each case (/proc/self/clear_refs), so each case's peak above its starting RSS is its own; a refused missing
scene is the baseline (the job's work before it opens a scene: the student loaded). One case also runs as a
process of its own, its exit status and peak RSS (wait4) against a baseline process's. The readers' own
guarantees (no sibling overviews, decimated reads, the bracketing calibration vectors, PNG/JPEG only, the
grid caps, the output folder's lease) are tested in this process below."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dakter_scale.scene.read import SceneError, open_scene

from conftest import ROOT, job
from scenegen import DarkIsOil, draw_codes, info, sigma0_of, write_geotiff, write_safe

# A case's peak RSS above the baseline's (MB) and its seconds above the baseline's. Measured here (the test
# prints them with -s), three runs on the shared 2-core machine at load 4 to 7.5: +33 to +36 MB and +1.1 to
# +3.6 s (the 80,000-vector calibration file, 15 MB of XML parsed by expat's Python handlers up to the element
# cap); every other case within 1 MB and 0.6 s. Unbounded, that file cost +650 MB, and each tile 1.6 s.
MEMORY_MARGIN_MB = 64
SECONDS_MARGIN = 10.0


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A student folder as jobs/predict.py reads it (random weights: every case is refused before a tile runs)."""
    from dakter_scale.data.osd import CLASSES
    from dakter_scale.student.models import build_student, save_student

    folder = tmp_path_factory.mktemp("student") / "s"
    return str(
        save_student(
            folder,
            build_student("unet", "resnet18", len(CLASSES), None, 3),
            dict(info(10.0), arch="unet", encoder="resnet18", encoder_depth=3),
        )
    )


def run_predict(args: list[str], work: Path) -> dict:
    """jobs/predict.py in a child process; its exit code, stderr, seconds and peak RSS (MB, its own)."""
    with open(work / "stdout.txt", "w+") as out, open(work / "stderr.txt", "w+") as err:
        t0 = time.monotonic()
        child = subprocess.Popen(
            job("predict.py") + args, stdout=out, stderr=err, env=dict(os.environ, DAKTER_PROGRESS="0")
        )
        watchdog = threading.Timer(300, child.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            watchdog.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - t0
        err.seek(0)
        return {"rc": child.returncode, "stderr": err.read(), "seconds": seconds, "peak_mb": usage.ru_maxrss / 1024}


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root (the case's inputs and everything beside them)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def baseline(student, tmp_path_factory):
    work = tmp_path_factory.mktemp("baseline")
    r = run_predict(["--student", student, "--scene", str(work / "missing.tif"), "--out", str(work / "out")], work)
    assert r["rc"] == 2 and "no such scene" in r["stderr"], r["stderr"]
    return r


# -- the hostile files ------------------------------------------------------------------------------------


def _safe(root: Path, codes=None) -> Path:
    return write_safe(root, draw_codes(60, 80) if codes is None else codes, polarisations=("vv",))


def _annotation(safe: Path) -> Path:
    return next((safe / "annotation").glob("*.xml"))


def billion_laughs(levels: int = 9) -> str:
    """A DTD whose top entity expands to 10**levels copies of "lol" (billion laughs)."""
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, levels + 1)
    ]
    return "<!DOCTYPE product [" + "".join(entities) + "]>"


def vrt_behind_tif(root: Path) -> Path:
    """A VRT (XML naming another file) saved as scene.tif: GDAL would read the named file through it."""
    secret = write_geotiff(root / "secret.tif", np.full((64, 64), 77, dtype=np.uint8))
    scene = root / "scene.tif"
    scene.write_text(
        f'<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:32631</SRS><GeoTransform>500000, 10, 0, 5000000, 0, -10</GeoTransform>'
        f'<VRTRasterBand dataType="Byte" band="1"><SimpleSource><SourceFilename relativeToVRT="0">{secret}</SourceFilename><SourceBand>1</SourceBand>'
        f"</SimpleSource></VRTRasterBand></VRTDataset>"
    )
    return scene


def vrt_scene(root: Path) -> Path:
    tif = vrt_behind_tif(root)
    return tif.rename(root / "scene.vrt")


def utf8_dtd(root: Path) -> Path:
    safe = _safe(root)
    ann = _annotation(safe)
    text = ann.read_text()
    ann.write_text(
        text.replace("<product>", billion_laughs() + "<product>", 1).replace(
            "<missionId>S1A</missionId>", "<missionId>&lol9;</missionId>", 1
        )
    )
    return safe


def utf16_dtd(root: Path) -> Path:
    """The same DTD in UTF-16: a byte search for "<!DOCTYPE" finds nothing in it."""
    safe = _safe(root)
    ann = _annotation(safe)
    text = ann.read_text().replace('encoding="UTF-8"', 'encoding="UTF-16"', 1)
    text = text.replace("<product>", billion_laughs() + "<product>", 1).replace(
        "<missionId>S1A</missionId>", "<missionId>&lol9;</missionId>", 1
    )
    ann.write_bytes(text.encode("utf-16"))
    assert b"<!DOCTYPE" not in ann.read_bytes() and b"<!ENTITY" not in ann.read_bytes()
    return safe


def forty_gigapixels(root: Path) -> Path:
    """A GeoTIFF of a few kB declaring 200,000 x 200,000 pixels (sparse: no tile written)."""
    import rasterio
    from rasterio.transform import from_origin

    path = root / "huge.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=200_000,
        width=200_000,
        count=1,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(500000, 5000000, 10, 10),
        tiled=True,
        blockxsize=8192,
        blockysize=8192,
        sparse_ok=True,
        BIGTIFF="YES",
    ):
        pass
    assert path.stat().st_size < 100_000
    return path


def coarse_geotiff(root: Path) -> Path:
    """5 km pixels: a spacing a GeoTIFF may hold, but 500 times the student's 10 m (a grid 500 times the scene per side)."""
    return write_geotiff(root / "coarse.tif", sigma0_of(draw_codes(40, 40)), spacing=5000.0)


def spacing_safe(value: str):
    def write(root: Path) -> Path:
        safe = _safe(root)
        ann = _annotation(safe)
        ann.write_text(
            ann.read_text().replace(
                "<rangePixelSpacing>1.0e+01</rangePixelSpacing>", f"<rangePixelSpacing>{value}</rangePixelSpacing>", 1
            )
        )
        return safe

    return write


def geotransform(name: str, a: float, b: float, d: float, e: float):
    """A GeoTIFF whose geotransform holds (a, b, d, e) as its pixel-size terms (GDAL stores NaN and inf as given)."""

    def write(root: Path) -> Path:
        import rasterio
        from affine import Affine

        path = root / f"{name}.tif"
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            height=40,
            width=40,
            count=1,
            dtype="uint8",
            crs="EPSG:32631",
            transform=Affine(a, b, 500000.0, d, e, 5000000.0),
        ) as ds:
            ds.write(draw_codes(40, 40)[None])
        return path

    return write


def degenerate_grid(root: Path) -> Path:
    """Every geolocation grid point at one place on the ground."""
    safe = _safe(root)
    ann = _annotation(safe)
    text = re.sub(r"<latitude>[^<]*</latitude>", "<latitude>45.0</latitude>", ann.read_text())
    ann.write_text(re.sub(r"<longitude>[^<]*</longitude>", "<longitude>3.0</longitude>", text))
    return safe


def collinear_gcps(root: Path) -> Path:
    """A GeoTIFF whose GCPs lie on one line in pixel space."""
    import rasterio
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    path = root / "line.tif"
    codes = draw_codes(64, 64)
    with rasterio.open(path, "w", driver="GTiff", height=64, width=64, count=1, dtype="uint8") as ds:
        ds.gcps = (
            [
                GroundControlPoint(row=i * 16.0, col=i * 16.0, x=500000.0 + 10 * i, y=5000000.0 - 30 * i * i)
                for i in range(5)
            ],
            CRS.from_epsg(32631),
        )
        ds.write(codes[None])
    return path


def many_vectors(root: Path) -> Path:
    """A calibration file of 80,000 vectors (15 MB of XML)."""
    safe = _safe(root)
    cal = next((safe / "annotation" / "calibration").glob("*.xml"))
    vectors = "".join(
        f'<calibrationVector><azimuthTime>2026-01-01T05:45:12.123456</azimuthTime><line>{i}</line><pixel count="3">0 40 79</pixel>'
        f'<sigmaNought count="3">4.0e+02 4.1e+02 4.2e+02</sigmaNought></calibrationVector>'
        for i in range(80_000)
    )
    cal.write_text(
        f'<?xml version="1.0" encoding="UTF-8"?>\n<calibration><calibrationVectorList count="80000">{vectors}</calibrationVectorList></calibration>\n'
    )
    assert cal.stat().st_size > 14_000_000
    return safe


@pytest.fixture(scope="module")
def many_members(tmp_path_factory) -> Path:
    """A zip of 200,000 members (zip64: the count does not fit the classic end record), written once."""
    path = tmp_path_factory.mktemp("zip") / "members.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("X.SAFE/manifest.safe", "<a/>")
        for i in range(199_999):
            z.writestr(f"X.SAFE/support/{i}.xml", b"")
    return path


def png_that_is_not(root: Path) -> Path:
    """A GIF named scene.png: Pillow would pick the GIF decoder from its content."""
    from PIL import Image

    path = root / "scene.png"
    Image.fromarray(draw_codes(32, 32)).save(path, format="GIF")
    return path


def many_gcps(root: Path) -> Path:
    """A GeoTIFF placed by GCP_MAX_POINTS + 1 ground control points: a spline over them solves a 5001 x 5001 system."""
    import rasterio
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    from dakter_scale.scene.read import GCP_MAX_POINTS

    path = root / "gcps.tif"
    n = GCP_MAX_POINTS + 1
    side = int(np.ceil(np.sqrt(n)))
    points = [
        GroundControlPoint(
            row=i // side * 0.5, col=i % side * 0.5, x=500000.0 + 5 * (i % side), y=5000000.0 - 5 * (i // side)
        )
        for i in range(n)
    ]
    with rasterio.open(path, "w", driver="GTiff", height=64, width=64, count=1, dtype="uint8") as ds:
        ds.gcps = (points, CRS.from_epsg(32631))
        ds.write(draw_codes(64, 64)[None])
    return path


def many_grid_points(root: Path) -> Path:
    """A SAFE annotation whose geolocation grid has GCP_MAX_POINTS + 1 points (1.6 MB of XML)."""
    from dakter_scale.scene.read import GCP_MAX_POINTS

    safe = _safe(root)
    ann = _annotation(safe)
    text = ann.read_text()
    first = re.search(r"<geolocationGridPoint>.*?</geolocationGridPoint>", text).group(0)
    ann.write_text(text.replace(first, first * (GCP_MAX_POINTS + 1 - 41), 1))  # the grid has 42 points
    return safe


def outside_its_projection(root: Path) -> Path:
    """10 m UTM pixels a million kilometres east: the projection's inverse gives inf, which every comparison lets by."""
    from rasterio.transform import from_origin

    from scenegen import write_raster

    return Path(write_raster(root / "far.tif", draw_codes(64, 64), "EPSG:32631", from_origin(1e9, 5e6, 10, 10)))


def gcps_off_the_earth(root: Path) -> Path:
    """EPSG:4326 GCPs at latitudes 95 to 95.06."""
    import rasterio
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    path = root / "polar.tif"
    with rasterio.open(path, "w", driver="GTiff", height=64, width=64, count=1, dtype="uint8") as ds:
        ds.gcps = (
            [
                GroundControlPoint(row=r, col=c, x=3.0 + c * 1e-4, y=95.0 + r * 1e-3)
                for r in (0.0, 64.0)
                for c in (0.0, 64.0)
            ],
            CRS.from_epsg(4326),
        )
        ds.write(draw_codes(64, 64)[None])
    return path


def overview_of_big_blocks(root: Path) -> Path:
    """A tiled float64 GeoTIFF (256 x 256 blocks) whose internal overview GDAL wrote in 4096 x 4096 tiles (128 MiB each)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin

    path = root / "ovr.tif"
    profile = dict(driver="GTiff", width=1024, height=1024, count=1, dtype="float64", crs="EPSG:32631")
    profile.update(transform=from_origin(500000, 5000000, 10, 10), compress="deflate", tiled=True)
    with rasterio.open(path, "w", blockxsize=256, blockysize=256, **profile) as ds:
        ds.write(np.ones((1, 1024, 1024)))
    with rasterio.Env(GDAL_TIFF_OVR_BLOCKSIZE=4096), rasterio.open(path, "r+") as ds:
        ds.build_overviews([2], Resampling.nearest)
    return path


CASES = {
    "vrt-behind-tif": (vrt_behind_tif, r"scene\.tif: not a TIFF file .*GTiff driver alone"),
    "vrt": (vrt_scene, r"scene\.vrt: VRT scenes are refused"),
    "png-that-is-a-gif": (png_that_is_not, r"scene\.png: unreadable image: not a PNG or JPEG"),
    "utf8-dtd": (utf8_dtd, r"s1a-iw-grd-vv.*\.xml: XML with a document type declaration or entities is refused"),
    "utf16-dtd": (utf16_dtd, r"s1a-iw-grd-vv.*\.xml: XML with a document type declaration or entities is refused"),
    "40-gigapixels": (
        forty_gigapixels,
        r"huge\.tif: 200000 x 200000 pixels \(40,000 megapixels\), more than --max-scene-pixels",
    ),
    "5-km-pixels": (
        coarse_geotiff,
        r"coarse\.tif: the model grid needs 0\.002 scene pixels per model pixel .*beyond --max-resample-factor 64",
    ),
    "spacing-absurd": (spacing_safe("1.0e+06"), r"\.xml: imageInformation/rangePixelSpacing is 1000000\.0 m"),
    "spacing-nan": (spacing_safe("NaN"), r"\.xml: imageInformation/rangePixelSpacing is nan m"),
    "spacing-inf": (spacing_safe("INF"), r"\.xml: imageInformation/rangePixelSpacing is inf m"),
    "spacing-zero": (spacing_safe("0"), r"\.xml: imageInformation/rangePixelSpacing is 0\.0 m"),
    "geotransform-nan": (
        geotransform("nan", float("nan"), 0, 0, -10),
        r"nan\.tif: geotransform holds a non-finite value",
    ),
    "geotransform-inf": (
        geotransform("inf", float("inf"), 0, 0, -10),
        r"inf\.tif: geotransform holds a non-finite value",
    ),
    "geotransform-flat": (
        geotransform("flat", 10, 0, 20, 0),
        r"flat\.tif: geotransform is degenerate \(its pixels have no area\)",
    ),
    "geotransform-1e9": (
        geotransform("wide", 1e9, 0, 0, -1e9),
        r"wide\.tif: pixel spacing \(from the georeferencing\) is 1000000000\.0 m",
    ),
    "degenerate-grid": (degenerate_grid, r"\.xml: geolocationGrid: the ground positions are degenerate"),
    "collinear-gcps": (collinear_gcps, r"line\.tif: ground control points: the pixel positions are degenerate"),
    "80000-vectors": (many_vectors, r"calibration-s1a-iw-grd-vv.*\.xml: more than 250000 XML elements"),
    "5001-gcps": (many_gcps, r"gcps\.tif: ground control points: 5001 points, more than the 5000 allowed"),
    "5001-grid-points": (many_grid_points, r"\.xml: geolocationGrid: 5001 points, more than the 5000 allowed"),
    "outside-its-projection": (outside_its_projection, r"far\.tif: its georeferencing places pixels off the Earth"),
    "gcps-off-the-earth": (
        gcps_off_the_earth,
        r"polar\.tif: ground control points: point 0 at longitude 3\.0, latitude 95\.0 is off the Earth",
    ),
    "overview-blocks": (
        overview_of_big_blocks,
        r"ovr\.tif: a 4096 x 4096 float64 block in overview 1, more than 64 MiB",
    ),
}


def check_refused(r: dict, message: str, baseline: dict) -> None:
    lines = r["stderr"].strip().splitlines()
    assert r["rc"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), r["stderr"][-3000:]
    assert "Traceback" not in r["stderr"]
    assert re.search(message, lines[0]), lines[0]
    assert r["seconds"] < baseline["seconds"] + SECONDS_MARGIN, (r["seconds"], baseline["seconds"])
    assert r["peak_mb"] < baseline["peak_mb"] + MEMORY_MARGIN_MB, (r["peak_mb"], baseline["peak_mb"])


CHILD = r"""
import contextlib, ctypes, gc, json, os, runpy, sys, tempfile, time, traceback
cases = json.load(open(sys.argv[1]))
main = runpy.run_path(os.path.join(sys.argv[2], "jobs", "predict.py"), run_name="hostile")["main"]
libc = ctypes.CDLL("libc.so.6")
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":")) / 1024
results = {}
for name, argv in cases.items():
    gc.collect(); libc.malloc_trim(0)  # freed memory of the case before goes back to the system
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    start = status("VmRSS")
    with tempfile.TemporaryFile("w+") as err:
        sys.stderr.flush(); saved = os.dup(2); os.dup2(err.fileno(), 2)
        t0 = time.monotonic()
        try:
            sys.argv = ["predict.py"] + argv
            main()
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc(); rc = 1
        seconds = time.monotonic() - t0
        sys.stderr.flush(); os.dup2(saved, 2); os.close(saved)
        err.seek(0); text = err.read()
    results[name] = {"rc": rc, "stderr": text, "seconds": seconds, "peak_mb": status("VmHWM") - start}
print(json.dumps(results))
"""


def out_cases(root: Path, student: str) -> dict[str, list[str]]:
    """--out over the input, on an existing file, and dot names with --scenes (OUT_CASES)."""
    inputs = root / "out-inputs"
    inputs.mkdir()
    safe = _safe(inputs)
    tif = write_geotiff(inputs / "probabilities.tif", sigma0_of(draw_codes(40, 40)))  # a scene named like an output
    (root / "taken").write_text("a file")
    dots = root / "dots"
    dots.mkdir()
    write_geotiff(dots / "fine.tif", sigma0_of(draw_codes(40, 40)))
    write_geotiff(dots / "...tif", sigma0_of(draw_codes(40, 40)))  # would be written to "..": beside --out
    scene = ["--student", student, "--scene"]
    return {
        "out-is-the-safe": scene + [str(safe), "--out", str(safe)],
        "out-inside-the-safe": scene + [str(safe), "--out", str(safe / "measurement")],
        "out-holds-the-scene": scene + [str(tif), "--out", str(inputs)],
        "out-is-a-file": scene + [str(tif), "--out", str(root / "taken")],
        "scenes-inside-out": [
            "--student",
            student,
            "--scenes",
            str(inputs / "*.tif"),
            "--out",
            str(inputs),
            "--actors",
            "0",
        ],
        "dot-names": ["--student", student, "--scenes", str(dots), "--out", str(root / "dots-out"), "--actors", "0"],
    }


OUT_CASES = {
    "out-is-the-safe": r"--out .*\.SAFE is, contains or lies inside the scene",
    "out-inside-the-safe": r"--out .*measurement is, contains or lies inside the scene",
    "out-holds-the-scene": r"--out .*out-inputs is, contains or lies inside the scene .*probabilities\.tif",
    "out-is-a-file": r"--out .*taken: exists and is not a folder",
    "scenes-inside-out": r"--out .*out-inputs is, contains or lies inside the scene",
    "dot-names": r"scene .*/\.\.\.tif would be written to a folder named '\.\.'",
}


@pytest.fixture(scope="module")
def matrix(student, tmp_path_factory):
    """Every case of CASES (and a baseline) through main() in one child process; inputs hashed before and after."""
    root = tmp_path_factory.mktemp("hostile")
    missing = ["--student", student, "--scene", str(root / "missing.tif"), "--out", str(root / "baseline-out")]
    # The first run imports what the job imports lazily: a warm-up, so that the baseline is the job's own work.
    argv, before = {"warm-up": missing, "baseline": missing}, {}
    for name, (write, _) in CASES.items():
        inputs = root / name
        inputs.mkdir()
        argv[name] = ["--student", student, "--scene", str(write(inputs)), "--out", str(root / f"{name}-out")]
        before[name] = snapshot(inputs)
    argv.update(out_cases(root, student))
    (root / "cases.json").write_text(json.dumps(argv))
    listing = snapshot(root)
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(root / "cases.json"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, DAKTER_PROGRESS="0"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert snapshot(root) == listing  # no input byte changed, nothing written anywhere
    for name in CASES:
        results[name]["unchanged"] = snapshot(root / name) == before[name]
        results[name]["out_exists"] = (root / f"{name}-out").exists()
    results["root"] = str(root)
    return results


@pytest.mark.parametrize("case", list(OUT_CASES))
def test_outputs_never_touch_inputs(case, matrix):
    """Refused before anything is written (the matrix checks every file under its root, inputs included)."""
    check_refused(matrix[case], OUT_CASES[case], matrix["baseline"])
    assert not (Path(matrix["root"]) / "dots-out").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_scene_is_refused_in_one_line(case, matrix):
    baseline, r = matrix["baseline"], matrix[case]
    assert baseline["rc"] == 2 and "no such scene" in baseline["stderr"], baseline["stderr"]
    check_refused(r, CASES[case][1], baseline)
    assert r["unchanged"] and not r["out_exists"]
    print(
        f"{case}: {r['seconds']:.2f} s, peak +{r['peak_mb']:.0f} MB (baseline {baseline['seconds']:.2f} s, +{baseline['peak_mb']:.0f} MB)"
    )


def test_a_zip_of_200000_members_is_refused_by_a_process_of_its_own(many_members, student, baseline, tmp_path):
    """As a process of its own, against a baseline process: exit status 2, one line, its peak RSS (wait4)."""
    before = hashlib.sha256(many_members.read_bytes()).hexdigest()
    r = run_predict(["--student", student, "--scene", str(many_members), "--out", str(tmp_path / "out")], tmp_path)
    check_refused(
        r,
        r"members\.zip: the zip declares 200000 members, more than the 1000 allowed",
        dict(baseline, seconds=baseline["seconds"] + 10),
    )
    assert hashlib.sha256(many_members.read_bytes()).hexdigest() == before and not (tmp_path / "out").exists()
    print(
        f"200000-member zip: {r['seconds']:.1f} s, peak {r['peak_mb']:.0f} MB (baseline process {baseline['seconds']:.1f} s, {baseline['peak_mb']:.0f} MB)"
    )


# -- the readers' own guarantees, in this process ---------------------------------------------------------


def test_a_sibling_overview_is_never_read(tmp_path):
    """GDAL opens scene.tif.ovr with any driver (a VRT included) and reads it for decimated windows:
    with the sibling scan off, the scene's own pixels are what a decimated read returns."""
    write_geotiff(tmp_path / "secret.tif", np.full((32, 32), 200, dtype=np.uint8))
    scene = write_geotiff(tmp_path / "scene.tif", np.full((64, 64), 5, dtype=np.uint8))
    (tmp_path / "scene.tif.ovr").write_text(
        '<VRTDataset rasterXSize="32" rasterYSize="32"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        '<SourceFilename relativeToVRT="1">secret.tif</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>'
    )
    with open_scene(str(scene)) as s:
        assert s.read(0, 64, 0, 64, out_shape=(32, 32)).max() == 5
        assert s.read(0.5, 63.5, 0.5, 63.5, out_shape=(7, 7), resampling="rms").max() == 5


def test_a_tiff_whose_blocks_inflate_past_the_cap_is_refused_unread(tmp_path):
    """A few-hundred-kB deflated GeoTIFF holding one 4200 x 4200 float32 strip (71 MB) would inflate the
    whole strip for every tile read: refused in one line naming the block and what to do."""
    import rasterio
    from rasterio.transform import from_origin

    from dakter_scale.scene.read import TIFF_MAX_BLOCK_BYTES

    path = tmp_path / "one-strip.tif"
    profile = dict(driver="GTiff", width=4200, height=4200, count=1, dtype="float32", crs="EPSG:32631")
    profile.update(transform=from_origin(500000, 5000000, 10, 10), compress="deflate", blockysize=4200)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.zeros((1, 4200, 4200), dtype=np.float32))
    assert path.stat().st_size < 1 << 20 and 4200 * 4200 * 4 > TIFF_MAX_BLOCK_BYTES
    with pytest.raises(SceneError, match=r"one-strip.tif: a 4200 x 4200 float32 block, more than 64 MiB .*re-tile it"):
        open_scene(str(path))
    path.unlink()
    profile.update(tiled=True, blockxsize=512, blockysize=512)  # the same pixels, tiled: read as usual
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.zeros((1, 4200, 4200), dtype=np.float32))
    with open_scene(str(path)) as scene:
        assert scene.read(0, 16, 0, 16).shape == (16, 16)


def test_decimated_reads_use_the_files_own_overviews(tmp_path):
    """A 2x2 checkerboard of 0 and 200 averages to 100; its overview, built by nearest neighbour, holds 0:
    a decimated read returning 0 was read from the overview."""
    import rasterio
    from rasterio.enums import Resampling

    data = np.zeros((256, 256), dtype=np.uint8)
    data[::2, ::2] = data[1::2, 1::2] = 200
    scene = write_geotiff(tmp_path / "o.tif", data)
    with open_scene(str(scene)) as s:
        assert s.read(0, 256, 0, 256, out_shape=(128, 128)).max() == 100  # no overview yet: the average
    with rasterio.open(scene, "r+") as ds:
        ds.build_overviews([2], Resampling.nearest)
    with open_scene(str(scene)) as s:
        assert set(np.unique(s.read(0, 256, 0, 256, out_shape=(128, 128))).tolist()) <= {0, 200}


def test_decimated_reads_average_what_they_cover(tmp_path):
    """GDAL's average over fractional windows equals the area mean; rms of digital numbers is the root of
    the mean intensity (so DN^2 / A^2 is the mean sigma-nought)."""
    rng = np.random.default_rng(0)
    data = rng.integers(1, 2000, (96, 120)).astype(np.float32)
    scene = write_geotiff(tmp_path / "f.tif", data)
    with open_scene(str(scene)) as s:
        got = s.read(0, 96, 0, 120, out_shape=(12, 10))
        assert np.allclose(got, data.reshape(12, 8, 10, 12).mean(axis=(1, 3)), rtol=1e-5)
        rms = s.read(0, 96, 0, 120, out_shape=(12, 10), resampling="rms")
        assert np.allclose(
            rms, np.sqrt((data.astype(np.float64) ** 2).reshape(12, 8, 10, 12).mean(axis=(1, 3))), rtol=1e-4
        )


def test_calibration_is_interpolated_from_the_bracketing_vectors_only():
    from dakter_scale.scene.radiometry import lut_at

    rng = np.random.default_rng(1)
    lines, pixels = np.arange(80_000, dtype=np.float64) * 3.0, np.linspace(0, 25_000, 700)
    values = 400 + rng.random((80_000, 700))
    rows, cols = np.arange(1000.0, 1512.0) + 0.25, np.arange(5000.0, 5512.0)
    t0 = time.perf_counter()
    got = lut_at(lines, pixels, values, rows, cols)
    seconds = time.perf_counter() - t0
    first, last = int(rows[0] // 3), int(rows[-1] // 3) + 2
    assert np.array_equal(got, lut_at(lines[first:last], pixels, values[first:last], rows, cols))
    # By hand at one pixel: bilinear between the two lines that bracket it.
    r, c = rows[7], cols[3]
    i = int(r // 3)
    along = [np.interp(c, pixels, values[k]) for k in (i, i + 1)]
    assert got[7, 3] == pytest.approx(along[0] + (r - lines[i]) / 3.0 * (along[1] - along[0]))
    assert seconds < 0.5, seconds  # every vector interpolated: 1.6 s (issue 29)


def test_calibration_vector_count_is_capped(tmp_path):
    from dakter_scale.scene.read import CALIBRATION_MAX_VECTORS

    safe = _safe(tmp_path)
    cal = next((safe / "annotation" / "calibration").glob("*.xml"))
    n = CALIBRATION_MAX_VECTORS + 1
    vectors = "".join(
        f'<calibrationVector><line>{i}</line><pixel count="2">0 79</pixel><sigmaNought count="2">4.0e+02 4.1e+02</sigmaNought></calibrationVector>'
        for i in range(n)
    )
    cal.write_text(
        f'<?xml version="1.0"?>\n<calibration><calibrationVectorList count="{n}">{vectors}</calibrationVectorList></calibration>\n'
    )
    with pytest.raises(
        SceneError,
        match=rf"calibration-.*\.xml: {n} calibration vectors, more than the {CALIBRATION_MAX_VECTORS} allowed",
    ):
        open_scene(str(safe))


def test_images_are_png_or_jpeg_within_their_caps(tmp_path, monkeypatch):
    from PIL import Image

    from dakter_scale.data import real

    codes = draw_codes(40, 50)
    for fmt, name in (("PNG", "a.png"), ("JPEG", "a.jpg")):
        Image.fromarray(codes).save(tmp_path / name, format=fmt)
        with open_scene(str(tmp_path / name)) as s:
            assert (s.height, s.width) == (40, 50)
    for fmt in ("TIFF", "BMP", "GIF"):
        Image.fromarray(codes).save(tmp_path / "x.png", format=fmt)
        with pytest.raises(SceneError, match=r"x\.png: unreadable image: not a PNG or JPEG"):
            open_scene(str(tmp_path / "x.png"))
    monkeypatch.setattr(real, "IMAGE_MAX_PIXELS", 40 * 50 - 1)
    with pytest.raises(SceneError, match=r"a\.png: 50 x 40 pixels, more than the 1999 allowed"):
        open_scene(str(tmp_path / "a.png"))
    monkeypatch.setattr(real, "IMAGE_MAX_BYTES", 100)
    with pytest.raises(SceneError, match=r"a\.png: \d+ bytes, more than the 100 allowed for an image"):
        open_scene(str(tmp_path / "a.png"))


def test_the_grid_caps_name_their_flags(tmp_path):
    from dakter_scale.scene.predict import PredictError, PredictOptions, Predictor

    scene = write_geotiff(tmp_path / "s.tif", sigma0_of(draw_codes(100, 120)))
    for options, message in (
        ({"max_scene_pixels": 11_999}, r"s\.tif: 100 x 120 pixels .*more than --max-scene-pixels 11999"),
        (
            {"max_grid_pixels": 2_999},
            r"s\.tif: a model grid of 50 x 60 pixels \(factor 2\), more than --max-grid-pixels 2999",
        ),
        (
            {"max_resample_factor": 1.5},
            r"s\.tif: the model grid needs 2 scene pixels per model pixel .*beyond --max-resample-factor 1\.5",
        ),
    ):
        with pytest.raises(PredictError, match=message):
            Predictor(DarkIsOil(), PredictOptions(tile=32, overlap=8, **options), device="cpu", info=info(20.0))(
                str(scene), tmp_path / "out"
            )
    assert not (tmp_path / "out").exists()
    record = Predictor(
        DarkIsOil(), PredictOptions(tile=32, overlap=8, max_grid_pixels=3_000), device="cpu", info=info(20.0)
    )(str(scene), tmp_path / "out")
    assert (
        record["conventions"]["grid"] == {"height": 50, "width": 60} and record["options"]["max_grid_pixels"] == 3_000
    )


def test_a_second_run_into_a_held_folder_is_refused(tmp_path):
    from dakter_scale.data.lease import Lease, LeaseError
    from dakter_scale.scene.predict import PredictOptions, Predictor

    scene = write_geotiff(tmp_path / "s.tif", sigma0_of(draw_codes(64, 64)))
    with Lease(str(tmp_path / "out"), purpose="another predict run").acquire():
        with pytest.raises(LeaseError, match="being written by another run: another predict run"):
            Predictor(DarkIsOil(), PredictOptions(tile=32, overlap=8), device="cpu", info=info(10.0))(
                str(scene), tmp_path / "out"
            )
    assert not (tmp_path / "out" / "predict.json").exists()
    record = Predictor(DarkIsOil(), PredictOptions(tile=32, overlap=8), device="cpu", info=info(10.0))(
        str(scene), tmp_path / "out"
    )
    assert (tmp_path / "out" / "predict.json").exists() and record["tiling"]["count"] == 9


def test_a_run_that_loses_its_folder_after_inference_writes_no_output(tmp_path, monkeypatch):
    """The lease is checked before each write into OUT, not only before predict.json: a run that lost the
    folder while it inferred lands none of its rasters, slicks or record there."""
    from dakter_scale.data.lease import Lease, LeaseError
    from dakter_scale.scene.predict import PredictOptions, Predictor

    scene = write_geotiff(tmp_path / "s.tif", sigma0_of(draw_codes(64, 64)))
    vectorise = Predictor._vectorise

    def lost_while_vectorising(self, *args, **kwargs):
        result = vectorise(self, *args, **kwargs)

        def lost(lease):
            raise LeaseError("the folder is another run's now")

        monkeypatch.setattr(Lease, "check", lost)
        return result

    monkeypatch.setattr(Predictor, "_vectorise", lost_while_vectorising)
    with pytest.raises(LeaseError, match="another run's now"):
        Predictor(DarkIsOil(), PredictOptions(tile=32, overlap=8), device="cpu", info=info(10.0))(
            str(scene), tmp_path / "out"
        )
    written = {p.name for p in (tmp_path / "out").iterdir()} - {".work"}
    assert not written & {"probabilities.tif", "classes.tif", "slicks.geojson", "predict.json", "item.json"}, written


def test_every_output_is_synced_before_the_record(tmp_path, monkeypatch):
    """After a power loss predict.json never stands beside a truncated COG: each output's bytes, then the
    folder, are fsynced before the record's temporary is (the descriptors read through /proc/self/fd)."""
    from dakter_scale.scene.predict import PredictOptions, Predictor

    synced, fsync = [], os.fsync

    def traced(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    scene = write_geotiff(tmp_path / "s.tif", sigma0_of(draw_codes(64, 64)))
    before = snapshot(tmp_path)
    monkeypatch.setattr(os, "fsync", traced)
    record = Predictor(DarkIsOil(), PredictOptions(tile=32, overlap=8), device="cpu", info=info(10.0))(
        str(scene), tmp_path / "out"
    )
    out = str(tmp_path / "out")
    record_at = synced.index(f"{out}/predict.json.tmp")
    for name in record["outputs"]:
        assert f"{out}/{name}" in synced[:record_at], name
    assert (
        out in synced[:record_at] and synced[record_at + 1] == out
    )  # the folder, before and after the rename (then the lease is released)
    assert {
        k: v for k, v in snapshot(tmp_path).items() if not k.startswith("out/")
    } == before  # nothing beside the scene (no .aux.xml)


def test_scene_names_are_made_safe_and_counted_once():
    from dakter_scale.scene.many import scene_folders, scene_name
    from dakter_scale.scene.predict import PredictError

    assert (
        scene_name("s3://bucket/2026/S1A_X.SAFE.zip") == "S1A_X"
        and scene_name("/data/a b;c.tif") == "a_b_c"
        and scene_name("/d/x.y.tiff") == "x.y"
    )
    for url in ("/d/...tif", "/d/.tif", "/d/.hidden.png", "/d/...SAFE/"):
        with pytest.raises(PredictError, match="may not be empty or start with a dot"):
            scene_name(url)
    # Folders named like the run's own files: the summary's write_text then met a folder (a traceback
    # after every scene had run), and a lock-NNNNNN.json folder stands where the lease keeps its locks.
    for url in ("/d/predict_summary.json.tif", "/d/collection.json.png", "/d/lock-000001.json.tif"):
        with pytest.raises(PredictError, match="the name of a file of the run itself"):
            scene_name(url)
    urls = [f"/d/scene-{i}.tif" for i in range(20_000)]
    t0 = time.perf_counter()
    assert len(scene_folders(urls)) == 20_000
    with pytest.raises(PredictError, match="several scenes would write to the same folder: scene-7"):
        scene_folders(urls + ["/e/scene-7.tiff"])
    assert time.perf_counter() - t0 < 1.0  # counted once (a pairwise count took 6 s for 20,000 names)


def test_an_annotation_in_utf16_without_a_dtd_is_read(tmp_path):
    """The parser refuses the DTD, not the encoding: the same annotation in UTF-16 with no DTD opens."""
    safe = _safe(tmp_path)
    ann = _annotation(safe)
    ann.write_bytes(ann.read_text().replace('encoding="UTF-8"', 'encoding="UTF-16"', 1).encode("utf-16"))
    with open_scene(str(safe)) as s:
        assert (
            s.kind == "safe"
            and s.native_spacing_m == 10.0
            and len(s.gcps) == 42
            and s.acquisition_time.startswith("2026-01-01T05:45:12")
        )


def test_a_grid_without_annotated_spacing_is_measured_and_checked(tmp_path):
    """No imageInformation spacing: measured from the geolocation grid, then held to the same range. The
    test product's corners are 0.4 degrees of longitude (31.5 km at 45 N) over 80 pixels and 0.3 degrees of
    latitude (33.4 km) over 60: 394 and 556 m, 475 m on average; the geodesic measure gives 479 m."""
    safe = _safe(tmp_path)
    ann = _annotation(safe)
    text = re.sub(r"<(range|azimuth)PixelSpacing>[^<]*</(range|azimuth)PixelSpacing>", "", ann.read_text())
    ann.write_text(text)
    with open_scene(str(safe)) as s:
        assert s.native_spacing_m == pytest.approx(475, rel=0.02)


def test_a_sigma0_db_border_of_minus_inf_is_missing(tmp_path):
    """10 log10(0) = -inf: a dB scene's zero-filled border would otherwise be the darkest code, read as oil."""
    data = np.full((64, 64), -8.0, dtype=np.float32)
    data[:, :8] = -np.inf
    data[0, 20] = np.inf
    data[1, 20] = np.nan
    scene = write_geotiff(tmp_path / "db.tif", data)
    with open_scene(str(scene), radiometry="sigma0_db") as s:
        raw = s.read(0, 64, 0, 64)
        assert np.array_equal(s.missing(raw), ~np.isfinite(data))


def test_an_off_earth_manifest_footprint_is_not_used(tmp_path):
    """A footprint holding NaN or a latitude of 95 is taken as absent: the item's geometry is the pixels' outline."""
    from dakter_scale.scene import stac

    for bad in ("nan,3.0", "95.0,3.0", "45.0,181.0"):
        safe = _safe(tmp_path / bad.replace(",", "_"))
        manifest = safe / "manifest.safe"
        text = manifest.read_text()
        ring = re.search(r"<gml:coordinates>([^<]*)</gml:coordinates>", text).group(1)
        manifest.write_text(text.replace(ring, " ".join([bad] + ring.split()[1:]), 1))
        with open_scene(str(safe)) as s:
            geometry, bbox = stac._geometry(s)
            assert s.footprint is None and np.all(np.isfinite(bbox)) and -90 <= bbox[1] <= bbox[3] <= 90
    with open_scene(str(_safe(tmp_path / "good"))) as s:
        assert s.footprint is not None and len(s.footprint) == 4


def test_scenes_at_the_poles_and_across_the_antimeridian_are_on_the_earth(tmp_path):
    """The on-Earth check leaves real places alone: a grid whose last edge computes to -90.00000000000003 (180 / 2062
    degree pixels from 90 N) and an EPSG:4326 grid running past 180 in continuous longitudes."""
    from rasterio.transform import from_origin

    from scenegen import write_raster

    pole = write_raster(
        tmp_path / "pole.tif",
        np.ones((2062, 4), np.float32),
        "EPSG:4326",
        from_origin(-180, 90, 180 / 2062, 180 / 2062),
    )
    east = write_raster(
        tmp_path / "east.tif", np.ones((64, 64), np.float32), "EPSG:4326", from_origin(179.999, 45, 1e-4, 1e-4)
    )
    with open_scene(pole) as s, open_scene(east) as t:
        assert s.pixel_to_lonlat(np.array([0.0]), np.array([2062.0]))[1][0] < -90
        assert t.pixel_to_lonlat(np.array([64.0]), np.array([0.0]))[0][0] > 180


def test_a_refused_geotiff_leaves_no_handle_open(tmp_path):
    """The file's dataset is closed on refusal, not held until the exception (and its traceback's frames) is collected."""

    def handles(path: Path) -> int:
        return sum(os.path.realpath(f"/proc/self/fd/{fd}") == str(path.resolve()) for fd in os.listdir("/proc/self/fd"))

    stack = tmp_path / "stack.tif"
    import rasterio

    with rasterio.open(stack, "w", driver="GTiff", height=32, width=32, count=2, dtype="uint8") as ds:
        ds.write(np.zeros((2, 32, 32), dtype=np.uint8))
    far = outside_its_projection(tmp_path)
    for path, message in ((stack, r"stack\.tif: 2 bands"), (far, r"far\.tif: its georeferencing places pixels off")):
        with pytest.raises(SceneError, match=message) as refused:
            open_scene(str(path))
        assert refused.value is not None and handles(path) == 0, path


def test_the_safe_folder_listing_stops_at_the_cap(tmp_path, monkeypatch):
    """A SAFE folder with three folders of 600 files: the listing stops in the second it walks (past 1,000
    files), the third is never listed."""
    from fsspec.implementations.local import LocalFileSystem

    safe = _safe(tmp_path)
    for name in ("a", "b", "c"):
        (safe / name).mkdir()
        for i in range(600):
            (safe / name / f"{i}.xml").write_bytes(b"")
    listed = []
    ls = LocalFileSystem.ls
    monkeypatch.setattr(
        LocalFileSystem, "ls", lambda self, path, *a, **k: listed.append(path) or ls(self, path, *a, **k)
    )
    with pytest.raises(SceneError, match=r"\.SAFE: more than 1000 files in the SAFE folder"):
        open_scene(str(safe))
    assert sum(p.rstrip("/").rsplit("/", 1)[-1] in ("a", "b", "c") for p in listed) == 2, listed


def test_safe_members_are_one_a_polarisation_and_safe_flags_are_refused(tmp_path):
    """Two calibration files of one polarisation are refused, as two measurements are (noise-*.xml beside
    them is not a calibration); --band and --scene-radiometry, which a SAFE product would ignore, are refused."""
    from scenegen import zip_folder

    safe = _safe(tmp_path)
    cal = next((safe / "annotation" / "calibration").glob("*.xml"))
    (cal.parent / cal.name.replace("calibration-", "noise-")).write_text("<noise/>")
    with open_scene(str(safe)) as s:
        assert s.calibration is not None
    zipped = zip_folder(safe, tmp_path / "p.zip")
    for scene in (safe, zipped):
        with pytest.raises(SceneError, match=r"(SAFE|zip): --band is for GeoTIFFs; .*--polarisation"):
            open_scene(str(scene), band=1)
        with pytest.raises(SceneError, match=r"(SAFE|zip): --scene-radiometry sigma0_db is for GeoTIFFs"):
            open_scene(str(scene), radiometry="sigma0_db")
    (cal.parent / cal.name.replace("-001.xml", "-002.xml")).write_text(cal.read_text())
    with pytest.raises(
        SceneError, match=r"\.SAFE: several VV files in annotation/calibration \(annotation/calibration/calibration-"
    ):
        open_scene(str(safe))


def test_error_lines_are_redacted_before_they_are_cut():
    """A password whose "@" falls past the 200-character cut was cut, then left unredacted (storage.error_line)."""
    from dakter_scale.scene.read import _first_line

    line = _first_line(OSError("x" * 180 + " https://user:hunter2hunter2@host/scene.tif: 403"))
    assert "hunter" not in line and line.startswith("OSError: xxx")
