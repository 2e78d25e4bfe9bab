"""STAC records of scene predictions (scene/stac.py): item.json per scene and collection.json per many-scene
run, read by pystac and validated against the STAC core schemas pystac ships (offline); the projection,
raster and file extensions' fields are read back through pystac's extension classes and checked against
the files themselves (the extension schemas would have to be downloaded, so they are not run)."""

from __future__ import annotations

import hashlib
import json

import pystac
import pytest
import rasterio
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.validation import validate_dict

from dakter_scale.scene.many import predict_many
from dakter_scale.scene.predict import PredictOptions, Predictor
from dakter_scale.scene.read import footprint_lonlat, open_scene
from dakter_scale.scene.stac import stac_datetime

from scenegen import DarkIsOil, draw_codes, info, sigma0_of, write_geotiff, write_safe

OPTIONS = dict(tile=128, overlap=16)


def validate_core(obj: dict, kind: pystac.STACObjectType) -> None:
    """The STAC core JSON schema of obj's version, from pystac's own copy (no network); extensions not fetched."""
    validate_dict(obj, stac_object_type=kind, extensions=[])


def check_item(folder, scene_path) -> pystac.Item:
    raw = json.loads((folder / "item.json").read_text())
    validate_core(raw, pystac.STACObjectType.ITEM)
    with pytest.raises(pystac.errors.STACValidationError):  # the check can fail: an item without a datetime
        validate_core(
            {**raw, "properties": {k: v for k, v in raw["properties"].items() if k != "datetime"}},
            pystac.STACObjectType.ITEM,
        )
    item = pystac.Item.from_dict(raw)
    record = json.loads((folder / "predict.json").read_text())
    # geometry and bbox from the footprint, datetime from the acquisition
    with open_scene(str(scene_path)) as scene:
        ring = scene.footprint or footprint_lonlat(scene)
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    assert item.bbox == pytest.approx([min(lons), min(lats), max(lons), max(lats)])
    assert (
        item.geometry["type"] == "Polygon" and item.geometry["coordinates"][0][0] == item.geometry["coordinates"][0][-1]
    )
    import shapely.geometry

    assert shapely.geometry.shape(item.geometry).exterior.is_ccw  # RFC 7946: outer rings counter-clockwise
    assert item.datetime == pystac.utils.str_to_datetime(stac_datetime(record["scene"]["acquisition_time"]))
    # projection: the written COG's grid
    proj = ProjectionExtension.ext(item)
    with rasterio.open(folder / "probabilities.tif") as cog:
        assert proj.shape == [cog.height, cog.width]
        if cog.crs is not None:
            assert proj.code == f"EPSG:{cog.crs.to_epsg()}" and proj.transform == pytest.approx(list(cog.transform)[:6])
        else:
            assert proj.code == f"EPSG:{cog.gcps[1].to_epsg()}" and proj.transform is None
    # raster: one band per class; file: the sizes and sha256 of what is on disk
    bands = RasterExtension.ext(item.assets["probabilities"]).bands
    assert (
        [b.to_dict()["name"] for b in bands] == record["student"]["classes"]
        and {b.data_type for b in bands} == {"uint8"}
        and bands[0].scale == pytest.approx(1 / 255)
    )
    for key, name in (("probabilities", "probabilities.tif"), ("classes", "classes.tif"), ("slicks", "slicks.geojson")):
        data = (folder / name).read_bytes()
        f = FileExtension.ext(item.assets[key])
        assert (f.size, f.checksum) == (len(data), "1220" + hashlib.sha256(data).hexdigest()), key
    assert item.assets["record"].href == "./predict.json"  # written after the item: no size or hash
    assert item.assets["probabilities"].media_type == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert {link.rel for link in item.links} >= {"derived_from", "related"}
    return item


