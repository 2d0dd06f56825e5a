"""DPO's reference log-probabilities, three ways: a frozen copy of the starting model, the model itself with its
LoRA adapters switched off, or a table computed once in a first pass and stored beside the dataset.

The table `<prefix>.ref-<hash>.npz` holds one float32 log-probability per document of the preference dataset
(documents 2k and 2k + 1 are pair k's chosen and rejected answers) and the key it was computed for: the
reference checkpoint (its manifest), the dataset's bytes, the model config, seq_len and the compute dtypes. The
key's hash names the file, so another checkpoint, a re-prepared dataset or another seq_len gets a file of its
own and a stale table is never read; a file whose recorded key is not the one its name promises is refused.
Data-parallel ranks compute their share of the rows; rank 0 writes the file atomically.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bessemer import device as devices
from bessemer.errors import DataError
from bessemer.models.loss import IGNORE
from bessemer.parallel.instances import is_dtensor, is_fsdp_module
from bessemer.tune.lora import adapters_disabled

log = logging.getLogger(__name__)

TABLE_FORMAT = "bessemer-dpo-reference-v1"
_CHUNK = 8 * 1024 * 1024


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's answer tokens, and how many there are.

    Written as a cross-entropy so that vocabulary-sharded logits (tensor parallel + loss_parallel) never need
    gathering: run it under `loss_parallel()` there."""
    keep = labels != IGNORE
    token = -F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none"
    )
    if is_dtensor(token):
        token = token.full_tensor()
    return token.view(labels.shape).sum(-1), keep.sum(-1)


def forward(model: nn.Module, batch: dict) -> torch.Tensor:
    """Logits of a preference batch (its positions given: with sequence parallelism the model sees a shard)."""
    return model(batch["tokens"], positions=batch.get("positions"))


def reshard(model: nn.Module) -> None:
    """Free what FSDP keeps gathered after a forward without backward (units that skip resharding after it)."""
    for module in model.modules():
        if is_fsdp_module(module):
            module.reshard()


class ModelReference:
    """Reference log-probabilities from a forward pass: of a frozen copy, or of the model with adapters off."""

    def __init__(self, trainer, model: nn.Module, adapters_off: bool):
        self.trainer, self.model, self.adapters_off = trainer, model, adapters_off

    @torch.no_grad()
    def logps(self, batch: dict) -> torch.Tensor:
        off = adapters_disabled(self.model) if self.adapters_off else contextlib.nullcontext()
        with off, self.trainer._autocast():
            logits = forward(self.model, batch)
        if not self.adapters_off:
            reshard(self.model)
        return sequence_logps(logits, batch["labels"])[0]


class TableReference:
    """Reference log-probabilities looked up by document number in a precomputed table."""

    def __init__(self, values: torch.Tensor):
        self.values = values

    def logps(self, batch: dict) -> torch.Tensor:
        return self.values[batch["rows"].cpu()].to(batch["labels"].device)


def frozen_copy(trainer) -> nn.Module:
    """A frozen copy of the model as it starts, laid out like it (FSDP2 / tensor parallel) on several ranks."""
    if not trainer.dims.is_distributed:
        return copy.deepcopy(trainer.model).eval().requires_grad_(False)
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from bessemer.models import build_model
    from bessemer.parallel import materialize, parallelize

    t = trainer
    laid_out = parallelize(
        build_model(t.model_cfg, device="meta"),
        t.dims,
        t.mesh,
        t.cfg.parallel,
        t.device,
        t.amp_dtype or torch.float32,
    )
    materialize(laid_out.stages, t.device, None)
    for stage, own in zip(laid_out.stages, t.stages):
        stage.flex_attention = own.flex_attention
    reference = laid_out.model
    set_model_state_dict(reference, get_model_state_dict(t.model))
    return reference.eval().requires_grad_(False)


# ---- the precomputed table ----------------------------------------------------------------------------------
def _hash_files(paths: list[Path]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def dataset_fingerprint(prefix: str) -> str:
    """A hash of the preference dataset's bytes (tokens and loss masks, data and index)."""
    from bessemer.data.indexed import bin_path, idx_path, mask_prefix

    return _hash_files([f(p) for p in (prefix, mask_prefix(prefix)) for f in (bin_path, idx_path)])


def checkpoint_fingerprint(ckpt: Path) -> str:
    """A hash of a checkpoint's contents: of its manifest (every file's size and CRC-32) when it has one."""
    from bessemer.checkpoint.manifest import MANIFEST, crc32_file

    manifest = ckpt / MANIFEST
    if manifest.is_file():
        return hashlib.blake2b(manifest.read_bytes(), digest_size=16).hexdigest()
    files = sorted(p for p in ckpt.rglob("*") if p.is_file())
    listing = [(p.relative_to(ckpt).as_posix(), p.stat().st_size, crc32_file(p)) for p in files]
    return hashlib.blake2b(json.dumps(listing).encode(), digest_size=16).hexdigest()


def reference_key(trainer, prefix: str) -> dict:
    """What a table's numbers depend on."""
    from bessemer.checkpoint.layout import resolve_checkpoint

    cfg = trainer.cfg
    if cfg.train.finetune:
        start = checkpoint_fingerprint(resolve_checkpoint(cfg.train.finetune))
    else:  # a fresh model: its weights are a function of the seed and the config
        start = f"init seed {cfg.train.seed}"
    key = {
        "format": TABLE_FORMAT,
        "checkpoint": start,
        "dataset": dataset_fingerprint(prefix),
        "model": trainer.model_cfg.to_dict(),
        "seq_len": cfg.train.seq_len,
        "dtype": str(trainer.amp_dtype or torch.float32),
        "param_dtype": cfg.parallel.param_dtype,
    }
    return json.loads(json.dumps(key, sort_keys=True))  # as the table records it (tuples become lists)


def table_path(prefix: str, key: dict) -> Path:
    name = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=8).hexdigest()
    return Path(f"{prefix}.ref-{name}.npz")


