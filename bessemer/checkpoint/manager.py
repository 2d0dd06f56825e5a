"""Save and resume training: DCP shards of model + optimizer, JSON train state, atomic step dirs, retention."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from bessemer.checkpoint.files import atomic_write_text, single_process_quiet
from bessemer.checkpoint.layout import FORMAT, STEP_RE, VERSION, resolve_checkpoint, step_dir_name
from bessemer.checkpoint.model_io import _dcp_shapes, check_shapes
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

    def save(self, step: int, tensors: dict, train_state: dict) -> Path:
        """Save DCP `tensors` ({"model": ..., "optimizer": ...}) and JSON `train_state`; every rank calls this."""
        final = self.root / step_dir_name(step)
        tmp = (
            self.root / f".{final.name}.tmp"
        )  # the same name on every rank: DCP writes each rank's shards there
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        started = time.perf_counter()
        with single_process_quiet():
            dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(tmp / "state")))
        if _rank() == 0:
            self.model_cfg.save(tmp / "model.json")
            atomic_write_text(tmp / "train_state.json", json.dumps(train_state) + "\n")
            meta = {"format": FORMAT, "version": VERSION, "step": step, **self.meta}
            atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
            if self.tokenizer_src is not None:
                copy_tokenizer_files(self.tokenizer_src, tmp / "tokenizer")
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            atomic_write_text(self.root / "latest", final.name + "\n")
            self._retain()
            log.info("saved %s in %.1fs", final, time.perf_counter() - started)
        _barrier()
        return final

    def _retain(self) -> None:
        if self.cfg.keep <= 0:
            return
        steps = sorted(
            (p for p in self.root.iterdir() if STEP_RE.match(p.name)),
            key=lambda p: int(STEP_RE.match(p.name)[1]),
        )
        for old in steps[: -self.cfg.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        try:
            return resolve_checkpoint(self.root) if self.root.exists() else None
        except CheckpointError:
            return None

    @staticmethod
    def load(ckpt: Path, tensors: dict) -> dict:
        """Fill DCP `tensors` in place from `ckpt` (resharding to the current layout); return its train state."""
        state_dir = ckpt / "state"
        if not (state_dir / ".metadata").is_file() or not (ckpt / "train_state.json").is_file():
            raise CheckpointError(
                f"{ckpt}: not a training checkpoint (no state/ or train_state.json); use --finetune"
            )
        reader = dcp.FileSystemReader(str(state_dir))
        check_shapes(ckpt, _full_shapes(tensors["model"]), _dcp_shapes(reader, "model."))
        try:
            with single_process_quiet():
                dcp.load(tensors, storage_reader=reader)
        except Exception as exc:
            raise CheckpointError(
                f"{ckpt}: could not load training state ({str(exc).splitlines()[0][:200]})"
            ) from exc
        return json.loads((ckpt / "train_state.json").read_text())


def _full_shapes(state: dict) -> dict[str, torch.Tensor]:
    # DTensors report their global shape, which is what the checkpoint stores
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
