"""User errors: one base (errors.UserError) that cli.run turns into one line and exit status 2;
every other exception, an internal FileNotFoundError included, keeps its traceback."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dakter_scale import cli
from dakter_scale.errors import UserError

from conftest import ROOT


def run_body(body, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        cli.run(body)
    return exit_.value.code, capsys.readouterr().err


def raising(exc: BaseException):
    def body():
        raise exc

    return body


def test_every_error_class_of_the_library_is_a_user_error():
    """Read from the source: every class named *Error in dakter_scale derives from UserError (internal
    invariants are asserts, not classes), so cli.run needs to know no subsystem."""
    found = {}
    for path in sorted((ROOT / "dakter_scale").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error") and node.name != "UserError":
                found[f"{path.relative_to(ROOT)}:{node.name}"] = [ast.unparse(b) for b in node.bases]
    assert len(found) >= 11, found
    user = {"UserError"}  # and every class derived from one (SampleError from ShardError)
    while (
        new := {name.split(":")[1] for name, bases in found.items() if any(b.split(".")[-1] in user for b in bases)}
        - user
    ):
        user |= new
    assert [name for name in found if name.split(":")[1] not in user] == []


def test_area_errors_keep_their_second_base():
    from dakter_scale.config import ConfigError
    from dakter_scale.data.real import DataError
    from dakter_scale.data.shardset import ShardError
    from dakter_scale.data.storage import StorageError
    from dakter_scale.data.stream import StreamError
    from dakter_scale.diffusion.model import ModelFolderError
    from dakter_scale.student.models import StudentError
    from dakter_scale.synth.filter import FilterError
    from dakter_scale.synth.plan import PlanError
    from dakter_scale.training import DivergedError, LaunchError, ResumeError

    for cls, second in [
        (ConfigError, ValueError),
        (DataError, ValueError),
        (ShardError, ValueError),
        (StorageError, PermissionError),
        (StreamError, RuntimeError),
        (ModelFolderError, ValueError),
        (StudentError, ValueError),
        (FilterError, ValueError),
        (PlanError, ValueError),
        (LaunchError, RuntimeError),
        (ResumeError, FileNotFoundError),
        (DivergedError, FloatingPointError),
    ]:
        assert issubclass(cls, UserError) and issubclass(cls, second), cls
        assert str(cls("a message")) == "a message"


def test_a_user_error_is_one_line_and_status_2(capsys):
    from dakter_scale.config import ConfigError

    code, err = run_body(raising(ConfigError("unknown config key student.lrr (defaults)\nmore detail")), capsys)
    assert code == 2 and err == "error: unknown config key student.lrr (defaults)\n"
    code, err = run_body(raising(PermissionError(13, "Permission denied", "/root/out")), capsys)
    assert code == 2 and err == "error: [Errno 13] Permission denied: '/root/out'\n"


def test_resume_without_a_checkpoint_is_a_user_error(tmp_path, capsys):
    from dakter_scale.training import resolve_resume

    code, err = run_body(lambda: resolve_resume(tmp_path, str(tmp_path / "nowhere")), capsys)
    assert code == 2 and err == f"error: --resume {tmp_path / 'nowhere'}: no checkpoint there (no state.json)\n"


def test_unwritable_output_is_a_user_error(tmp_path, capsys):
    from dakter_scale.data import storage

    (tmp_path / "file").write_text("x")
    code, err = run_body(lambda: storage.check_writable(str(tmp_path / "file" / "sub")), capsys)
    assert (
        code == 2
        and err.startswith(f"error: output {tmp_path / 'file' / 'sub'} is not writable: ")
        and err.count("\n") == 1
    )


def test_an_internal_file_not_found_error_keeps_its_traceback(tmp_path):
    """A FileNotFoundError the code did not raise for a user's input is a bug: it propagates out of
    cli.run (exit status 1 and a traceback), it is not turned into one line with status 2."""
    with pytest.raises(FileNotFoundError):
        cli.run(lambda: open(tmp_path / "written-by-an-earlier-step.json").read())
    script = "from dakter_scale import cli\ncli.run(lambda: open('/no/such/internal/file.json').read())\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=str(ROOT), env=env
    )
    assert r.returncode == 1, r.stderr
    assert (
        "Traceback (most recent call last)" in r.stderr
        and "FileNotFoundError: [Errno 2] No such file or directory" in r.stderr
    )
    assert not r.stderr.startswith("error: ")


def test_cli_imports_no_subsystem():
    """cli.py catches the base class; it need not import the areas that raise (storage only lends it
    redact_url, to hide credentials in what it prints)."""
    tree = ast.parse(Path(cli.__file__).read_text())
    imported = {
        n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("dakter_scale")
    }
    assert imported <= {"dakter_scale.config", "dakter_scale.errors", "dakter_scale.data.storage"}, imported


def test_a_student_folder_missing_a_field_or_with_broken_json_is_one_line_naming_it(tmp_path):
    from dakter_scale.student.evaluate import evaluate_student
    from dakter_scale.student.models import StudentError, build_student, load_student, save_student

    info = {"arch": "unet", "encoder": "resnet18", "classes": ["sea", "oil"], "encoder_depth": 3}
    folder = save_student(tmp_path / "s", build_student("unet", "resnet18", 2, None, encoder_depth=3), info)
    load_student(folder)  # what building needs is there
    with pytest.raises(StudentError, match=r"student.json lacks the field\(s\) resolution; train one"):
        evaluate_student(str(folder), "synthetic:2?size=32&test=2", "test")
    (folder / "student.json").write_text('{"arch": "unet"')
    with pytest.raises(StudentError, match=r"student.json is not valid JSON"):
        load_student(folder)