def load_table(path: Path, key: dict, n_rows: int) -> torch.Tensor:
    """The table at `path`, refused in one line unless it holds `n_rows` finite values computed for `key`."""
    fix = "delete it and the run computes it again"
    try:
        with np.load(path, allow_pickle=False) as f:
            recorded, values = json.loads(str(f["key"])), np.asarray(f["logps"])
    except (OSError, ValueError, KeyError, zlib.error) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: not a readable DPO reference table ({why}); {fix}") from None
    if recorded != key:
        differ = sorted(k for k in set(key) | set(recorded) if key.get(k) != recorded.get(k))
        raise DataError(
            f"{path}: reference log-probabilities computed for another {', '.join(differ)} than this run's; {fix}"
        )
    if values.shape != (n_rows,) or values.dtype != np.float32 or not np.isfinite(values).all():
        raise DataError(
            f"{path}: expected {n_rows} finite float32 log-probabilities, found {values.dtype} {values.shape}; "
            f"{fix}"
        )
    return torch.from_numpy(values.copy())


def save_table(path: Path, key: dict, values: torch.Tensor) -> None:
    """Write the table through a temporary file beside it, renamed into place when complete."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.array(json.dumps(key, sort_keys=True)), logps=values.numpy())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@torch.no_grad()
def compute_table(trainer, batches, adapters_off: bool) -> torch.Tensor:
    """Every document's reference log-probability, from the model as it is now (the starting weights).

    Data-parallel rank r scores chunks r, r + dp, ... of 2 x micro_batch_size documents; a rank left without a
    chunk in the last round repeats one (FSDP's gathers need every rank), and the shares are summed over dp."""
    t, model = trainer, trainer.model
    n_rows, per = 2 * batches.n_pairs, 2 * batches.micro
    chunks = [list(range(i, min(i + per, n_rows))) for i in range(0, n_rows, per)]
    values = torch.zeros(n_rows, dtype=torch.float64)
    was_training = model.training
    model.eval()
    off = adapters_disabled(model) if adapters_off else contextlib.nullcontext()
    try:
        with off, t._loss_context():
            for round_ in range(math.ceil(len(chunks) / t.dp_size)):
                i = round_ * t.dp_size + t.dp_rank
                rows = chunks[i] if i < len(chunks) else chunks[0]
                batch = {k: v.to(t.device) for k, v in batches.collate(rows).items()}
                with t._autocast():
                    logits = forward(model, batch)
                logps = sequence_logps(logits, batch["labels"])[0]
                if i < len(chunks):
                    values[rows] = logps.double().cpu()
    finally:
        model.train(was_training)
        reshard(model)  # the optimizer, built next, must see the sharded parameters
    if t.dp_size > 1:  # each row is filled by one rank; adding zeros is exact
        summed = values.to(devices.collective_device(t.device))
        dist.all_reduce(summed, group=t.mesh["dp"].get_group())
        values = summed.cpu()
    return values.float()


def precomputed_reference(trainer, batches, adapters_off: bool) -> TableReference:
    """The table for this run's checkpoint and dataset: read if present, else computed now and stored."""
    key = reference_key(trainer, batches.prefix)
    path = table_path(batches.prefix, key)
    n_rows = 2 * batches.n_pairs
    if _on_every_rank(trainer, path.is_file()):
        values = load_table(path, key, n_rows)
        log.info("dpo: reference log-probabilities read from %s", path)
        return TableReference(values)
    log.info("dpo: a first pass scores %d documents with the reference model for %s", n_rows, path)
    values = compute_table(trainer, batches, adapters_off)
    if trainer.rank == 0:
        save_table(path, key, values)
        log.info("dpo: reference log-probabilities of %d documents written to %s", n_rows, path)
    if dist.is_initialized():
        dist.barrier()
    return TableReference(values)


def _on_every_rank(trainer, flag: bool) -> bool:
    """True only if every rank says so: all ranks then read the table, or all compute it together."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=devices.collective_device(trainer.device))
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
