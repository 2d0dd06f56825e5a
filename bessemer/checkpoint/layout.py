"""What a Bessemer checkpoint directory holds, and how to find the newest complete one in a run.

    CKPT/
      model.json        the ModelConfig
      meta.json         {"format": "bessemer", "version": 1, "step": N, "family": ..., "template": ..., ...}
      tokenizer/        the tokenizer files (optional)
      state/            torch.distributed.checkpoint shards: {"model": ..., "optimizer": ..., "train": ...}
                        (written by training), or
      model/            safetensors shards with Bessemer tensor names + model.safetensors.index.json
                        (written by `bessemer convert`)

Both weight layouts load through torch.distributed.checkpoint, which reshards them onto any parallel layout.
A run directory keeps step dirs under `checkpoints/step-000100/` and a `latest` file naming the newest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bessemer.errors import CheckpointError

FORMAT = "bessemer"
VERSION = 1
STEP_RE = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir from a checkpoint, a run's `checkpoints/` dir or a run dir (its newest complete step)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such checkpoint; pass a checkpoint dir or a run dir with checkpoints/"
        )
    if (path / "model.json").is_file():
        return path
    for base in (path, path / "checkpoints"):
        latest = base / "latest"
        if latest.is_file():
            candidate = base / latest.read_text().strip()
            if (candidate / "model.json").is_file():
                return candidate
        steps = sorted(
            (p for p in base.glob("step-*") if STEP_RE.match(p.name) and (p / "model.json").is_file()),
            key=lambda p: int(STEP_RE.match(p.name).group(1)),
        )
        if steps:
            return steps[-1]
    raise CheckpointError(
        f"{path}: holds no model.json or complete step-* checkpoint; train or convert first"
    )


def read_meta(ckpt: str | Path) -> dict:
    path = Path(ckpt) / "meta.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); the checkpoint is damaged") from exc


def tokenizer_dir(ckpt: str | Path) -> Path | None:
    """The checkpoint's tokenizer folder, if it carries one."""
    path = Path(ckpt) / "tokenizer"
    return path if path.is_dir() and any(path.iterdir()) else None