def test_item_of_a_geotiff_and_of_a_safe(tmp_path):
    tif = write_geotiff(
        tmp_path / "scene.tif", sigma0_of(draw_codes(200, 260)), tags={"ACQUISITION_TIME": "2026-03-04T10:11:12"}
    )
    Predictor(DarkIsOil(), PredictOptions(**OPTIONS), device="cpu", info=info())(str(tif), tmp_path / "tif")
    item = check_item(tmp_path / "tif", tif)
    assert item.properties["datetime"] == "2026-03-04T10:11:12Z" and item.assets["thumbnail"].roles == ["thumbnail"]
    assert item.properties["dakter:datetime_source"] == "ACQUISITION_TIME"
    assert item.properties["dakter:slicks"] == json.loads((tmp_path / "tif" / "predict.json").read_text())["slicks"] > 0

    safe = write_safe(tmp_path, draw_codes(120, 150))
    Predictor(DarkIsOil(), PredictOptions(**OPTIONS), device="cpu", info=info())(str(safe), tmp_path / "safe")
    item = check_item(tmp_path / "safe", safe)  # placed by GCPs: no transform; the product's footprint
    assert item.datetime.year == 2026 and ProjectionExtension.ext(item).transform is None


def test_a_scene_without_an_acquisition_time_gets_no_item(tmp_path):
    tif = write_geotiff(tmp_path / "scene.tif", sigma0_of(draw_codes(120, 160)))
    Predictor(DarkIsOil(), PredictOptions(**OPTIONS), device="cpu", info=info())(str(tif), tmp_path / "out")
    assert (tmp_path / "out" / "predict.json").is_file() and not (tmp_path / "out" / "item.json").exists()
    assert stac_datetime("2026:01:02 03:04:05") == "2026-01-02T03:04:05Z" and stac_datetime("not a time") is None
    # a TIFF's own date (when the file was written) still dates the item, and says so
    dated = write_geotiff(
        tmp_path / "dated.tif", sigma0_of(draw_codes(120, 160)), tags={"TIFFTAG_DATETIME": "2026:01:02 03:04:05"}
    )
    Predictor(DarkIsOil(), PredictOptions(**OPTIONS), device="cpu", info=info())(str(dated), tmp_path / "dated")
    item = json.loads((tmp_path / "dated" / "item.json").read_text())
    assert item["properties"]["dakter:datetime_source"] == "TIFFTAG_DATETIME (when the file was written)"


