"""Output folders a verb creates: never inside or around an input, replaced only when Bessemer wrote them.

Every folder written through `staged_output` carries a marker file, `.bessemer-output`. `--overwrite` replaces
a folder only if it holds that marker (or is empty): an arbitrary folder, a file, or a folder that holds an
input is never deleted. The folder is built under a temporary name beside its final place; temporary folders
that a killed run left behind (recognised by the same marker) are removed by the next run of that output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from bessemer.checkpoint.files import atomic_write_text, publish_dir, temp_dir_for
from bessemer.errors import BessemerError

log = logging.getLogger(__name__)

MARKER = ".bessemer-output"


class OutputError(BessemerError):
    """An output path would delete or mix with something Bessemer did not create."""


def _resolved(path: Path) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise OutputError(f"{path}: cannot be resolved ({type(exc).__name__}); pick another path") from exc


def is_bessemer_output(path: Path) -> bool:
    """A folder this project wrote (it holds the marker)."""
    return Path(path).is_dir() and (Path(path) / MARKER).is_file()


def check_output(out: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an --out that overlaps an input, is a file, or holds something Bessemer did not write."""
    try:
        _check_output(Path(out), overwrite, inputs)
    except OSError as exc:  # a name too long, a path through a file, no permission to look
        raise OutputError(
            f"{out}: cannot be used ({exc.strerror or type(exc).__name__}); pick another --out"
        ) from exc


def _check_output(out: Path, overwrite: bool, inputs: tuple[Path, ...]) -> None:
    target = _resolved(out)
    for src in inputs:
        src_path = _resolved(Path(src))
        if target == src_path or target.is_relative_to(src_path) or src_path.is_relative_to(target):
            raise OutputError(
                f"{out}: overlaps the input {src} (one contains the other); write to a separate --out"
            )
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise OutputError(f"{out}: exists and is not a folder; pick another --out")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputError(f"{out}: already exists and is not empty; pass --overwrite or pick another --out")
    if not is_bessemer_output(out):
        raise OutputError(
            f"{out}: --overwrite replaces only a folder Bessemer wrote (it has no {MARKER}); "
            "remove it yourself or pick another --out"
        )


def remove_stale_temps(out: Path) -> None:
    """Delete temporary folders of `out` that a killed run left (only ones holding our marker)."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        if tmp.is_dir() and not tmp.is_symlink() and (tmp / MARKER).is_file():
            log.info("removing %s, left by an interrupted run", tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    old = out.with_name(f".{out.name}.old")
    if old.is_dir() and not old.is_symlink() and (old / MARKER).is_file():
        shutil.rmtree(old, ignore_errors=True)


def write_marker(folder: Path, verb: str) -> None:
    atomic_write_text(Path(folder) / MARKER, json.dumps({"written_by": f"bessemer {verb}"}) + "\n")


@contextlib.contextmanager
def staged_output(
    out: Path, overwrite: bool, verb: str = "convert", inputs: tuple[Path, ...] = ()
) -> Iterator[Path]:
    """A marked temporary folder beside `out`, renamed onto it when the block completes, removed on any error."""
    out = Path(out)
    remove_stale_temps(out)
    try:
        tmp = temp_dir_for(out)
    except OSError as exc:
        raise OutputError(
            f"{out.parent}: cannot create the output there ({os.strerror(exc.errno or 0)})"
        ) from exc
    try:
        write_marker(tmp, verb)
        yield tmp
        check_output(out, overwrite, inputs)  # again: something may have appeared meanwhile
        publish_dir(tmp, out, overwrite=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prepare_run_dir(out_dir: Path) -> Path:
    """Create a training run folder, or say in one line why it cannot be (a file, no permission, too long)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"train.out_dir={out_dir}: is a file, not a folder; pick another train.out_dir")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"train.out_dir={out_dir}: cannot create it ({exc.strerror or type(exc).__name__}); "
            "pick a writable train.out_dir"
        ) from exc
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"train.out_dir={out_dir}: not writable; pick a writable train.out_dir")
    return out_dir
