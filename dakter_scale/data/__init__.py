"""Reading and writing data. ``webdataset_pipeline`` (data/interop.py) is importable from here, lazily:
importing dakter_scale.data does not import webdataset."""


def __getattr__(name: str):
    if name == "webdataset_pipeline":
        from dakter_scale.data.interop import webdataset_pipeline

        return webdataset_pipeline
    raise AttributeError(f"module 'dakter_scale.data' has no attribute {name!r}")
