"""dist/folder.py: a model folder packed for Ray actors and unpacked there."""

from __future__ import annotations

import shutil

import pytest

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
