"""Scene inference: a SAR scene (GeoTIFF / COG, Sentinel-1 SAFE GRD, plain image) -> georeferenced
probability and class rasters, slick polygons and a record (docs/inference.md).

- ``read``        opening a scene as a windowed reader with georeferencing and metadata (one owner of
                  the SAFE layout and of the GeoTIFF checks)
- ``radiometry``  the student's radiometric convention and the conversion of a scene to it
- ``tile``        the tile grid and the blending window, pure numpy (the maths)
- ``vectorise``   hysteresis, connected components over row bands, polygons, areas, GeoJSON
- ``outputs``     COGs, the quick-look PNG, predict.json
- ``predict``     one scene end to end, and many scenes through synth's driver
- ``export``      TorchScript / ONNX export of a student
"""
