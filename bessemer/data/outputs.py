"""What an output prefix of `bessemer prepare` holds, and the rule for replacing it.

A dataset at PREFIX is PREFIX.bin/.idx, PREFIX_mask.bin/.idx (SFT and preference data) and PREFIX.meta.json, or,
sharded, PREFIX_00000... (each such a dataset) listed in PREFIX.meta.json. A run may replace the files of an
earlier `prepare` (its meta.json is a prepare report); any other file at those names (a Megatron dataset, the
user's own PREFIX.meta.json) is refused unless `overwrite` is set. Once the new dataset is in place, the files of
the earlier run that it did not rewrite (a loss mask when SFT data becomes pretrain data, shards of a larger
earlier run, PREFIX.bin of an unsharded one) are removed: the trainer would read them as part of this dataset.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from bessemer.data import indexed
from bessemer.data.indexed import mask_prefix, meta_path
from bessemer.errors import DataError


def dataset_files(prefix: str | Path, mask: bool = True) -> list[Path]:
    """The files of a dataset at `prefix`, unsharded: tokens, index, report and (with `mask`) loss mask, as
    absolute paths (so that two spellings of one prefix compare equal)."""
    prefix = os.path.abspath(prefix)
    files = [indexed.bin_path(prefix), indexed.idx_path(prefix), meta_path(prefix)]
    if mask:
        files += [indexed.bin_path(mask_prefix(prefix)), indexed.idx_path(mask_prefix(prefix))]
    return files


def shard_prefix(prefix: str | Path, k: int) -> str:
    return f"{prefix}_{k:05d}"


def prepare_report(prefix: str | Path) -> dict | None:
    """PREFIX.meta.json when `bessemer prepare` wrote it (a report of documents written), else None."""
    try:
        meta = json.loads(meta_path(prefix).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and "documents_written" in meta else None


class OutputClaim:
    """The right to write a dataset at `prefix`: `check` refuses files in the way, `retire` and `clean` bracket
    putting the new files in place."""

    def __init__(self, prefix: str | Path, overwrite: bool = False):
        self.prefix = str(prefix)
        self.overwrite = overwrite
        self.earlier: set[Path] = set()  # files of earlier prepare runs here (or, with overwrite, any)
        self.check(self.prefix)

    def check(self, prefix: str | Path) -> None:
        """Refuse when a file of the dataset at `prefix` (the output or one of its shards) is in the way."""
        report = prepare_report(prefix)
        if report is not None or self.overwrite:  # a dataset (or shard) prepare wrote: its files may go
            self.earlier.update(dataset_files(prefix))
            shards = (report or {}).get("shards") or []
            for k in range(len(shards) if isinstance(shards, list) else 0):
                self.earlier.update(dataset_files(shard_prefix(prefix, k)))
        for path in dataset_files(prefix):
            if path.is_dir():
                raise DataError(f"{path}: is a folder, in the way of the output; choose another --out")
            if path.exists() and path not in self.earlier:
                raise DataError(
                    f"{path}: exists and was not written by `bessemer prepare`; choose another --out, "
                    "or pass --overwrite to replace it"
                )

    def retire(self) -> None:
        """Remove the earlier report before the new files go in place: a run stopped in between leaves a dataset
        that fails to open or is refused, never an old report over new tokens."""
        meta_path(self.prefix).unlink(missing_ok=True)

    def clean(self, written: list[str | Path], mask: bool, inputs: list[str | Path] = ()) -> None:
        """Remove the earlier run's files that the datasets `written` (prefixes, with a loss mask or not) did not
        replace, except those of the datasets `inputs` (merged shards stay)."""
        keep = {p for w in written for p in dataset_files(w, mask)} | {dataset_files(self.prefix)[2]}
        keep |= {p for i in inputs for p in dataset_files(i)}
        for path in sorted(self.earlier - keep):
            if path.is_file():
                path.unlink()


def check_output(out: str) -> None:
    """Fail early, in one line, when the output prefix cannot be written (a file in the way, no permission...)."""
    p = Path(out)
    if not p.name or p.name in (".", ".."):
        raise DataError(f"{out}: --out must name a file prefix such as data/corpus, not a folder")
    parent = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{out}: cannot create the folder {parent} ({exc.strerror or exc}); choose another --out"
        ) from exc
    if not parent.is_dir():
        raise DataError(f"{out}: {parent} is not a folder; choose another --out")
    probe = parent / f".{p.name[:200]}.probe-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise DataError(
            f"{out}: cannot write in {parent} ({exc.strerror or exc}); choose another --out"
        ) from exc
    for path in (indexed.bin_path(out), indexed.idx_path(out), meta_path(out)):
        if len(path.name.encode()) > 255:
            raise DataError(f"{out}: the file name is too long for the file system; choose a shorter --out")
        if path.is_dir():
            raise DataError(f"{path}: is a folder, in the way of the output; choose another --out")


def remove_stale_temps(out: str) -> None:
    """Remove the temporary files of earlier runs for this output that were killed (their process is gone)."""
    p = Path(out)
    name = glob.escape(p.name)
    # parts, tokens, masks, reports, of the output and of its shards
    for tmp in p.parent.glob(f".{name}*.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[-1].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
