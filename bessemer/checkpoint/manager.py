"""Save and resume training: DCP shards of model + optimizer, JSON train state, atomic step dirs, retention.

A save writes `checkpoints/.step-NNNNNN.tmp/`, then model.json, meta.json, train_state.json, the tokenizer
and, last, manifest.json (every file's size and CRC-32), renames the folder to `step-NNNNNN/` and points
`latest` at it. With `checkpoint.async_save` the shards are copied to host memory and written by a
background thread (torch.distributed.checkpoint.async_save) while training goes on; the folder is completed
the same way once the write is done. A failed save (disk full, no permission) removes its temporary folder,
leaves every earlier checkpoint and `latest` as they were, and stops training with one line. A resume
verifies the newest checkpoint against its manifest and falls back to the newest complete one, naming
what is damaged.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from bessemer.checkpoint.files import atomic_write_text, single_process_quiet
from bessemer.checkpoint.layout import (
    LATEST,
    STATE_DIR,
    STEP_RE,
    TOKENIZER_DIR,
    TRAIN_STATE_JSON,
    save_model_config,
    step_dir_name,
    step_dirs,
    tmp_step_dir_name,
    write_meta,
)
from bessemer.checkpoint.manifest import has_manifest, verify_manifest, write_manifest
from bessemer.checkpoint.model_io import check_shapes
from bessemer.config import CheckpointSection
from bessemer.errors import CheckpointError
from bessemer.models import ModelConfig
from bessemer.tokenizer import copy_tokenizer_files

log = logging.getLogger(__name__)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@dataclass
class _Pending:
    """An async save whose shards are still being written."""

    future: Future
    tmp: Path
    step: int
    train_state: dict
    started: float


class CheckpointManager:
    """Writes `run_dir/checkpoints/step-NNNNNN/` atomically and keeps the newest `keep` of them."""

    def __init__(
        self,
        run_dir: Path,
        cfg: CheckpointSection,
        model_cfg: ModelConfig,
        tokenizer_src: Path | None,
        meta: dict,
    ):
        self.root = Path(run_dir) / "checkpoints"
        self.cfg = cfg
        self.model_cfg = model_cfg
        self.tokenizer_src = tokenizer_src
        self.meta = meta
        self._pending: _Pending | None = None
        self._async_group = None
        self._cleaned = False

    # ---- saving ------------------------------------------------------------------------------------------
    def save(self, step: int, tensors: dict, train_state: dict) -> Path:
        """Save DCP `tensors` ({"model": ..., "optimizer": ...}) and JSON `train_state`; every rank calls this.

        Returns the step dir; with async_save it appears there once the background write completes
        (`poll` / `wait`).
        """
        self.wait()  # one save in flight at a time; finishes (or reports) the previous one
        final = self.root / step_dir_name(step)
        tmp = self.root / tmp_step_dir_name(
            step
        )  # the same name on every rank: DCP writes each rank's shards
        if _rank() == 0:
            self._clean_leftovers()
            self._guard(tmp, step, lambda: (shutil.rmtree(tmp, ignore_errors=True), tmp.mkdir(parents=True)))
        _barrier()
        started = time.perf_counter()
        import torch.distributed.checkpoint as dcp  # DCP and DTensor cost seconds: imported once a run saves

        writer = dcp.FileSystemWriter(str(tmp / STATE_DIR))
        if self.cfg.async_save:
            future = self._guard(tmp, step, lambda: self._start_async(tensors, writer))
            self._pending = _Pending(future, tmp, step, train_state, started)
            return final
        self._guard(tmp, step, lambda: self._write_shards(tensors, writer))
        self._finish(tmp, step, train_state, started)
        return final

    def _write_shards(self, tensors: dict, writer) -> None:
        import torch.distributed.checkpoint as dcp

        with single_process_quiet():
            dcp.save(tensors, storage_writer=writer)

    def _start_async(self, tensors: dict, writer) -> Future:
        import torch.distributed.checkpoint as dcp

        if dist.is_initialized() and self._async_group is None:
            # the background thread's collectives must not share a group with the training step's
            self._async_group = dist.new_group(backend="gloo")
        with single_process_quiet():
            return dcp.async_save(tensors, storage_writer=writer, process_group=self._async_group)

    def poll(self) -> None:
        """Complete an async save whose background write has finished; returns at once otherwise."""
        if self._pending is not None and self._pending.future.done():
            self.wait()

    def wait(self) -> None:
        """Block until an async save in flight is written and published (or raise its one-line error)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self._guard(pending.tmp, pending.step, pending.future.result)
        self._finish(pending.tmp, pending.step, pending.train_state, pending.started)

    def _finish(self, tmp: Path, step: int, train_state: dict, started: float) -> None:
        """Add the JSON files, the tokenizer and the manifest, then publish the step dir (rank 0)."""
        final = self.root / step_dir_name(step)
        error = None
        if _rank() == 0:
            try:
                self._guard(tmp, step, lambda: self._publish(tmp, final, step, train_state))
                log.info("saved %s in %.1fs", final, time.perf_counter() - started)
            except CheckpointError as exc:
                error = exc
        if not self.cfg.async_save and dist.is_initialized():
            box = [str(error) if error else None]  # every rank stops with rank 0's one line
            dist.broadcast_object_list(box, src=0)
            if box[0] and error is None:
                error = CheckpointError(box[0])
        if error is not None:
            raise error

    def _publish(self, tmp: Path, final: Path, step: int, train_state: dict) -> None:
        self._complete(tmp, step, train_state)
        if final.exists():
            shutil.rmtree(final)  # a previous run's step dir for the same step: ours, and superseded
        tmp.rename(final)
        atomic_write_text(self.root / LATEST, final.name + "\n")
        self._retain(step)

    def _complete(self, tmp: Path, step: int, train_state: dict) -> None:
        save_model_config(self.model_cfg, tmp)
        atomic_write_text(tmp / TRAIN_STATE_JSON, json.dumps(train_state) + "\n")
        write_meta(tmp, step, **self.meta)
        if self.tokenizer_src is not None:
            copy_tokenizer_files(self.tokenizer_src, tmp / TOKENIZER_DIR)
        write_manifest(tmp)  # last: a folder with a manifest is complete

    def _guard(self, tmp: Path, step: int, action):
        """Run `action`; on a file-system error remove the partial checkpoint and say why in one line."""
        from torch.distributed.checkpoint.api import CheckpointException

        try:
            return action()
        except CheckpointError:
            self._discard(tmp)
            raise
        except (OSError, CheckpointException, RuntimeError) as exc:
            cause = _os_error(exc)
            if cause is None and not isinstance(exc, OSError):
                raise
            self._discard(tmp)
            raise CheckpointError(
                f"{self.root}: saving step {step} failed ({_describe(cause or exc)}); the partial checkpoint "
                f"was removed and earlier checkpoints are intact; {_fix(cause)}"
            ) from exc

    def _discard(self, tmp: Path) -> None:
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)

    def _clean_leftovers(self) -> None:
        """Temporary step dirs of a killed run (our own names only) never block a later save or resume."""
        if self._cleaned or not self.root.is_dir():
            return
        self._cleaned = True
        for tmp in self.root.glob(".step-*.tmp"):
            if tmp.is_dir() and not tmp.is_symlink() and STEP_RE.match(tmp.name[1:-4]):
                log.info("removing %s, left by an interrupted save", tmp)
                shutil.rmtree(tmp, ignore_errors=True)
        for tmp in self.root.glob(f".{LATEST}.*.tmp"):  # atomic_write_text's temporary of `latest`
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)

    def _retain(self, step: int) -> None:
        """Keep the newest `keep` step dirs up to `step`, the one just published. Step dirs beyond it (a run
        resumed from an older checkpoint because the newer ones were damaged) are never counted: otherwise they
        would push the checkpoint just written, the newest good one, out of the window."""
        if self.cfg.keep <= 0:
            return
        upto = [p for p in step_dirs(self.root) if int(STEP_RE.match(p.name)[1]) <= step]
        for old in upto[: -self.cfg.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def start_fresh(self, inputs: tuple[Path, ...] = ()) -> bool:
        """A run that does not resume must not write into another run's checkpoints: its saves would replace
        them step by step, and a later --resume would pick the other run's newer steps. Refused in one line
        unless checkpoint.overwrite, which removes the step dirs (our names only) and `latest` first; never
        when one of `inputs` (the checkpoint a fine-tune starts from) lies among them. True if it removed any."""
        existing = [
            Path(p) for p in _from_rank0([str(p) for p in step_dirs(self.root)] if _rank() == 0 else [])
        ]
        if not existing:
            return False
        if not self.cfg.overwrite:
            raise CheckpointError(
                f"{self.root}: holds checkpoints of an earlier run (newest {existing[-1].name}); pass --resume to "
                "continue it, --overwrite to start over (removes them), or pick another train.out_dir"
            )
        for src in inputs:
            if Path(src).resolve().is_relative_to(self.root.resolve()) or self.root.resolve().is_relative_to(
                Path(src).resolve()
            ):
                raise CheckpointError(
                    f"{self.root}: --overwrite would remove {src}, the checkpoint this run starts from; "
                    "pick another train.out_dir"
                )
        if _rank() == 0:
            log.warning(
                "--overwrite: removing %d step dirs of an earlier run in %s", len(existing), self.root
            )
            for old in existing:
                shutil.rmtree(old)
            (self.root / LATEST).unlink(missing_ok=True)
        _barrier()
        return True

    # ---- resuming ----------------------------------------------------------------------------------------
    def latest(self) -> Path | None:
        """The newest step dir that verifies, the same on every rank; None when there is none.

        Rank 0 does the cheap checks (sizes, train_state.json, DCP metadata); the checksums are shared out,
        each rank reading every world-th file, so a big checkpoint is verified in parallel.
        """
        candidates = list(reversed(step_dirs(self.root))) if _rank() == 0 else []
        candidates = [Path(p) for p in _from_rank0([str(p) for p in candidates])]
        damaged = []
        for ckpt in candidates:
            problem = _from_rank0(_problem(lambda c=ckpt: check_resumable(c)) if _rank() == 0 else None)
            if problem is None and has_manifest(ckpt):
                problems = _gather(_problem(lambda c=ckpt: verify_manifest(c, part=_part())))
                problem = next((p for p in problems if p), None)
            if problem:
                log.warning("not resuming from %s: %s", ckpt.name, problem)
                damaged.append(problem)
                continue
            if damaged:
                log.warning("resuming from %s, the newest complete checkpoint", ckpt)
            return ckpt
        if damaged:
            raise CheckpointError(
                f"{self.root}: no complete checkpoint to resume from (newest: {damaged[0]}); "
                "remove the damaged step dirs to start over"
            )
        return None

    @staticmethod
    def load(ckpt: Path, tensors: dict) -> dict:
        """Fill DCP `tensors` in place from `ckpt` (resharding to the current layout); return its train state."""
        from bessemer.checkpoint import safe_dcp

        ckpt = Path(ckpt)
        state_dir = ckpt / STATE_DIR
        if not (state_dir / safe_dcp.METADATA).is_file() or not (ckpt / TRAIN_STATE_JSON).is_file():
            raise CheckpointError(
                f"{ckpt}: not a training checkpoint (no state/ or train_state.json); use --finetune"
            )
        train_state = read_train_state(ckpt)
        check_shapes(ckpt, _full_shapes(tensors["model"]), safe_dcp.dcp_shapes(state_dir, "model."))
        safe_dcp.load(tensors, state_dir)
        return train_state


def read_train_state(ckpt: Path) -> dict:
    path = Path(ckpt) / TRAIN_STATE_JSON
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete") from exc
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: damaged ({type(exc).__name__}); the checkpoint is unusable") from exc
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path}: damaged (no step); the checkpoint is unusable")
    return state


