"""What a Bessemer checkpoint directory holds, and how to find the newest complete one in a run.

    CKPT/
      model.json        the ModelConfig
      meta.json         {"format": "bessemer", "version": 1, "step": N, "family": ..., "template": ..., ...}
      manifest.json     every file's size and CRC-32, written last (manifest.py)
      .bessemer-output  marker: a folder Bessemer wrote, which --overwrite may replace (outputs.py)
      train_state.json  step, schedule, data position and RNG (training checkpoints)
      tokenizer/        the tokenizer files (optional)
      state/            torch.distributed.checkpoint shards: {"model": ..., "optimizer": ..., "train": ...}
                        (written by training), or
      model/            safetensors shards with Bessemer tensor names + model.safetensors.index.json
                        (written by `bessemer convert`)

Both weight layouts load through torch.distributed.checkpoint, which reshards them onto any parallel layout,
with metadata read by a restricted unpickler (safe_dcp.py). A run directory keeps step dirs under
`checkpoints/step-000100/` (written as `.step-000100.tmp`, renamed when complete) and a `latest` file naming
the newest. This module is the one place that knows these names; training (manager.py), convert and
inference (model_io.py) all write and open checkpoints through it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bessemer.checkpoint.files import atomic_write_text
from bessemer.errors import CheckpointError
from bessemer.json_object import read_json_object
from bessemer.models import ModelConfig

FORMAT = "bessemer"
VERSION = 1
STEP_RE = re.compile(r"^step-(\d+)$")
MODEL_JSON = "model.json"
META_JSON = "meta.json"
TRAIN_STATE_JSON = "train_state.json"
TOKENIZER_DIR = "tokenizer"
STATE_DIR = "state"  # DCP shards (training)
WEIGHTS_DIR = "model"  # safetensors shards (convert)
LATEST = "latest"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir from a checkpoint, a run's `checkpoints/` dir or a run dir (its newest complete step)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such checkpoint; pass a checkpoint dir or a run dir with checkpoints/"
        )
    if (path / MODEL_JSON).is_file():
        return path
    for base in (path, path / "checkpoints"):
        latest = base / LATEST
        if latest.is_file():
            name = latest.read_text(encoding="utf-8", errors="replace").strip()
            # only a step dir beside `latest`: the file must not send a reader elsewhere
            if STEP_RE.match(name) and (base / name / MODEL_JSON).is_file():
                return base / name
        steps = [p for p in step_dirs(base) if (p / MODEL_JSON).is_file()]
        if steps:
            return steps[-1]
    raise CheckpointError(
        f"{path}: holds no model.json or complete step-* checkpoint; train or convert first"
    )


def read_meta(ckpt: str | Path) -> dict:
    path = Path(ckpt) / META_JSON
    if not path.is_file():
        return {}
    return _read_json_object(path)


def _read_json_object(path: Path) -> dict:
    """A checkpoint's JSON file as a dict; anything else is a damaged checkpoint, named in one line."""
    return read_json_object(path, "the checkpoint is damaged", CheckpointError)


def tokenizer_dir(ckpt: str | Path) -> Path | None:
    """The checkpoint's tokenizer folder, if it carries one."""
    path = Path(ckpt) / TOKENIZER_DIR
    return path if path.is_dir() and any(path.iterdir()) else None


def tmp_step_dir_name(step: int) -> str:
    """The name a step dir is written under until it is complete."""
    return f".{step_dir_name(step)}.tmp"


def step_dirs(root: Path) -> list[Path]:
    """Complete step dirs under a run's `checkpoints/`, oldest first (temporary ones never count)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_RE.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name)[1]))


def save_model_config(cfg: ModelConfig, ckpt: str | Path) -> None:
    """Write `ckpt/model.json`."""
    atomic_write_text(Path(ckpt) / MODEL_JSON, json.dumps(cfg.to_dict(), indent=2) + "\n")


def load_model_config(ckpt: str | Path) -> ModelConfig:
    """Read and validate `ckpt/model.json` (or a model.json path given directly)."""
    path = Path(ckpt)
    if path.name != MODEL_JSON:
        path = path / MODEL_JSON
    if not path.is_file():
        raise CheckpointError(f"{path}: model.json not found; is this a Bessemer checkpoint directory?")
    return ModelConfig.from_dict(_read_json_object(path), str(path))


def write_meta(ckpt: str | Path, step: int, **fields) -> None:
    """Write `ckpt/meta.json` with the format tag, version and step."""
    meta = {"format": FORMAT, "version": VERSION, "step": step, **fields}
    atomic_write_text(Path(ckpt) / META_JSON, json.dumps(meta, indent=2) + "\n")
