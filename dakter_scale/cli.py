"""What every job in jobs/ shares: config flags, overrides, and turning bad input into one line.

A job's main() builds its parser with ``parser(...)``, parses, and runs its body inside
``run(...)``: user errors (``errors.UserError``: bad config, data, flags, model folders, storage;
and PermissionError) print ``error: <one line>`` on stderr and exit 2; anything else is a bug and
keeps its traceback. Credentials in URLs (``user:password@``, secret query parameters) are hidden in
all three, and in every log line of the job's process (``storage.redact_url``).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import math
import os
import sys
import traceback
from typing import Callable

from dakter_scale.config import TRACKERS, Config, load_config
from dakter_scale.data.storage import redact_url
from dakter_scale.errors import UserError


class FlagError(UserError, ValueError):
    """A command-line flag out of its range; the message names the flag."""


EPILOG = (
    "Any config key can be overridden as key=value after the flags, e.g. student.lr=3e-4 "
    "diffusion.unet.block_out_channels=[32,64]. Add --print-config to a full command (its required flags "
    "included) to see every key."
)


# What a job reports as one line: an input the user can fix (UserError, the base of every area's error
# class), and the operating system's PermissionError, which names the path it refused (an output folder
# the user cannot write). Anything else, FileNotFoundError included, is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, PermissionError)


def parser(description: str, config: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description, epilog=EPILOG if config else None, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if config:
        p.add_argument(
            "--config",
            metavar="YAML",
            help="config file (configs/demo.yaml, configs/osd.yaml, ...); defaults apply to missing keys",
        )
        p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p


def training_flags(p: argparse.ArgumentParser, resume: str) -> None:
    """--report-to and --resume, as every training job (train_diffusion, distill, train_student) has them."""
    p.add_argument(
        "--report-to",
        choices=TRACKERS,
        default="none",
        help="send loss, learning rate and steps/s to this Accelerate tracker (OUT/logs for tensorboard and mlflow); tensorboard: pip install 'dakter-scale[tracking]' (default none)",
    )
    p.add_argument("--resume", help=resume)


def config_from(args: argparse.Namespace, extra: dict[str, object] | None = None) -> Config:
    """Config file <- positional overrides <- the job's explicit flags (given as dotted keys)."""
    # the flags' values as they are, not through YAML (which would cut `--data "osd:/data/run #2"` at its comment)
    flags = {key: value for key, value in (extra or {}).items() if value is not None}
    cfg = load_config(args.config, list(args.overrides or []), flags)
    if getattr(args, "print_config", False):
        from dakter_scale.config import dump_config

        sys.stdout.write(dump_config(cfg))
        sys.exit(0)
    return cfg


def check_flag(flag: str, value: int | float | None, low: float | None = None, high: float | None = None) -> None:
    """Refuse a numeric flag outside [low, high] (None: unbounded; a flag not given passes) before any work starts."""
    if value is None:
        return
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        wanted = (
            f"in [{low:g}, {high:g}]"
            if low is not None and high is not None
            else f">= {low:g}"
            if low is not None
            else f"<= {high:g}"
        )
        raise FlagError(f"{flag} must be {wanted}, got {value}")


def actor_count(text: str | None) -> int | str | None:
    """--actors of the Ray jobs: "auto", a count >= 0 (0: this process, no Ray), or None (not given)."""
    if text is None or text == "auto":
        return text
    try:
        actors = int(text)
    except ValueError:
        raise FlagError(f"--actors must be auto or a number >= 0, got {text!r}") from None
    check_flag("--actors", actors, 0)
    return actors


def ratio_flag(text: str | None) -> float | None:
    """--ratio of jobs/train_student.py: generated samples per real sample, 2 or 200%, >= 0 and finite
    (student.ratio's inf, generated samples only, is the pretraining arm's); None when not given."""
    if text is None:
        return None
    t = text.strip()
    try:
        value = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise FlagError(f"--ratio must be a number like 2 or 200%, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise FlagError(f"--ratio must be a finite number >= 0, got {text!r}")
    return value


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def redact_logs() -> None:
    """Hide credentials in URLs (storage.redact_url) in every log record this process makes, whatever
    logged it (libraries name the URLs they fail on), and in the traceback of an uncaught exception."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts_urls", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging reports it when the record is emitted
            return record
        clean = redact_url(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    factory.redacts_urls = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
    # A bug propagates out of run() as it always did; the traceback Python prints then hides them too.
    sys.excepthook = _redacted_traceback


def _redacted_traceback(kind: type[BaseException], value: BaseException, tb) -> None:
    sys.stderr.write(redact_url("".join(traceback.format_exception(kind, value, tb))))


def run(body: Callable[[], int | None]) -> None:
    """Run a job body; user errors become one line on stderr (credentials in URLs hidden) and exit status 2."""
    redact_logs()
    try:
        code = body()
    except USER_ERRORS as e:
        fail(redact_url(str(e).splitlines()[0]) if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    sys.exit(code or 0)


def script(main: Callable[[], None]) -> None:
    """A job run as a script (``if __name__ == "__main__": script(main)``): main's exit status, after
    the atexit handlers (Ray's shutdown among them) but without the interpreter's finalization. Native
    thread pools torn down there (Arrow's, behind the Parquet manifests) can abort a job that finished
    its work, with "terminate called without an active exception" and SIGABRT (apache/arrow#34314;
    seen here once in a few hundred synthesis runs on a loaded machine). Tests call main() itself."""
    try:
        main()
        code: object = 0
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)


def progress_enabled() -> bool:
    """Progress bars on, unless DAKTER_PROGRESS=0 (quiet logs in CI and tests)."""
    return os.environ.get("DAKTER_PROGRESS", "1") not in ("0", "false", "no")