def check_resumable(ckpt: Path) -> None:
    """Raise CheckpointError naming what is damaged in a training checkpoint (the cheap checks; no checksums)."""
    if has_manifest(ckpt):
        verify_manifest(ckpt, checksums=False)  # sizes: finds truncation without reading the shards
    else:
        log.warning("%s: no manifest (written by an older Bessemer); its files cannot be verified", ckpt)
    from bessemer.checkpoint import safe_dcp

    read_train_state(ckpt)
    safe_dcp.read_metadata(ckpt / STATE_DIR)


def _problem(check) -> str | None:
    try:
        check()
    except CheckpointError as exc:
        return str(exc)
    return None


def _part() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _from_rank0(value):
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value) -> list:
    if not dist.is_initialized():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _full_shapes(state: dict) -> dict[str, torch.Tensor]:
    # DTensors report their global shape, which is what the checkpoint stores
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: itself, its cause chain, or a rank's failure inside DCP's CheckpointException."""
    from torch.distributed.checkpoint.api import CheckpointException

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError):
            return exc
        if isinstance(exc, CheckpointException):
            for failure in exc.failures.values():
                inner = failure[0] if isinstance(failure, tuple) else failure
                found = _os_error(inner)
                if found is not None:
                    return found
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror or exc}"
    return type(exc).__name__


def _fix(exc: OSError | None) -> str:
    if exc is not None and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space (or lower checkpoint.keep) and resume with --resume"
    if exc is not None and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make train.out_dir writable and resume with --resume"
    return "fix the file system and resume with --resume"