def test_collection_of_a_many_scene_run(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i in range(2):
        write_geotiff(
            folder / f"tile-{i}.tif",
            sigma0_of(draw_codes(120, 160, seed=i)),
            tags={"ACQUISITION_TIME": f"2026-05-0{i + 1}T00:00:00"},
        )
    write_geotiff(folder / "untimed.tif", sigma0_of(draw_codes(120, 160, seed=5)))
    student = tmp_path / "student"
    from dakter_scale.student.models import build_student, save_student

    save_student(
        student,
        build_student("unet", "resnet18", 5, None, 3),
        {**info(), "arch": "unet", "encoder": "resnet18", "encoder_depth": 3},
    )
    out = tmp_path / "run"
    summary = predict_many(
        str(student),
        str(folder),
        str(out),
        PredictOptions(**OPTIONS, pixel_spacing=10.0, quicklook=False),
        use_ray=False,
        progress=False,
    )
    assert summary.ok and len(summary.written) == 3
    raw = json.loads((out / "collection.json").read_text())
    validate_core(raw, pystac.STACObjectType.COLLECTION)
    collection = pystac.Collection.from_dict(raw)
    assert [link.href for link in collection.links if link.rel == "item"] == [
        "./tile-0/item.json",
        "./tile-1/item.json",
    ]  # the untimed scene has none
    items = [pystac.Item.from_dict(json.loads((out / f"tile-{i}" / "item.json").read_text())) for i in range(2)]
    for i, item in enumerate(items):
        check_item(out / f"tile-{i}", folder / f"tile-{i}.tif")
        assert "thumbnail" not in item.assets
    interval = collection.extent.temporal.intervals[0]
    assert [t.isoformat() for t in interval] == ["2026-05-01T00:00:00+00:00", "2026-05-02T00:00:00+00:00"]
    box = collection.extent.spatial.bboxes[0]
    assert box == pytest.approx(
        [
            min(i.bbox[0] for i in items),
            min(i.bbox[1] for i in items),
            max(i.bbox[2] for i in items),
            max(i.bbox[3] for i in items),
        ]
    )


def test_links_given_relative_to_the_working_folder_resolve_from_the_item(tmp_path, monkeypatch):
    """`--scene scene.tif --student runs/student --out runs/scene` (the README's command): a STAC reader
    resolves a relative href against the item, so the links are written relative to OUT, not as typed."""
    monkeypatch.chdir(tmp_path)
    write_geotiff(tmp_path / "scene.tif", sigma0_of(draw_codes(120, 160)), tags={"ACQUISITION_TIME": "2026-03-04"})
    (tmp_path / "runs" / "student").mkdir(parents=True)
    (tmp_path / "runs" / "student" / "student.json").write_text("{}")
    predictor = Predictor(DarkIsOil(), PredictOptions(**OPTIONS, quicklook=False), device="cpu", info=info())
    predictor.student_dir = "runs/student"  # as a student folder given on the command line is recorded
    predictor("scene.tif", tmp_path / "runs" / "scene")
    item = pystac.Item.from_file(str(tmp_path / "runs" / "scene" / "item.json"))
    scene, student = item.get_single_link("derived_from"), item.get_single_link("related")
    assert (scene.href, student.href) == ("../../scene.tif", "../student/student.json")
    assert scene.get_absolute_href() == str(tmp_path / "scene.tif")
    assert student.get_absolute_href() == str(tmp_path / "runs" / "student" / "student.json")


def test_an_item_names_its_own_outputs_and_no_absolute_path_and_has_an_id_for_dot(tmp_path, monkeypatch):
    """A rerun without a quick-look into a folder that holds an earlier one lists no thumbnail (it listed
    the earlier scene's); the scene given as an absolute path is linked relative to the item; --out .
    gives the folder's name as the id (an empty id failed STAC's schema)."""
    first = write_geotiff(tmp_path / "a.tif", sigma0_of(draw_codes(120, 160)), tags={"ACQUISITION_TIME": "2026-03-04"})
    second = write_geotiff(tmp_path / "b.tif", sigma0_of(draw_codes(120, 160)), tags={"ACQUISITION_TIME": "2026-03-05"})
    out = tmp_path / "runs" / "scene"
    Predictor(DarkIsOil(), PredictOptions(**OPTIONS), device="cpu", info=info())(str(first), out)
    assert (out / "quicklook.png").is_file()
    monkeypatch.chdir(out)
    Predictor(DarkIsOil(), PredictOptions(**OPTIONS, quicklook=False), device="cpu", info=info())(str(second), ".")
    raw = json.loads((out / "item.json").read_text())
    validate_core(raw, pystac.STACObjectType.ITEM)
    assert raw["id"] == "scene" and "thumbnail" not in raw["assets"]
    assert [link["href"] for link in raw["links"] if link["rel"] == "derived_from"] == ["../../b.tif"]


def test_a_footprint_across_the_antimeridian_is_two_polygons_and_a_west_east_box():
    from types import SimpleNamespace

    import shapely.geometry

    from dakter_scale.scene.stac import _geometry

    ring = [(179.5, 60.0), (-179.5, 60.0), (-179.5, 61.0), (179.5, 61.0), (179.5, 60.0)]  # clockwise as given
    geometry, bbox = _geometry(SimpleNamespace(georeferenced=True, footprint=ring))
    shape = shapely.geometry.shape(geometry)
    assert geometry["type"] == "MultiPolygon" and shape.is_valid and all(p.exterior.is_ccw for p in shape.geoms)
    assert bbox == pytest.approx([179.5, 60.0, -179.5, 61.0]) and shape.area == pytest.approx(1.0)


def test_a_collections_time_span_is_ordered_by_time_not_text(tmp_path):
    from dakter_scale.scene.stac import collection

    for name, when in (("a", "2026-05-01T10:00:00.500000Z"), ("b", "2026-05-01T10:00:00Z")):
        (tmp_path / name).mkdir()
        item = {"bbox": [0, 0, 1, 1], "properties": {"datetime": when}}
        (tmp_path / name / "item.json").write_text(json.dumps(item))
    interval = collection(tmp_path, ["a", "b"])["extent"]["temporal"]["interval"][0]
    assert interval == ["2026-05-01T10:00:00Z", "2026-05-01T10:00:00.500000Z"]
