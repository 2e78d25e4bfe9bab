"""dist/: the progress line (driver.py), a model folder packed for Ray actors and unpacked there (folder.py)."""

from __future__ import annotations

import shutil

import pytest

from dakter_scale.dist.driver import Progress
from dakter_scale.dist.folder import pack_folder, unpack_folder


def test_a_folder_under_a_logs_or_checkpoints_path_is_packed_without_its_own_such_folders(tmp_path):
    """Only the folder's own checkpoints/ and logs/ are left out: a model kept under runs/logs/ or
    .../checkpoints/best/ was packed as nothing at all (the parts of its absolute path were tested)."""
    for parent in ("logs", "checkpoints"):
        model = tmp_path / parent / "model"
        (model / "sub").mkdir(parents=True)
        (model / "config.json").write_bytes(b"{}")
        (model / "sub" / "weights.pt").write_bytes(b"w")
        for skipped in ("checkpoints", "logs"):
            (model / skipped).mkdir()
            (model / skipped / "x").write_bytes(b"x")
        assert pack_folder(model) == {"config.json": b"{}", "sub/weights.pt": b"w"}
        there = unpack_folder(pack_folder(model))
        try:
            assert (there / "sub" / "weights.pt").read_bytes() == b"w"
        finally:
            shutil.rmtree(there)


@pytest.mark.parametrize("name", ["../escaped", "/tmp/escaped-abs", "a/../../escaped", ""])
def test_unpacking_never_writes_outside_its_folder(name):
    with pytest.raises(ValueError, match="not a relative path inside the folder"):
        unpack_folder({name: b"x"})


def test_an_eta_past_a_day_counts_its_hours():
    """The ETA was strftime("%H:%M:%S") of a time of day: 30 h left showed as 06:00:00."""
    progress = Progress(total_items=109_000, total_tasks=109, bar=False, name="synthesize", units=("shards", "pairs"))
    progress.window[0] = (progress.window[0][0] - 1000.0, 0)  # the first 1000 pairs took 1000 s
    progress.update(1000)
    assert progress.line().split("ETA ")[1] in ("30:00:00", "29:59:59", "29:59:58")
