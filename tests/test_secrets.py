"""Credentials in URLs never reach a message, a log line or a recorded file (storage.redact_url)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from dakter_scale import cli
from dakter_scale.data.storage import StorageError, check_writable, redact_url, url_to_fs

from conftest import ROOT
from shardgen import TINY_STUDENT, job_env, write_dataset

SECRET = "hunter2"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("s3://AKIA:hunter2@bucket/x", "s3://***@bucket/x"),
        ("s3://AKIA:hun/ter2@bucket/x", "s3://***@bucket/x"),  # an AWS secret key may hold a /
        ("ftp://user:p@ss@host:21/p?x=1", "ftp://***@host:21/p?x=1"),  # an unencoded @ in the password
        ("sftp://user@host/data", "sftp://***@host/data"),
        ("sos:s3://u:p@bucket/sos?sat=palsar", "sos:s3://***@bucket/sos?sat=palsar"),
        ("simplecache::s3://k:s@bucket/p", "simplecache::s3://***@bucket/p"),
        (
            "https://h/p?X-Amz-Signature=abc&X-Amz-Credential=c%2Fd&part=1",
            "https://h/p?X-Amz-Signature=***&X-Amz-Credential=***&part=1",
        ),
        ("https://h/p?access_token=t;sig=s#f", "https://h/p?access_token=***;sig=***#f"),
        (
            "error: output s3://a:b@h/x is not writable (s3://a:b@h/x)",
            "error: output s3://***@h/x is not writable (s3://***@h/x)",
        ),
        # nothing to hide: unchanged
        ("synthetic:8?size=32&test=4&seed=1", None),
        ("gs://bucket/key@v1", None),
        ("/data/user@host/osd", None),
        ("http://host:8080/path", None),
        ("s3://bucket/a:b/c", None),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == (url if expected is None else expected)
    assert redact_url(redact_url(url)) == redact_url(url)


def test_object_store_urls_with_credentials_are_refused_without_echoing_them():
    with pytest.raises(StorageError) as e:
        url_to_fs(f"s3://user:{SECRET}@bucket/gen")
    assert SECRET not in str(e.value) and "s3://***@bucket/gen" in str(e.value)


def test_an_unwritable_output_with_a_password_is_named_without_it():
    port = __import__("shardgen").free_port()  # nothing listens there
    with pytest.raises(StorageError) as e:
        check_writable(f"ftp://user:{SECRET}@127.0.0.1:{port}/out")
    assert SECRET not in str(e.value) and f"ftp://***@127.0.0.1:{port}/out" in str(e.value)


def test_cli_hides_credentials_in_errors_logs_and_tracebacks(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.run(lambda: (_ for _ in ()).throw(StorageError(f"output ftp://u:{SECRET}@h/x is not writable")))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err == "error: output ftp://***@h/x is not writable\n"
    # a bug keeps its traceback and status 1; its log lines and the traceback hide the password
    script = (
        "import logging\nfrom dakter_scale import cli\nlogging.basicConfig(level=logging.INFO)\n"
        "def bug():\n"
        f"    logging.getLogger('x').warning('reading %s', 's3://k:{SECRET}@b/p')\n"
        f"    raise RuntimeError('cannot open https://h/p?token={SECRET}')\n"
        "cli.run(bug)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=job_env(PYTHONPATH=str(ROOT)), timeout=120
    )
    assert (
        r.returncode == 1
        and "Traceback (most recent call last)" in r.stderr
        and "RuntimeError: cannot open https://h/p?token=***" in r.stderr
    ), r.stderr
    assert "reading s3://***@b/p" in r.stderr and SECRET not in r.stderr


def test_jobs_never_print_a_password_in_a_url(tmp_path):
    """--synthetic and a data spec with credentials: one line, exit 2, the URL named without them."""
    for argv in (
        [
            "train_student.py",
            "--out",
            str(tmp_path / "s"),
            "--synthetic",
            f"s3://user:{SECRET}@bucket/gen",
            "--ratio",
            "1",
            *TINY_STUDENT,
        ],
        ["inspect_data.py", f"osd:s3://user:{SECRET}@bucket/osd"],
    ):
        r = subprocess.run(
            [sys.executable, str(ROOT / "jobs" / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            env=job_env(PYTHONPATH=str(ROOT)),
            timeout=300,
        )
        assert r.returncode == 2 and SECRET not in r.stderr + r.stdout, r.stderr[-2000:]
        assert r.stderr.splitlines()[-1].startswith("error: ") and "s3://***@bucket" in r.stderr, r.stderr[-2000:]


def test_student_json_records_the_synthetic_url_without_credentials(tmp_path):
    """A student trained on shards at a URL with userinfo (memory:// keeps it as part of the path, so
    the set is really read from there) records that URL redacted."""
    from dakter_scale.config import load_config
    from dakter_scale.student.train import train_student

    url = f"memory://user:{SECRET}@host/gen-{tmp_path.name}"
    write_dataset(url, [6, 6], size=32)
    cfg = load_config(None, [*TINY_STUDENT, "student.max_steps=2", "student.ratio=1"])
    out = train_student(cfg, tmp_path / "student", synthetic=url, progress=False)
    recorded = (out / "student.json").read_text() + (out / "config.yaml").read_text()
    assert SECRET not in recorded
    assert json.loads((out / "student.json").read_text())["synthetic"] == f"memory://***@host/gen-{tmp_path.name}"


# A first line long enough that a cut at 200 characters falls inside the password, before its "@":
# cutting first and redacting after showed the first 16 characters of it.
SECRET = "hunter2secretpassword"
LONG = "x" * 170 + f" ftp://alice:{SECRET}@host/p\nsecond line"


def test_a_long_error_is_redacted_before_it_is_cut(monkeypatch):
    import fsspec

    from dakter_scale.data import storage

    assert SECRET[:7] not in storage.error_line(OSError(LONG))
    assert len(storage.error_line(OSError(LONG))) <= 200 and "\n" not in storage.error_line(OSError(LONG))
    fs = fsspec.filesystem("memory")

    def refuse(*a, **k):
        raise OSError(LONG)

    monkeypatch.setattr(fs, "pipe_file", refuse)
    with pytest.raises(StorageError) as e:
        check_writable("memory://unwritable")
    assert SECRET[:7] not in str(e.value)


def test_a_failed_tasks_reason_and_a_failed_renewals_log_line_hide_credentials(tmp_path, monkeypatch, caplog):
    from dakter_scale.data.lease import Lease
    from dakter_scale.dist.driver import Workers
    from dakter_scale.dist.strategies import LocalStrategy

    class Fails:
        def __init__(self, device=None):
            pass

        def ready(self) -> dict:
            return {}

        def __call__(self, task):
            raise OSError(f"fetching https://host/m.pt?X-Amz-Signature={SECRET} failed")

    strategy = LocalStrategy(Fails, {}, Workers())
    strategy.start(1)
    strategy.submit("task")
    (outcome,) = strategy.poll()
    strategy.close()
    assert SECRET not in outcome.reason and "X-Amz-Signature=***" in outcome.reason

    lease = Lease(str(tmp_path / "out"), "writer", lease_seconds=0.4).acquire()
    monkeypatch.setattr(lease, "renew", lambda: (_ for _ in ()).throw(OSError(LONG)))
    with caplog.at_level("WARNING", logger="dakter_scale"):
        time.sleep(0.3)
    lease.release()
    assert "renewing the lock failed" in caplog.text and SECRET[:7] not in caplog.text


def test_a_shard_sets_errors_never_show_a_token_in_its_url(tmp_path):
    from dakter_scale.data.shardset import ShardError, ShardSet

    url = str(tmp_path / f"set?access_token={SECRET}")
    write_dataset(str(tmp_path / "src"), [2])
    for call in (
        lambda: ShardSet(url).sample_shape(),
        lambda: ShardSet(url).derive(str(tmp_path / "dst"), lambda k, r: {}, "fp", 2, keys=["000005-000000"]),
    ):
        with pytest.raises(ShardError) as e:
            call()
        assert SECRET not in str(e.value) and "access_token=***" in str(e.value)
    assert SECRET not in repr(ShardSet(url))


def test_evaluation_records_and_refuses_its_data_without_credentials(tmp_path):
    """A student scored on an OSD folder at a URL with userinfo (memory:// reads it from there): the
    metrics name the data redacted, and a class mismatch names it redacted too."""
    import fsspec

    from dakter_scale.data import synthetic_sar as S
    from dakter_scale.student.evaluate import evaluate_student
    from dakter_scale.student.models import build_student, save_student

    local = tmp_path / "osd"
    S.write_osd_layout(local, n_train=2, n_test=2, height=32, width=32, seed=3, progress=False)
    url = f"memory://user:{SECRET}@host/osd-{tmp_path.name}"
    fsspec.filesystem("memory").put(str(local), url.removeprefix("memory://"), recursive=True)
    classes = ["sea", "oil", "look-alike", "ship", "land"]
    info = {"arch": "unet", "encoder": "resnet18", "classes": classes, "encoder_depth": 3, "resolution": 32}
    student = save_student(tmp_path / "student", build_student("unet", "resnet18", 5, None, encoder_depth=3), info)
    metrics = evaluate_student(str(student), f"osd:{url}", "test")
    assert SECRET not in json.dumps(metrics) and metrics["data"] == f"osd:memory://***@host/osd-{tmp_path.name}"
    other = save_student(
        tmp_path / "other",
        build_student("unet", "resnet18", 2, None, encoder_depth=3),
        {**info, "classes": ["sea", "oil"]},
    )
    with pytest.raises(Exception, match=r"osd:memory://\*\*\*@host") as e:
        evaluate_student(str(other), f"osd:{url}", "test")
    assert SECRET not in str(e.value)
